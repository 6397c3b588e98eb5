"""The detector's loss: task-aligned assignment, varifocal (or BCE) classification and CIoU (or GIoU) boxes.

For the positives ``P`` chosen by :class:`~frugalvision.losses.detection_assigner.TaskAlignedAssigner` with IoU-aware
targets ``q`` (``q = t_hat`` at the assigned class, 0 elsewhere and for every negative)::

    L = w_cls * sum_{i,c} VFL(p_ic, q_ic) / Q  +  w_box * sum_{i in P} q_i * L_CIoU(b_i, g_i) / Q  [+ w_dfl * DFL]
    Q = max(1, sum q)

* Varifocal loss (Zhang et al. 2021, "VarifocalNet", https://arxiv.org/abs/2008.13367, eq. 2):
  ``VFL(p, q) = -q (q log p + (1 - q) log(1 - p))`` when ``q > 0`` and ``-alpha p^gamma log(1 - p)`` otherwise
  (``alpha = 0.75, gamma = 2``, the paper's); written as BCE-with-logits against ``q`` weighted by
  ``q`` (positives) or ``alpha p^gamma`` (negatives), the weight detached. ``cls_loss="bce"``: unweighted BCE
  against ``q``.
* Weights ``w_cls = 1.0``, ``w_box = 2.5`` (PP-YOLOE's, Xu et al. 2022, https://arxiv.org/abs/2203.16250).
* Distribution focal loss (GFL, Li et al. 2020, https://arxiv.org/abs/2006.04388; :mod:`.detection_dfl`), only when
  the detector predicts side-distance distributions (``DetectorConfig(dfl_bins=R + 1)``: ``outputs["box_dist"]``
  ``(B, N, 4, R + 1)``): ``+ w_dfl * sum_{i in P} q_i * mean_sides DFL(S_i, y_i) / Q`` with ``y_i`` the distances
  from cell ``i``'s centre to the sides of its assigned box, in strides. ``w_dfl = 0.5``: YOLOv8's DFL : IoU ratio
  (1.5 : 7.5 = 0.2) times our ``w_box = 2.5``; GFL's own ratio (0.25 : 2.0 = 0.125) would give 0.31. Without
  distributions (the default head regresses distances directly) there is no such term.
* Auxiliary head (YOLOv7's lead-guided assignment, Wang et al. 2022, https://arxiv.org/abs/2207.02696, section
  4.2): its targets are assigned from the *lead* head's predictions, coarser (``2 x topk`` positives per box), and
  its loss is added with weight ``aux_weight = 0.25``.

Images without boxes are negatives: every prediction's target is 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from frugalvision.losses._registry import register_loss
from frugalvision.losses.box_iou import BOX_LOSSES
from frugalvision.losses.detection_assigner import Assignment, TaskAlignedAssigner
from frugalvision.losses.detection_dfl import distribution_focal_loss, side_distances

__all__ = ["DetectionLoss", "pad_targets", "varifocal_loss"]


def varifocal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise varifocal loss (see module docstring); ``logits`` and IoU-aware ``targets`` in [0, 1] of
    the same shape."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    with torch.no_grad():
        p = torch.sigmoid(logits)
        weight = torch.where(targets > 0, targets, alpha * p.pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def pad_targets(
    targets: list[dict[str, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image ``{"boxes" (n, 4), "labels" (n,)}`` -> ``labels (B, M)``, ``boxes (B, M, 4)``, ``mask (B, M)``
    padded to the largest ``n``."""
    m = max((int(t["boxes"].shape[0]) for t in targets), default=0)
    b = len(targets)
    labels = torch.zeros(b, m, dtype=torch.long, device=device)
    boxes = torch.zeros(b, m, 4, device=device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = int(t["boxes"].shape[0])
        if n:
            boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
            labels[i, :n] = t["labels"].to(device=device, dtype=torch.long)
            mask[i, :n] = True
    return labels, boxes, mask


@register_loss("yolo", "detection", task="detection", space="euclidean")
class DetectionLoss(nn.Module):
    """Loss of :class:`~frugalvision.models.detection.Detector` in train mode (see the module docstring).

    Args:
        num_classes: ``C``.
        cls_loss: ``"varifocal"`` (default) or ``"bce"``.
        box_loss: ``"ciou"`` (default) or ``"giou"``.
        cls_weight, box_weight, aux_weight: term weights.
        dfl_weight: weight of the distribution focal loss, used when the outputs carry ``box_dist``.
        topk, alpha, beta, radius: the assigner's (:class:`TaskAlignedAssigner`).

    ``forward(outputs, targets)`` with the detector's train-mode dict and per-image targets ``{"boxes" (n, 4) xyxy
    input pixels, "labels" (n,)}`` returns ``{"loss", "cls", "box"[, "dfl"][, "aux"]}`` (scalars; ``loss`` is the
    total; ``dfl`` when the detector predicts distributions).

    Example:
        >>> loss = DetectionLoss(num_classes=3)
        >>> terms = loss(detector(images), targets)   # detector.train()
    """

    def __init__(
        self,
        num_classes: int,
        cls_loss: str = "varifocal",
        box_loss: str = "ciou",
        cls_weight: float = 1.0,
        box_weight: float = 2.5,
        aux_weight: float = 0.25,
        dfl_weight: float = 0.5,
        topk: int = 10,
        alpha: float = 1.0,
        beta: float = 6.0,
        radius: float = 2.5,
    ) -> None:
        super().__init__()
        if cls_loss not in ("varifocal", "bce"):
            raise ValueError(f"cls_loss must be 'varifocal' or 'bce', got {cls_loss!r}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
        self.num_classes = int(num_classes)
        self.cls_loss, self.box_loss = cls_loss, box_loss
        self.cls_weight, self.box_weight, self.aux_weight = (
            float(cls_weight),
            float(box_weight),
            float(aux_weight),
        )
        self.dfl_weight = float(dfl_weight)
        self.assigner = TaskAlignedAssigner(topk, alpha, beta, radius)
        self.coarse_assigner = TaskAlignedAssigner(2 * topk, alpha, beta, radius)

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        cls = outputs["cls"]
        if cls.shape[-1] != self.num_classes:
            raise ValueError(
                f"the detector predicts {cls.shape[-1]} classes, the loss expects {self.num_classes}"
            )
        if len(targets) != cls.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {cls.shape[0]} images")
        labels, boxes, mask = pad_targets(targets, cls.device)
        if mask.any() and (labels[mask].min() < 0 or labels[mask].max() >= self.num_classes):
            raise ValueError(
                f"target labels must be in [0, {self.num_classes - 1}], got {labels[mask].unique().tolist()}"
            )
        gt = (labels, boxes, mask)
        scores = torch.sigmoid(outputs["cls"].detach().float())
        pred = outputs["boxes"].detach().float()
        fine = self.assigner(scores, pred, outputs["points"], outputs["strides"], *gt)
        terms = self._terms(outputs, fine)
        total = self._weighted(terms)
        if "aux" in outputs:
            coarse = self.coarse_assigner(scores, pred, outputs["points"], outputs["strides"], *gt)
            terms["aux"] = self._weighted(self._terms(outputs["aux"], coarse))
            total = total + self.aux_weight * terms["aux"]
        return {"loss": total, **terms}

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = self.cls_weight * terms["cls"] + self.box_weight * terms["box"]
        if "dfl" in terms:
            total = total + self.dfl_weight * terms["dfl"]
        return total

    def _terms(self, outputs: dict[str, Any], a: Assignment) -> dict[str, torch.Tensor]:
        logits = outputs["cls"].float()
        norm = a.scores.sum().clamp(min=1.0)
        if self.cls_loss == "varifocal":
            cls_term = varifocal_loss(logits, a.scores).sum() / norm
        else:
            cls_term = F.binary_cross_entropy_with_logits(logits, a.scores, reduction="sum") / norm
        fg = a.foreground
        if fg.any():
            weight = a.scores.sum(-1)[fg]
            per_box = BOX_LOSSES[self.box_loss](outputs["boxes"].float()[fg], a.boxes[fg])
            box_term = (per_box * weight).sum() / norm
        else:
            box_term = outputs["boxes"].sum() * 0.0
        terms = {"cls": cls_term, "box": box_term}
        if outputs.get("box_dist") is not None:
            terms["dfl"] = self._dfl_term(outputs, a, norm)
        return terms

    def _dfl_term(self, outputs: dict[str, Any], a: Assignment, norm: torch.Tensor) -> torch.Tensor:
        """``sum_{i in P} q_i * mean_sides DFL(S_i, y_i) / Q`` (module docstring)."""
        dist = outputs["box_dist"].float()  # (B, N, 4, R + 1)
        fg = a.foreground
        if not fg.any():
            return dist.sum() * 0.0
        n = dist.shape[1]
        cell = torch.arange(n, device=dist.device).expand_as(fg)[fg]
        target = side_distances(
            outputs["points"][cell].float(), a.boxes[fg].float(), outputs["strides"][cell].float()
        )
        per_box = distribution_focal_loss(dist[fg], target).mean(-1)
        return (per_box * a.scores.sum(-1)[fg]).sum() / norm
