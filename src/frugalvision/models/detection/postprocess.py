"""Non-maximum suppression of the detector's raw outputs (torch; the ONNX graph has its own NMS)."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

__all__ = ["postprocess"]

#: Candidates kept per image before NMS (highest scores first), bounding its cost on low thresholds.
MAX_CANDIDATES = 30000


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = 0.001,
    iou_threshold: float = 0.65,
    max_detections: int = 300,
) -> list[dict[str, torch.Tensor]]:
    """Class-aware NMS per image (torchvision ``batched_nms``).

    Every (box, class) pair scoring above ``score_threshold`` is a candidate (a box may be kept for several
    classes, as COCO evaluation expects); candidates of one class suppress each other above ``iou_threshold``;
    the ``max_detections`` best survive.

    Args:
        boxes: ``(B, N, 4)`` xyxy in input pixels (``Detector`` in eval mode).
        scores: ``(B, N, C)`` class probabilities in [0, 1].
        score_threshold: the defaults (0.001, 0.65, 300) are for mAP evaluation; use 0.25 to predict.

    Returns:
        one dict per image: ``boxes (k, 4)``, ``scores (k,)``, ``labels (k,)`` int64, sorted by score.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"postprocess expects boxes (B, N, 4) and scores (B, N, C), got {tuple(boxes.shape)} and "
            f"{tuple(scores.shape)}"
        )
    out = []
    num_classes = scores.shape[2]
    for b, s in zip(boxes, scores, strict=True):
        flat = s.reshape(-1)
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > MAX_CANDIDATES:
            keep = keep[flat[keep].topk(MAX_CANDIDATES).indices]
        box_idx, labels = keep // num_classes, keep % num_classes
        cand_boxes, cand_scores = b[box_idx].float(), flat[keep].float()
        kept = batched_nms(cand_boxes, cand_scores, labels, iou_threshold)[:max_detections]
        out.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept].long()})
    return out
