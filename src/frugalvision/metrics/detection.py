"""Object-detection metrics: COCO mAP through pycocotools or faster-coco-eval (:func:`coco_evaluate`), and a
detection confusion matrix (:func:`detection_confusion_matrix`). Numpy only (torch tensors are accepted).

Inputs, one entry per image, boxes ``xyxy`` in **original image pixels** (undo the letterbox first):

* ``predictions[i] = {"boxes": (n, 4), "scores": (n,), "labels": (n,)}``;
* ``targets[i] = {"boxes": (m, 4), "labels": (m,)}``, optionally ``"iscrowd": (m,)`` (crowd boxes are neither
  matched nor missed: detections on them are ignored) and ``"area": (m,)`` (the object area used for the
  small / medium / large split; the box area ``w h`` when absent, as for data sets without masks).

Class ids are ``0..C-1`` (COCO category ``k + 1`` inside the evaluators).

COCO AP (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, https://cocodataset.org/#detection-eval):
for each class ``k``, IoU threshold ``t in {0.50, 0.55, ..., 0.95}`` and area range, detections (the 100 best-scored
per image) are matched greedily by score to the unmatched ground truth of highest IoU ``>= t``; the precision
envelope ``p_interp(r) = max_{r' >= r} p(r')`` is sampled at the 101 recalls ``r in {0, 0.01, ..., 1}`` and
averaged: ``AP_k(t) = 1/101 sum_r p_interp(r)``. ``mAP = mean_{k, t} AP_k(t)`` over the classes with ground truth;
``AP50`` / ``AP75`` fix ``t``; ``AP_S/M/L`` restrict to areas ``< 32^2``, ``32^2..96^2``, ``> 96^2`` pixels. The
numbers here are read from the evaluator's ``eval["precision"]`` array ``(T=10, R=101, K, A=4, M=3)`` and
``eval["recall"]`` ``(T, K, A, M)`` exactly as ``COCOeval.summarize`` reads them (entries ``-1`` = undefined left
out), without its printing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from frugalvision._checks import check_choice
from frugalvision.errors import DataError
from frugalvision.metrics._arrays import to_numpy

__all__ = [
    "BACKENDS",
    "DetectionEvaluation",
    "box_iou",
    "coco_evaluate",
    "detection_confusion_matrix",
]

Backend = Literal["pycocotools", "faster-coco-eval"]
#: Values of ``coco_evaluate(backend=...)``.
BACKENDS: tuple[str, ...] = ("pycocotools", "faster-coco-eval")

_IOU_50, _IOU_75 = 0, 5  # indices of 0.50 and 0.75 in COCO's iouThrs
_AREAS = {"all": 0, "small": 1, "medium": 2, "large": 3}
_MAX_DETS = (1, 10, 100)


@dataclass(frozen=True)
class DetectionEvaluation:
    """COCO metrics of a set of detections; ``nan`` where undefined (no ground truth in that area range).

    Attributes:
        map: AP averaged over IoU 0.50:0.95 and the classes (COCO's headline "AP").
        ap50, ap75: AP at IoU 0.50 and 0.75.
        ap_small, ap_medium, ap_large: AP@[.5:.95] restricted to areas ``< 32^2``, ``32^2..96^2``, ``> 96^2``.
        ar1, ar10, ar100: recall with at most 1, 10, 100 detections per image, averaged over IoU and classes.
        class_names: the ``C`` class names.
        per_class_ap: ``(C,)`` AP@[.5:.95] per class (``nan`` for a class without ground truth).
        per_class_ap50: ``(C,)`` AP@0.5 per class.
        num_targets: ``(C,)`` ground-truth boxes per class (crowd boxes excluded).
        recall_thresholds: ``(101,)`` the recalls ``0, 0.01, ..., 1`` at which precision is sampled.
        iou_thresholds: ``(10,)`` ``0.50, 0.55, ..., 0.95``.
        precision: ``(T, R, K, A, M)`` the evaluator's interpolated precision (``nan`` where it has ``-1``).
        backend: the evaluator that computed it.
    """

    map: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    class_names: tuple[str, ...]
    per_class_ap: np.ndarray = field(repr=False)
    per_class_ap50: np.ndarray = field(repr=False)
    num_targets: np.ndarray = field(repr=False)
    recall_thresholds: np.ndarray = field(repr=False)
    iou_thresholds: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)
    backend: str = "pycocotools"

    def pr_curve(self, iou: float = 0.5, area: str = "all") -> np.ndarray:
        """``(C, 101)`` interpolated precision per class at ``recall_thresholds``, at IoU threshold ``iou`` (one of
        ``iou_thresholds``), up to 100 detections per image; ``nan`` for a class without ground truth."""
        check_choice(area, tuple(_AREAS), "area")
        matches = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if matches.size == 0:
            raise ValueError(f"iou must be one of {np.round(self.iou_thresholds, 2).tolist()}, got {iou}")
        return self.precision[matches[0], :, :, _AREAS[area], -1].T.copy()

    def summary(self) -> dict[str, float]:
        """The scalar metrics by name (``map``, ``ap50``, ...)."""
        names = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")
        return {n: float(getattr(self, n)) for n in names}

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class: ``{"class", "targets", "ap", "ap50"}``."""
        return [
            {"class": name, "targets": int(n), "ap": float(ap), "ap50": float(ap50)}
            for name, n, ap, ap50 in zip(
                self.class_names, self.num_targets, self.per_class_ap, self.per_class_ap50, strict=True
            )
        ]

    def to_markdown(self) -> str:
        """The per-class AP table in Markdown (for a bundle's ``report.md``)."""

        def cell(v: float) -> str:
            return "n/a" if np.isnan(v) else f"{v:.3f}"

        lines = ["| class | boxes | AP@[.5:.95] | AP50 |", "|---|---:|---:|---:|"]
        lines += [
            f"| {r['class']} | {r['targets']} | {cell(r['ap'])} | {cell(r['ap50'])} |"
            for r in self.per_class()
        ]
        lines.append(f"| **all** | {int(self.num_targets.sum())} | {cell(self.map)} | {cell(self.ap50)} |")
        return "\n".join(lines)


# --- input checks ---------------------------------------------------------------------------------------------
def _field(entry: Mapping[str, Any], key: str, where: str, required: bool = True) -> np.ndarray | None:
    if not isinstance(entry, Mapping):
        raise DataError(f"{where} must be a dict with boxes / labels, got {type(entry).__name__}")
    if key not in entry:
        if required:
            raise DataError(f"{where} lacks the key {key!r} (it has {sorted(entry)})")
        return None
    try:
        return to_numpy(entry[key], f"{where}[{key!r}]")
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _boxes(entry: Mapping[str, Any], where: str) -> np.ndarray:
    boxes = _field(entry, "boxes", where)
    assert boxes is not None
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{where}['boxes'] must have shape (n, 4) xyxy, got {boxes.shape}")
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all():
        raise DataError(f"{where}['boxes'] holds non-finite values")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad.size:
        raise DataError(
            f"{where}['boxes'][{bad[0]}] = {boxes[bad[0]].tolist()} is not xyxy (x1 < x0 or y1 < y0)"
        )
    return boxes


def _vector(
    entry: Mapping[str, Any], key: str, n: int, where: str, required: bool = True
) -> np.ndarray | None:
    values = _field(entry, key, where, required)
    if values is None:
        return None
    values = values.reshape(-1) if values.size or values.ndim == 1 else values.reshape(0)
    if values.shape != (n,):
        raise DataError(f"{where}[{key!r}] must have shape ({n},) like its boxes, got {values.shape}")
    return values


def _labels(entry: Mapping[str, Any], n: int, num_classes: int, where: str, agnostic: bool) -> np.ndarray:
    labels = _vector(entry, "labels", n, where)
    assert labels is not None
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise DataError(f"{where}['labels'] must be integer class ids, got {labels[:5].tolist()}")
    labels = labels.astype(np.int64)
    if agnostic:
        return np.zeros_like(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{where}['labels'][{bad[0]}] = {labels[bad[0]]} is outside [0, {num_classes}) classes"
        )
    return labels


@dataclass(frozen=True)
class _Image:
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    crowd: np.ndarray | None = None
    area: np.ndarray | None = None


def _read(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    agnostic: bool,
) -> tuple[list[_Image], list[_Image]]:
    if len(predictions) != len(targets):
        raise DataError(
            f"predictions and targets must have one entry per image: {len(predictions)} and {len(targets)}"
        )
    preds, gts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        where = f"predictions[{i}]"
        boxes = _boxes(p, where)
        scores = _vector(p, "scores", len(boxes), where)
        assert scores is not None
        if not np.isfinite(scores.astype(np.float64)).all():
            raise DataError(f"{where}['scores'] holds non-finite values")
        labels = _labels(p, len(boxes), num_classes, where, agnostic)
        preds.append(_Image(boxes, labels, scores=scores.astype(np.float64)))
        where = f"targets[{i}]"
        boxes = _boxes(t, where)
        labels = _labels(t, len(boxes), num_classes, where, agnostic)
        crowd = _vector(t, "iscrowd", len(boxes), where, required=False)
        area = _vector(t, "area", len(boxes), where, required=False)
        crowd = np.zeros(len(boxes), dtype=bool) if crowd is None else crowd.astype(bool)
        gts.append(_Image(boxes, labels, crowd=crowd, area=None if area is None else area.astype(np.float64)))
    return preds, gts


# --- COCO evaluation -----------------------------------------------------------------------------------------
def _annotations(images: list[_Image], start_id: int = 1) -> list[dict[str, Any]]:
    """COCO annotations of every box of ``images`` (image ``i`` has COCO id ``i + 1``), ids from ``start_id``."""
    anns: list[dict[str, Any]] = []
    for i, im in enumerate(images):
        if not len(im.boxes):
            continue
        xywh = np.concatenate([im.boxes[:, :2], im.boxes[:, 2:] - im.boxes[:, :2]], axis=1)
        box_area = xywh[:, 2] * xywh[:, 3]
        area = (box_area if im.area is None else im.area).tolist()
        crowd = (
            np.zeros(len(xywh), dtype=np.int64) if im.crowd is None else im.crowd.astype(np.int64)
        ).tolist()
        categories = (im.labels + 1).tolist()
        first = start_id + len(anns)
        for j, bbox in enumerate(xywh.tolist()):
            anns.append(
                {
                    "id": first + j,
                    "image_id": i + 1,
                    "category_id": categories[j],
                    "bbox": bbox,
                    "area": area[j],
                    "iscrowd": crowd[j],
                }
            )
        if im.scores is not None:
            for ann, score in zip(anns[first - start_id :], im.scores.tolist(), strict=True):
                ann["score"] = score
    return anns


def _coco_dicts(
    preds: list[_Image], gts: list[_Image], class_names: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ground truth and detections as COCO data sets (ids from 1: COCOeval treats a match id of 0 as no match).
    A detection's area is its box's, as ``COCO.loadRes`` sets it."""
    images = [{"id": i + 1} for i in range(len(gts))]
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)]
    gt = {"images": images, "categories": categories, "annotations": _annotations(gts)}
    dt = {"images": images, "categories": categories, "annotations": _annotations(preds)}
    return gt, dt


def _run_pycocotools(gt: dict[str, Any], dt: dict[str, Any]) -> dict[str, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    return {
        "precision": evaluator.eval["precision"],
        "recall": evaluator.eval["recall"],
        "iou": evaluator.params.iouThrs,
        "rec": evaluator.params.recThrs,
    }


def _run_faster(gt: dict[str, Any], dt: dict[str, Any]) -> dict[str, Any]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as exc:
        raise ImportError(
            "backend='faster-coco-eval' needs the faster-coco-eval package: pip install 'frugalvision[full]'"
        ) from exc

    def quiet(*_: Any) -> None:
        return None

    coco_gt = COCO(gt, print_function=quiet)
    coco_dt = COCO(dt, print_function=quiet)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
    evaluator.evaluate()
    evaluator.accumulate()
    return {
        "precision": np.asarray(evaluator.eval["precision"]),
        "recall": np.asarray(evaluator.eval["recall"]),
        "iou": np.asarray(evaluator.params.iouThrs),
        "rec": np.asarray(evaluator.params.recThrs),
    }


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the entries ``> -1`` (COCOeval's "defined"), ``nan`` when none is."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else float("nan")


def coco_evaluate(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    backend: Backend = "pycocotools",
    class_agnostic: bool = False,
) -> DetectionEvaluation:
    """COCO box metrics of ``predictions`` against ``targets`` (see the module docstring for the formats).

    Args:
        predictions: one dict per image, boxes in original pixels, all detections (the evaluator keeps the 100
            best-scored per image; pass a low score threshold, e.g. ``postprocess``'s 0.001).
        targets: one dict per image (an image without boxes is a negative: its detections are false positives).
        class_names: the ``C`` class names; labels index into it.
        backend: ``"pycocotools"`` (the reference) or ``"faster-coco-eval"`` (the same numbers, C++ matching).
        class_agnostic: every label becomes one class ``"object"`` (CutLER's evaluation of discovered objects).

    Returns:
        A :class:`DetectionEvaluation`.

    Raises:
        DataError: lists of different lengths, a missing key, boxes not ``(n, 4)`` xyxy or non-finite, a label
            outside ``[0, C)`` -- naming the image and the field.

    Example:
        >>> preds = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]}]
        >>> gts = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}]
        >>> round(coco_evaluate(preds, gts, ["cell"]).map, 3)
        1.0
    """
    check_choice(backend, BACKENDS, "backend")
    names = ["object"] if class_agnostic else [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names must name at least one class")
    preds, gts = _read(predictions, targets, len(names), class_agnostic)
    gt, dt = _coco_dicts(preds, gts, names)
    out = _run_pycocotools(gt, dt) if backend == "pycocotools" else _run_faster(gt, dt)
    precision = np.asarray(out["precision"], dtype=np.float64)
    recall = np.asarray(out["recall"], dtype=np.float64)
    if precision.ndim != 5:  # no image at all: COCOeval leaves the arrays empty
        raise DataError("nothing to evaluate: no images")
    area_all, m100 = _AREAS["all"], _MAX_DETS.index(100)

    def ap(t: int | slice = slice(None), area: str = "all") -> float:
        return _mean_defined(precision[t, :, :, _AREAS[area], m100])

    per_class = np.array([_mean_defined(precision[:, :, k, area_all, m100]) for k in range(len(names))])
    per_class50 = np.array(
        [_mean_defined(precision[_IOU_50, :, k, area_all, m100]) for k in range(len(names))]
    )
    counts = np.zeros(len(names), dtype=np.int64)
    for g in gts:
        np.add.at(counts, g.labels[~g.crowd] if g.crowd is not None else g.labels, 1)
    return DetectionEvaluation(
        map=ap(),
        ap50=ap(_IOU_50),
        ap75=ap(_IOU_75),
        ap_small=ap(area="small"),
        ap_medium=ap(area="medium"),
        ap_large=ap(area="large"),
        ar1=_mean_defined(recall[:, :, area_all, 0]),
        ar10=_mean_defined(recall[:, :, area_all, 1]),
        ar100=_mean_defined(recall[:, :, area_all, m100]),
        class_names=tuple(names),
        per_class_ap=per_class,
        per_class_ap50=per_class50,
        num_targets=counts,
        recall_thresholds=np.asarray(out["rec"], dtype=np.float64),
        iou_thresholds=np.asarray(out["iou"], dtype=np.float64),
        precision=np.where(precision > -1, precision, np.nan),
        backend=backend,
    )


# --- confusion matrix ----------------------------------------------------------------------------------------
def box_iou(a: Any, b: Any) -> np.ndarray:
    """``(n, m)`` float64 IoU of xyxy boxes ``a (n, 4)`` and ``b (m, 4)``: ``|a ∩ b| / |a ∪ b|`` (0 where the union
    is empty)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    wh = np.clip(
        np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None
    )
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def detection_confusion_matrix(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
    class_agnostic: bool = False,
) -> np.ndarray:
    """The ``(C + 1, C + 1)`` int64 detection confusion matrix: rows are true classes, columns predicted ones (as
    :func:`frugalvision.metrics.confusion_matrix`), index ``C`` is the background.

    Per image, the detections scoring ``>= score_threshold`` are matched one-to-one to ground-truth boxes
    regardless of class: every (box, detection) pair with IoU ``>= iou_threshold`` is taken in order of decreasing
    IoU (ties: higher score first) if neither is taken yet. A match adds 1 to ``[true, predicted]`` (the diagonal
    if the classes agree); an unmatched box to ``[true, C]`` (missed); an unmatched detection to ``[C, predicted]``
    (a false positive) -- unless it overlaps a crowd box (``iscrowd``) by ``iou_threshold``, then it is ignored.
    Crowd boxes themselves are never counted. ``[C, C]`` is always 0.

    Raises:
        DataError: as :func:`coco_evaluate`.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    c = 1 if class_agnostic else int(num_classes)
    preds, gts = _read(predictions, targets, c, class_agnostic)
    matrix = np.zeros((c + 1, c + 1), dtype=np.int64)
    for p, g in zip(preds, gts, strict=True):
        assert p.scores is not None and g.crowd is not None
        keep = p.scores >= score_threshold
        p_boxes, p_labels, p_scores = p.boxes[keep], p.labels[keep], p.scores[keep]
        g_boxes, g_labels = g.boxes[~g.crowd], g.labels[~g.crowd]
        iou = box_iou(g_boxes, p_boxes)
        gi, pj = np.nonzero(iou >= iou_threshold)
        order = np.lexsort((-p_scores[pj], -iou[gi, pj]))  # last key first: IoU, then score
        gt_used = np.zeros(len(g_boxes), dtype=bool)
        pred_used = np.zeros(len(p_boxes), dtype=bool)
        for i, j in zip(gi[order], pj[order], strict=True):
            if not gt_used[i] and not pred_used[j]:
                gt_used[i] = pred_used[j] = True
                matrix[g_labels[i], p_labels[j]] += 1
        np.add.at(matrix[:, c], g_labels[~gt_used], 1)
        unmatched = ~pred_used
        if g.crowd.any() and unmatched.any():
            on_crowd = (box_iou(p_boxes, g.boxes[g.crowd]) >= iou_threshold).any(axis=1)
            unmatched &= ~on_crowd
        np.add.at(matrix[c], p_labels[unmatched], 1)
    return matrix
