"""How well discovered boxes match ground truth: CorLoc and class-agnostic COCO box AP.

- **CorLoc** (correct localisation; Deselaers, Alexe & Ferrari, "Weakly supervised localization and
  learning with generic knowledge", IJCV 2012; the standard metric of unsupervised object discovery,
  e.g. LOST, TokenCut): the fraction of images with at least one ground-truth box in which a predicted box
  has IoU >= 0.5 with some ground-truth box. Discovery papers score only the first box (``top_k=1``).
- **Class-agnostic AP**: COCO's box AP (Lin et al., ECCV 2014; ``pycocotools.COCOeval``, ``iouType="bbox"``,
  area range "all", 101 recall points, at most 100 detections per image) with every class merged into one,
  as CutLER reports it. AP50 uses IoU 0.5; AP averages IoU 0.50:0.05:0.95. Written here in numpy and tested
  to agree with pycocotools and torchmetrics.
- **Centred-box baseline**: one fixed box per image, centred and covering half its area
  (:func:`centre_box`, :func:`centre_box_baseline`). Photos tend to centre their subject, so this box alone
  reaches a CorLoc that features must beat before they can be said to find objects (on the first 32 images of
  coco128, MaskCut's first box with the offline EfficientNet-Lite0 has CorLoc 0.3125, the centred box 0.3438:
  ``benchmarks/discover.py --data coco128 --max-images 32``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["average_precision", "box_iou", "centre_box", "centre_box_baseline", "corloc", "evaluate_boxes"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _boxes(x: object, name: str) -> np.ndarray:
    b = np.asarray(x, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) of (x0, y0, x1, y1), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0; expected (x0, y0, x1, y1)")
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``, ``(x0, y0, x1, y1)``: ``(N, M)``.

    Continuous coordinates (no +1), as COCO; a pair with zero union has IoU 0.
    """
    a, b = _boxes(a, "a"), _boxes(b, "b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_lists(predictions: Sequence[object], ground_truth: Sequence[object]) -> None:
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"predictions and ground_truth must list the same images: {len(predictions)} and {len(ground_truth)}"
        )


def corloc(
    predictions: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    *,
    iou_threshold: float = 0.5,
    top_k: int | None = None,
) -> float:
    """CorLoc: fraction of images whose predicted boxes hit a ground-truth box with IoU >= ``iou_threshold``.

    Args:
        predictions: per image, ``(K, 4)`` boxes in order of preference (MaskCut: the order found).
        ground_truth: per image, ``(G, 4)`` boxes. Images with no ground-truth box are left out.
        iou_threshold: 0.5 by convention.
        top_k: score only the first ``top_k`` predictions of each image (1: the usual single-object CorLoc);
            ``None`` uses them all.

    Returns:
        A fraction in [0, 1], or NaN when no image has a ground-truth box.
    """
    _check_lists(predictions, ground_truth)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    hits = counted = 0
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
        g = _boxes(gt, f"ground_truth[{i}]")
        if not len(g):
            continue
        p = _boxes(pred, f"predictions[{i}]")[:top_k]
        counted += 1
        hits += bool(len(p)) and bool((box_iou(p, g) >= iou_threshold).any())
    return hits / counted if counted else float("nan")


def _match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """COCOeval's greedy matching: detections (rows, best score first) take the unmatched gt of highest IoU."""
    matched_gt = np.zeros(iou.shape[1], dtype=bool)
    true_positive = np.zeros(iou.shape[0], dtype=bool)
    for d in range(iou.shape[0]):
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for g in range(iou.shape[1]):
            if matched_gt[g] or iou[d, g] < best_iou:
                continue
            best, best_iou = g, iou[d, g]
        if best >= 0:
            matched_gt[best] = True
            true_positive[d] = True
    return true_positive


