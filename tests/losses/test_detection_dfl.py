"""Distribution focal loss (GFL, Li et al. 2020) against its equation in float64, its gradients, and its term in
:class:`~frugalvision.losses.DetectionLoss`."""

from __future__ import annotations

import math

import pytest
import torch

from frugalvision.losses import DetectionLoss, distribution_focal_loss, side_distances
from frugalvision.losses.detection_dfl import TARGET_EPS


def _dfl_loop(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-((y_r - y) log S_{y_l} + (y - y_l) log S_{y_r})`` written out per element in float64 (GFL eq. 6),
    ``y`` clamped to ``[0, R - eps]``, ``S = softmax`` over the ``R + 1`` bins."""
    flat_z = logits.detach().double().reshape(-1, logits.shape[-1])
    flat_y = target.detach().double().reshape(-1)
    r = logits.shape[-1] - 1
    out = []
    for z, y in zip(flat_z.tolist(), flat_y.tolist(), strict=True):
        y = min(max(y, 0.0), r - TARGET_EPS)
        m = max(z)
        log_norm = m + math.log(sum(math.exp(v - m) for v in z))
        yl = math.floor(y)
        yr = yl + 1
        out.append(-((yr - y) * (z[yl] - log_norm) + (y - yl) * (z[yr] - log_norm)))
    return torch.tensor(out, dtype=torch.float64).reshape(target.shape)


@pytest.mark.parametrize("bins", [2, 8, 17])
def test_dfl_equals_the_equation(bins: int, dtype: torch.dtype, tol: dict[str, float]) -> None:
    g = torch.Generator().manual_seed(bins)
    logits = (torch.randn(40, 4, bins, generator=g, dtype=torch.float64) * 3).to(dtype)
    target = torch.rand(40, 4, generator=g, dtype=torch.float64) * (bins + 1) - 1  # some below 0 / above R
    target[0] = torch.tensor([0.0, 1.0, bins - 1.0, 0.5])  # integers, the last bin, a half
    target = target.to(dtype)
    got = distribution_focal_loss(logits, target)
    assert got.shape == (40, 4) and got.dtype == dtype
    torch.testing.assert_close(got.double(), _dfl_loop(logits, target), **tol)


def test_dfl_closed_forms_and_stability() -> None:
    # a one-hot distribution on an integer target costs 0; a uniform one costs log(R + 1) for any target
    z = torch.full((1, 9), -200.0, dtype=torch.float64)
    z[0, 3] = 200.0
    torch.testing.assert_close(distribution_focal_loss(z, torch.tensor([3.0], dtype=torch.float64)),
                               torch.zeros(1, dtype=torch.float64), atol=1e-12, rtol=0)  # fmt: skip
    u = torch.zeros(3, 9, dtype=torch.float64)
    torch.testing.assert_close(
        distribution_focal_loss(u, torch.tensor([0.0, 2.3, 7.9], dtype=torch.float64)),
        torch.full((3,), math.log(9), dtype=torch.float64),
    )
    # +-100 logits stay finite, with finite gradients
    x = (torch.randn(16, 17, generator=torch.Generator().manual_seed(0)) * 100).requires_grad_(True)
    loss = distribution_focal_loss(x, torch.rand(16) * 16)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()  # type: ignore[arg-type]


def test_dfl_gradcheck_and_errors() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, 4, generator=g, dtype=torch.float64) * 5
    assert torch.autograd.gradcheck(lambda t: distribution_focal_loss(t, y), (z,))
    with pytest.raises(ValueError, match=r"target must have the shape of logits without the bin axis"):
        distribution_focal_loss(torch.zeros(3, 4, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 bins"):
        distribution_focal_loss(torch.zeros(3, 1), torch.zeros(3))


def test_side_distances_by_hand() -> None:
    points = torch.tensor([[10.0, 20.0], [40.0, 40.0]])
    boxes = torch.tensor([[2.0, 4.0, 30.0, 24.0], [0.0, 0.0, 80.0, 48.0]])
    strides = torch.tensor([8.0, 16.0])
    expected = torch.tensor([[8 / 8, 16 / 8, 20 / 8, 4 / 8], [40 / 16, 40 / 16, 40 / 16, 8 / 16]])
    torch.testing.assert_close(side_distances(points, boxes, strides), expected)


def _scene(dfl: bool, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Hand-made train-mode outputs over a 4x4 grid at stride 8 (N = 16), 2 images, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    points = (torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) + 0.5) * 8
    wh = torch.rand(2, 16, 2, generator=g) * 16 + 4
    boxes = torch.cat([points - wh / 2, points + wh / 2], -1)
    outputs = {
        "cls": torch.randn(2, 16, 3, generator=g).requires_grad_(True),
        "boxes": boxes.requires_grad_(True),
        "points": points,
        "strides": torch.full((16,), 8.0),
    }
    if dfl:
        outputs["box_dist"] = torch.randn(2, 16, 4, 8, generator=g).requires_grad_(True)
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 18.0], [12.0, 14.0, 30.0, 31.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[5.0, 6.0, 27.0, 24.0]]), "labels": torch.tensor([1])},
    ]  # fmt: skip
    return outputs, targets


def test_detection_loss_adds_the_weighted_dfl_term() -> None:
    outputs, targets = _scene(dfl=True)
    loss = DetectionLoss(num_classes=3, dfl_weight=0.7)
    terms = loss(outputs, targets)
    # reference: the same assignment, then the DFL term from the equation, weighted like the box term
    from frugalvision.losses import pad_targets

    gt = pad_targets(targets, torch.device("cpu"))
    a = loss.assigner(torch.sigmoid(outputs["cls"].detach()), outputs["boxes"].detach(), outputs["points"],
                      outputs["strides"], *gt)  # fmt: skip
    fg = a.foreground
    assert fg.sum() >= 3
    norm = max(1.0, float(a.scores.sum()))
    expected = 0.0
    for b, n in fg.nonzero().tolist():
        x, y = outputs["points"][n].tolist()
        x0, y0, x1, y1 = a.boxes[b, n].tolist()
        sides = torch.tensor([x - x0, y - y0, x1 - x, y1 - y], dtype=torch.float64) / 8.0
        per_side = _dfl_loop(outputs["box_dist"][b, n], sides)
        expected += float(a.scores[b, n].sum()) * float(per_side.mean())
    expected /= norm
    torch.testing.assert_close(terms["dfl"].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    total = 1.0 * terms["cls"] + 2.5 * terms["box"] + 0.7 * terms["dfl"]
    torch.testing.assert_close(terms["loss"], total)
    terms["loss"].backward()
    grad = outputs["box_dist"].grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad[~fg].abs().sum() == 0) and grad[fg].abs().sum() > 0  # only positives learn distributions


def test_detection_loss_without_distributions_is_unchanged() -> None:
    # the same outputs without "box_dist": no dfl term, and the other terms are those of the DFL run
    with_dfl = DetectionLoss(num_classes=3)(*_scene(dfl=True))
    plain = DetectionLoss(num_classes=3)(*_scene(dfl=False))
    assert "dfl" not in plain and "dfl" in with_dfl
    torch.testing.assert_close(plain["cls"], with_dfl["cls"])
    torch.testing.assert_close(plain["box"], with_dfl["box"])
    torch.testing.assert_close(plain["loss"], 1.0 * plain["cls"] + 2.5 * plain["box"])


def test_images_without_boxes_give_a_zero_dfl_with_a_gradient() -> None:
    outputs, _ = _scene(dfl=True)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    terms = DetectionLoss(num_classes=3)(outputs, empty)
    assert float(terms["dfl"].detach()) == 0.0
    terms["loss"].backward()
    assert outputs["box_dist"].grad is not None
