"""IoU-based box regression losses: GIoU and CIoU, with the IoU they are built on.

* GIoU (Rezatofighi et al. 2019, "Generalized Intersection over Union", https://arxiv.org/abs/1902.09630)::

      L_GIoU = 1 - IoU + (|C| - |A u B|) / |C|                    C: the smallest box enclosing A and B

* CIoU (Zheng et al. 2020, "Distance-IoU Loss", https://arxiv.org/abs/1911.08287, eq. 10-11)::

      L_CIoU = 1 - IoU + rho^2(b, b_gt) / c^2 + alpha v
      v = 4 / pi^2 (atan(w_gt / h_gt) - atan(w / h))^2,    alpha = v / ((1 - IoU) + v)   (no gradient)

  ``rho``: distance between the centres, ``c``: diagonal of the enclosing box.

Boxes are ``xyxy`` ``(..., 4)``; ``eps = 1e-7`` guards the divisions as ``torchvision.ops`` does, so the values
equal ``torchvision.ops.generalized_box_iou_loss`` / ``complete_box_iou_loss`` with ``reduction="none"``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BOX_LOSSES", "box_iou_loss", "ciou_loss", "giou_loss", "paired_box_iou"]

EPS = 1e-7


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must be (..., 4) xyxy of equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter, area_a + area_b - inter


def paired_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """IoU of each pair ``a[..., i]`` / ``b[..., i]`` (shapes ``(..., 4)`` broadcast): ``(...)``."""
    inter, union = _inter_union(a, b)
    return inter / (union + eps)


def _iou_enclosing(
    pred: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``(IoU, |A u B|, width, height of the enclosing box C)``, each ``(...)``: what GIoU and CIoU share."""
    _check(pred, target)
    inter, union = _inter_union(pred, target)
    cw = torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    ch = torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])
    return inter / (union + eps), union, cw, ch


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``L_GIoU`` per pair of boxes ``(..., 4)`` -> ``(...)`` (see module docstring)."""
    iou, union, cw, ch = _iou_enclosing(pred, target, eps)
    area_c = cw * ch
    return 1 - (iou - (area_c - union) / (area_c + eps))


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``L_CIoU`` per pair of boxes ``(..., 4)`` -> ``(...)`` (see module docstring)."""
    iou, _, cw, ch = _iou_enclosing(pred, target, eps)
    c2 = cw**2 + ch**2 + eps
    rho2 = (
        (pred[..., 0] + pred[..., 2] - target[..., 0] - target[..., 2]) ** 2
        + (pred[..., 1] + pred[..., 3] - target[..., 1] - target[..., 3]) ** 2
    ) / 4
    w, h = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
    wg, hg = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    v = (4 / math.pi**2) * (torch.atan(wg / hg) - torch.atan(w / h)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return 1 - iou + rho2 / c2 + alpha * v


#: Box loss name -> function ``(pred (..., 4), target (..., 4)) -> (...)``.
BOX_LOSSES = {"ciou": ciou_loss, "giou": giou_loss}


def box_iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "ciou") -> torch.Tensor:
    """``ciou_loss`` or ``giou_loss`` by name."""
    if kind not in BOX_LOSSES:
        raise ValueError(f"box loss must be one of {', '.join(BOX_LOSSES)}, got {kind!r}")
    return BOX_LOSSES[kind](pred, target)
