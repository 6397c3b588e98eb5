"""Distribution focal loss (Li et al. 2020, "Generalized Focal Loss", NeurIPS, https://arxiv.org/abs/2006.04388).

The anchor-free head with ``dfl_bins = R + 1`` (:mod:`frugalvision.models.detection.heads`) predicts each side
distance ``l, t, r, b`` of a box, in strides, as a discrete distribution over ``0, 1, ..., R`` (logits ``z``,
``S = softmax(z)``); the distance is its expectation ``sum_i S_i i`` (the "integral", GFL eq. 5). For a target
distance ``y`` (strides) clamped to ``[0, R - eps]``, with ``y_l = floor(y)`` and ``y_r = y_l + 1`` (GFL eq. 6)::

    DFL(S, y) = -((y_r - y) log S_{y_l} + (y - y_l) log S_{y_r})

It is smallest when ``S`` puts ``y_r - y`` on ``y_l`` and ``y - y_l`` on ``y_r`` -- whose expectation is ``y``
itself -- so it pushes the distribution's mass onto the two bins around the target (the IoU loss alone only asks
for the right mean). ``eps = 0.01`` keeps ``y_r <= R`` (as MMDetection and YOLOv6 / v8 do).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["TARGET_EPS", "distribution_focal_loss", "side_distances"]

#: Targets are clamped to ``[0, R - TARGET_EPS]`` so that ``y_r = floor(y) + 1`` is a bin.
TARGET_EPS = 0.01


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise DFL (see the module docstring).

    Args:
        logits: ``(..., R + 1)`` bin logits, ``R >= 1``.
        target: ``(...)`` distances in bins (strides), clamped here to ``[0, R - TARGET_EPS]``.

    Returns:
        ``(...)``: the loss of each distribution, in ``logits``' dtype (log-space: ``log_softmax``).

    Raises:
        ValueError: fewer than 2 bins, or ``target``'s shape is not ``logits``' without the last axis.

    Example:
        >>> z = torch.zeros(3, 4, 17)                     # uniform over 0..16
        >>> distribution_focal_loss(z, torch.full((3, 4), 5.5))   # log(17) everywhere
    """
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have at least 2 bins on the last axis, got shape {tuple(logits.shape)}"
        )
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have the shape of logits without the bin axis, {tuple(logits.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )
    r = logits.shape[-1] - 1
    y = target.to(logits.dtype).clamp(0.0, r - TARGET_EPS)
    left = y.floor()
    w_right = y - left  # y - y_l
    w_left = 1.0 - w_right  # y_r - y
    log_s = F.log_softmax(logits, dim=-1)
    i = left.long()[..., None]
    return -(w_left * log_s.gather(-1, i).squeeze(-1) + w_right * log_s.gather(-1, i + 1).squeeze(-1))


def side_distances(points: torch.Tensor, boxes: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Distances ``(l, t, r, b)`` from cell centres to the sides of boxes, in strides (not clamped).

    Args:
        points: ``(P, 2)`` cell centres ``(x, y)``, input pixels.
        boxes: ``(P, 4)`` xyxy, input pixels.
        strides: ``(P,)`` the cells' strides.

    Returns:
        ``(P, 4)``: ``(x - x0, y - y0, x1 - x, y1 - y) / s``.
    """
    d = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    return d / strides[..., None]
