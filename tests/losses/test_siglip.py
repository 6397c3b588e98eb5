"""SigLIP sigmoid loss: hand-computed sums, learnable temperature and bias, stability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from frugalvision.losses import SigLIPLoss, create_loss, loss_param_groups, siglip_loss


def _x(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _by_hand(x: torch.Tensor, y: torch.Tensor, match, t_prime: float, b: float, skip_diagonal: bool) -> float:
    """-(1/|B|) sum_ij log(1 / (1 + exp(-z_ij (t x_i.y_j + b)))) on L2-normalised rows, in Python floats."""
    xs = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    ys = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in y.tolist()]
    total = 0.0
    for i, xi in enumerate(xs):
        for j, yj in enumerate(ys):
            if skip_diagonal and i == j:
                continue
            z = 1.0 if match(i, j) else -1.0
            logit = math.exp(t_prime) * sum(a * c for a, c in zip(xi, yj, strict=True)) + b
            total += math.log(1 / (1 + math.exp(-z * logit)))
    return -total / len(xs)


def test_image_text_3x3_matches_hand_sum():
    x, y = _x(3, 5, 0), _x(3, 5, 1)
    t_prime, b = math.log(10.0), -10.0
    out = siglip_loss(x, text_embeddings=y, log_temperature=t_prime, bias=b)
    expected = _by_hand(x, y, lambda i, j: i == j, t_prime, b, skip_diagonal=False)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_image_text_with_shared_labels_matches_hand_sum():
    x, y = _x(4, 3, 2), _x(4, 3, 3)
    labels = torch.tensor([0, 1, 0, 2])
    out = siglip_loss(x, labels, text_embeddings=y, log_temperature=0.5, bias=-1.0)
    expected = _by_hand(x, y, lambda i, j: labels[i] == labels[j], 0.5, -1.0, skip_diagonal=False)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_image_image_with_labels_matches_hand_sum_without_self_pairs():
    x = _x(5, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2])
    out = siglip_loss(x, labels, log_temperature=1.2, bias=-2.0)
    expected = _by_hand(x, x, lambda i, j: labels[i] == labels[j], 1.2, -2.0, skip_diagonal=True)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_initial_values_follow_the_paper_and_parameters_learn():
    loss = SigLIPLoss()
    assert_close(loss.log_temperature.detach(), torch.tensor(math.log(10.0)))
    assert_close(loss.bias.detach(), torch.tensor(-10.0))
    x = torch.randn(6, 8, requires_grad=True)
    loss(x, text_embeddings=torch.randn(6, 8)).backward()
    for p in (loss.log_temperature, loss.bias, x):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0
    groups = loss_param_groups(loss, base_lr=1e-3)
    assert {id(p) for p in groups[0]["params"]} == {id(loss.log_temperature), id(loss.bias)}


def test_fixed_temperature_and_bias_are_buffers():
    loss = SigLIPLoss(init_temperature=5.0, init_bias=-3.0, learnable=False)
    assert list(loss.parameters()) == []
    assert_close(loss.log_temperature, torch.tensor(math.log(5.0)))
    assert loss_param_groups(loss, base_lr=1e-3) == []


def test_gradcheck_with_respect_to_embeddings_temperature_and_bias():
    x, y = _x(3, 4, 5).requires_grad_(), _x(3, 4, 6).requires_grad_()
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, y_, t_, b_: siglip_loss(x_, text_embeddings=y_, log_temperature=t_, bias=b_), (x, y, t, b)
    )
    labels = torch.tensor([0, 0, 1])
    assert torch.autograd.gradcheck(lambda x_: siglip_loss(x_, labels, log_temperature=t, bias=b), (x,))


def test_stable_at_large_logits():
    x = torch.eye(4, dtype=torch.float64)
    # every true pair is orthogonal (logit b), the others have logit b or t + b
    y = torch.eye(4, dtype=torch.float64).roll(1, dims=0)
    t_prime, b = math.log(1e4), 50.0
    tp = torch.tensor(t_prime, dtype=torch.float64, requires_grad=True)
    out = siglip_loss(x, text_embeddings=y, log_temperature=tp, bias=b)
    out.backward()
    logits = 1e4 * (x @ y.T) + b
    signs = 2 * torch.eye(4, dtype=torch.float64) - 1
    expected = F.softplus(-signs * logits).sum() / 4  # -log sigmoid(z) = softplus(-z), exact for any size
    assert bool(torch.isfinite(out)) and bool(torch.isfinite(tp.grad))
    assert_close(out, expected)
    assert out.item() > 1e4  # 3 negatives per row at logit 1e4 + 50


def test_registry_and_module_equals_function():
    loss = create_loss("siglip", init_temperature=3.0, init_bias=-1.0)
    assert isinstance(loss, SigLIPLoss)
    x, labels = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 2, 2])
    expected = siglip_loss(x, labels, log_temperature=math.log(3.0), bias=-1.0)
    assert_close(loss(x, labels), expected)


def test_errors():
    loss = SigLIPLoss()
    with pytest.raises(ValueError, match=r"text_embeddings .* or labels"):
        loss(torch.randn(3, 4))
    with pytest.raises(ValueError, match="same batch size"):
        loss(torch.randn(3, 4), text_embeddings=torch.randn(2, 4))
    with pytest.raises(ValueError, match="4 features"):
        loss(torch.randn(3, 4), text_embeddings=torch.randn(3, 5))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.randn(3, 4), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((3, 4), float("nan")), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="one entry per row"):
        loss(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="init_temperature"):
        SigLIPLoss(init_temperature=0.0)
