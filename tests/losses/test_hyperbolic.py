"""Hyperbolic pairwise cross-entropy (Hyp-ViT): hand computation, the official two-view form, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from frugalvision.layers import poincare_distance_matrix, to_poincare
from frugalvision.losses import HyperbolicPairwiseCELoss, create_loss, hyperbolic_pairwise_ce_loss


def _points(n: int, d: int, c: float = 0.1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_poincare(torch.randn(n, d, generator=g, dtype=torch.float64) * 2, c)


def _arcosh_distance(x: list[float], y: list[float], c: float) -> float:
    diff2 = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
    x2, y2 = sum(a * a for a in x), sum(b * b for b in y)
    return math.acosh(1 + 2 * c * diff2 / ((1 - c * x2) * (1 - c * y2))) / math.sqrt(c)


def _loss_by_hand(z: torch.Tensor, labels: list[int], c: float, tau: float) -> float:
    rows = z.tolist()
    n = len(rows)
    per_anchor = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        logits = {j: -_arcosh_distance(rows[i], rows[j], c) / tau for j in range(n) if j != i}
        log_z = math.log(sum(math.exp(v) for v in logits.values()))
        per_anchor.append(-sum(logits[p] - log_z for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], [3, 1, 3, 1, 1, 7]])
def test_matches_hand_computation_in_float64(labels):
    z = _points(6, 3, c=0.3, seed=1)
    out = hyperbolic_pairwise_ce_loss(z, torch.tensor(labels), c=0.3, temperature=0.5)
    assert_close(
        out, torch.tensor(_loss_by_hand(z, labels, 0.3, 0.5), dtype=torch.float64), rtol=1e-10, atol=1e-12
    )


def _official_contrastive_loss(x0: torch.Tensor, x1: torch.Tensor, tau: float, c: float) -> torch.Tensor:
    """The two-view loss of github.com/htdt/hyp_metric (train.py), re-typed on the CPU."""
    b = x0.shape[0]
    logits00 = -poincare_distance_matrix(x0, x0, c) / tau - torch.eye(b, dtype=x0.dtype) * 1e9
    logits01 = -poincare_distance_matrix(x0, x1, c) / tau
    logits = torch.cat([logits01, logits00], dim=1)
    logits = logits - logits.max(1, keepdim=True)[0].detach()
    return F.cross_entropy(logits, torch.arange(b))


def test_two_views_equal_half_the_official_sum_of_both_directions():
    z1, z2 = _points(7, 5, seed=2), _points(7, 5, seed=3)
    official = _official_contrastive_loss(z1, z2, 0.2, 0.1) + _official_contrastive_loss(z2, z1, 0.2, 0.1)
    ours = hyperbolic_pairwise_ce_loss(z1, other_view=z2)  # paper defaults c = 0.1, tau = 0.2
    assert_close(ours, official / 2, rtol=1e-10, atol=1e-12)
    # the same as stacking the views with sample ids as labels
    ids = torch.arange(7)
    assert_close(hyperbolic_pairwise_ce_loss(torch.cat([z1, z2]), torch.cat([ids, ids])), ours)
    # with class labels the other view of the same class counts as a positive too
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    stacked = hyperbolic_pairwise_ce_loss(torch.cat([z1, z2]), torch.cat([labels, labels]))
    assert_close(hyperbolic_pairwise_ce_loss(z1, labels, other_view=z2), stacked)


def test_module_equals_function_and_registry():
    z, labels = _points(6, 4, c=0.2, seed=4), torch.tensor([0, 0, 1, 1, 2, 2])
    loss = create_loss("hyperbolic_pce", c=0.2, temperature=0.3)
    assert isinstance(loss, HyperbolicPairwiseCELoss)
    assert isinstance(create_loss("hyperbolic"), HyperbolicPairwiseCELoss)
    assert_close(loss(z, labels), hyperbolic_pairwise_ce_loss(z, labels, c=0.2, temperature=0.3))
    default = HyperbolicPairwiseCELoss()
    assert (default.c, default.temperature) == (0.1, 0.2)  # paper / official defaults
    assert list(default.parameters()) == []


def test_gradcheck():
    z = _points(5, 3, seed=5).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda x: hyperbolic_pairwise_ce_loss(x, labels, temperature=0.7), (z,))


def test_no_positive_pair_gives_zero_with_gradient():
    z = _points(4, 3, seed=6).requires_grad_()
    out = hyperbolic_pairwise_ce_loss(z, torch.tensor([0, 1, 2, 3]))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_identical_views_and_points_near_the_boundary_stay_finite():
    z = to_poincare(torch.randn(4, 8) * 1e4, 0.1)  # float32, pushed against the boundary
    z = torch.cat([z, z]).requires_grad_()
    ids = torch.arange(4)
    out = hyperbolic_pairwise_ce_loss(z, torch.cat([ids, ids]))
    out.backward()
    assert bool(torch.isfinite(out)) and bool(torch.isfinite(z.grad).all())


def test_perfect_separation_drives_the_loss_to_its_floor():
    # each pair of views coincides and pairs are far apart: only the positive term survives
    centres = to_poincare(torch.eye(4, dtype=torch.float64) * 20, 0.1)
    z = torch.cat([centres, centres])
    ids = torch.arange(4)
    assert hyperbolic_pairwise_ce_loss(z, torch.cat([ids, ids])).item() < 1e-6


def test_errors():
    z = _points(4, 3)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        hyperbolic_pairwise_ce_loss(torch.ones(4, 3) * 5, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels are required"):
        hyperbolic_pairwise_ce_loss(z)
    with pytest.raises(ValueError, match="same batch size"):
        hyperbolic_pairwise_ce_loss(z, other_view=z[:3])
    with pytest.raises(ValueError, match="one entry per row"):
        hyperbolic_pairwise_ce_loss(z, torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="integer"):
        hyperbolic_pairwise_ce_loss(z, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        hyperbolic_pairwise_ce_loss(torch.full((4, 3), float("nan")), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="temperature"):
        HyperbolicPairwiseCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="must lie in"):
        hyperbolic_pairwise_ce_loss(z, torch.tensor([0, -1, 1, 0]))