def average_precision(
    predictions: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    *,
    iou_thresholds: Sequence[float] | np.ndarray = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> np.ndarray:
    """Class-agnostic COCO box AP at each IoU threshold (pycocotools ``COCOeval`` with one category).

    Per image the detections are sorted by score (stable) and cut to ``max_detections``; each, best first,
    matches the unmatched ground-truth box of highest IoU >= the threshold. Over all images, precision is
    made monotone and read at 101 recall points ``0, 0.01, ..., 1``; AP is their mean.

    Args:
        predictions: per image, ``(K, 4)`` ``(x0, y0, x1, y1)`` boxes.
        scores: per image, ``(K,)`` confidences.
        ground_truth: per image, ``(G, 4)`` boxes.
        iou_thresholds: thresholds ``T``.
        max_detections: detections kept per image.

    Returns:
        ``(T,)`` AP per threshold; NaN where there is no ground-truth box at all (COCOeval's -1).
    """
    _check_lists(predictions, ground_truth)
    _check_lists(predictions, scores)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    per_image_scores, per_image_tp = [], []
    n_gt = 0
    for i, (pred, score, gt) in enumerate(zip(predictions, scores, ground_truth, strict=True)):
        p, g = _boxes(pred, f"predictions[{i}]"), _boxes(gt, f"ground_truth[{i}]")
        s = np.asarray(score, dtype=np.float64).reshape(-1)
        if s.shape[0] != p.shape[0]:
            raise ValueError(f"scores[{i}] has {s.shape[0]} values for {p.shape[0]} boxes")
        order = np.argsort(-s, kind="mergesort")[:max_detections]
        p, s = p[order], s[order]
        iou = box_iou(p, g)
        per_image_tp.append(np.stack([_match(iou, t) for t in thresholds], axis=0))
        per_image_scores.append(s)
        n_gt += len(g)
    ap = np.full(len(thresholds), np.nan)
    if n_gt == 0:
        return ap
    all_scores = np.concatenate(per_image_scores) if per_image_scores else np.zeros(0)
    all_tp = np.concatenate(per_image_tp, axis=1) if per_image_tp else np.zeros((len(thresholds), 0), bool)
    order = np.argsort(-all_scores, kind="mergesort")
    if all_scores.size == 0:
        return np.zeros(len(thresholds))
    for t in range(len(thresholds)):
        tp = np.cumsum(all_tp[t, order])
        fp = np.cumsum(~all_tp[t, order])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone, from the right
        where = np.searchsorted(recall, _RECALL_POINTS, side="left")
        sampled = np.where(where < len(precision), precision[np.minimum(where, len(precision) - 1)], 0.0)
        ap[t] = sampled.mean()
    return ap


def evaluate_boxes(
    predictions: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
) -> dict[str, float]:
    """CorLoc (first box and any box) and class-agnostic AP, AP50, AP75 in one dict.

    Keys: ``corloc`` (top-1), ``corloc_any``, ``ap`` (IoU 0.50:0.95), ``ap50``, ``ap75``, ``images``
    (with ground truth), ``gt_boxes``, ``pred_boxes``.
    """
    ap = average_precision(predictions, scores, ground_truth)
    return {
        "corloc": corloc(predictions, ground_truth, top_k=1),
        "corloc_any": corloc(predictions, ground_truth),
        "ap": float(np.mean(ap)),
        "ap50": float(ap[0]),
        "ap75": float(ap[5]),
        "images": sum(1 for g in ground_truth if len(np.asarray(g).reshape(-1, 4))),
        "gt_boxes": sum(len(np.asarray(g).reshape(-1, 4)) for g in ground_truth),
        "pred_boxes": sum(len(np.asarray(p).reshape(-1, 4)) for p in predictions),
    }


def centre_box(width: float, height: float, area_fraction: float = 0.5) -> np.ndarray:
    """The box centred in a ``width x height`` image covering ``area_fraction`` of its area: ``(1, 4)``.

    Sides ``W·√a x H·√a`` (the image's aspect ratio), corners
    ``((W - W√a) / 2, (H - H√a) / 2, (W + W√a) / 2, (H + H√a) / 2)``, continuous pixel coordinates.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be > 0, got {width} x {height}")
    if not 0.0 < area_fraction <= 1.0:
        raise ValueError(f"area_fraction must lie in (0, 1], got {area_fraction}")
    side = float(np.sqrt(area_fraction))
    bw, bh = width * side, height * side
    return np.array([[(width - bw) / 2, (height - bh) / 2, (width + bw) / 2, (height + bh) / 2]])


def centre_box_baseline(
    image_sizes: Sequence[tuple[float, float]],
    ground_truth: Sequence[np.ndarray],
    *,
    area_fraction: float = 0.5,
) -> dict[str, float]:
    """:func:`evaluate_boxes` of the fixed :func:`centre_box` of each image (one box, score 1).

    The bar a discovery method has to clear on the same images: a CorLoc at or below it means the features
    did not find the objects (the prior that photos centre their subject did the work).

    Args:
        image_sizes: per image, ``(width, height)`` in the pixels of ``ground_truth``.
        ground_truth: per image, ``(G, 4)`` ``(x0, y0, x1, y1)`` boxes.
        area_fraction: the box's share of the image area (0.5).

    Returns:
        The keys of :func:`evaluate_boxes`.
    """
    if len(image_sizes) != len(ground_truth):
        raise ValueError(
            f"image_sizes and ground_truth must list the same images: {len(image_sizes)} and {len(ground_truth)}"
        )
    boxes = [centre_box(w, h, area_fraction) for w, h in image_sizes]
    return evaluate_boxes(boxes, [np.ones(1) for _ in boxes], ground_truth)
