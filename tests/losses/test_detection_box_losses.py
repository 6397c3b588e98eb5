"""CIoU / GIoU box losses against torchvision.ops, and the varifocal loss against its equation."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from frugalvision.losses import box_iou_loss, ciou_loss, giou_loss, varifocal_loss


def _boxes(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.5
    return torch.cat([xy, xy + wh], 1).to(dtype)


@pytest.mark.parametrize(
    ("ours", "reference"), [(ciou_loss, complete_box_iou_loss), (giou_loss, generalized_box_iou_loss)]
)
def test_box_losses_equal_torchvision(ours, reference, dtype, tol) -> None:
    pred, target = _boxes(64, dtype, 0), _boxes(64, dtype, 1)
    pred[:8] = target[:8]  # identical boxes
    pred[8:16] = target[8:16] + 200  # disjoint boxes
    pred[16:24] = target[16:24] + torch.tensor([2.0, 1.0, -1.0, 3.0], dtype=dtype)  # overlapping
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    mine, theirs = ours(a, target), reference(b, target, reduction="none")
    torch.testing.assert_close(mine, theirs, **tol)
    mine.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, **tol)


def test_box_loss_closed_forms() -> None:
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(ciou_loss(box, box), torch.zeros(1, dtype=torch.float64), atol=1e-6, rtol=0)
    # two unit squares side by side: IoU 0, enclosing box 2x1 with no gap -> GIoU loss 1; centres 1 apart,
    # diagonal^2 = 5, same aspect -> CIoU loss 1 + 1/5
    right = box.new_tensor([[1.0, 0.0, 2.0, 1.0]])
    left = box.new_tensor([[0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(giou_loss(left, right), box.new_tensor([1.0]))
    torch.testing.assert_close(ciou_loss(left, right), box.new_tensor([1.2]))
    with pytest.raises(ValueError, match="box loss must be one of"):
        box_iou_loss(left, right, "l1")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        ciou_loss(left, right[:, :3])


def test_varifocal_equals_paper_equation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    q = torch.rand(50, 3, generator=g, dtype=torch.float64)
    q[q < 0.6] = 0.0
    p = torch.sigmoid(logits)
    alpha, gamma = 0.75, 2.0
    expected = torch.where(
        q > 0,
        -q * (q * torch.log(p) + (1 - q) * torch.log(1 - p)),
        -alpha * p**gamma * torch.log(1 - p),
    )
    torch.testing.assert_close(varifocal_loss(logits, q), expected, rtol=1e-10, atol=1e-10)
    # stable at +-100 logits
    extreme = varifocal_loss(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(extreme).all() and math.isclose(float(extreme[0]), 0.75 * 100, rel_tol=1e-5)
