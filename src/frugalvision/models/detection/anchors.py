"""Anchors for the anchor-based head: YOLOv3's defaults, k-means on the user's boxes, best possible recall.

A box ``(w, h)`` can be reached by an anchor ``(w_a, h_a)`` when both ratios ``w / w_a`` and ``h / h_a`` lie in
``[1/r, r]`` (``r = 4``: the anchor-based head's decoding reaches at most 4x its anchor). The *best possible recall*
(BPR, YOLOv5's anchor check) is the fraction of boxes some anchor reaches::

    m(box, anchor) = min(w / w_a, w_a / w, h / h_a, h_a / h)
    BPR = mean_boxes [ max_anchors m(box, anchor) > 1 / r ]

:func:`choose_anchors` keeps the default anchors when their BPR is at least 0.98 on the user's boxes, else fits
new ones by k-means (scikit-learn) on the boxes' ``(w, h)`` and warns when even those reach fewer than 98 %.
"""

from __future__ import annotations

import warnings

import numpy as np

from frugalvision.errors import DataWarning

__all__ = [
    "ANCHOR_RATIO",
    "BPR_THRESHOLD",
    "best_possible_recall",
    "choose_anchors",
    "default_anchors",
    "fit_anchors",
]

#: The largest size ratio between a box and an anchor that the anchor-based head can regress.
ANCHOR_RATIO = 4.0
#: Below this best possible recall the anchors are refitted (and a warning is given if still below).
BPR_THRESHOLD = 0.98
#: YOLOv3's anchors for 416-pixel inputs (Redmon & Farhadi 2018, https://arxiv.org/abs/1804.02767), per level.
_YOLOV3_416 = [
    [(10.0, 13.0), (16.0, 30.0), (33.0, 23.0)],
    [(30.0, 61.0), (62.0, 45.0), (59.0, 119.0)],
    [(116.0, 90.0), (156.0, 198.0), (373.0, 326.0)],
]


def default_anchors(image_size: int) -> list[list[tuple[float, float]]]:
    """YOLOv3's anchors scaled from 416 pixels to ``image_size``, per level (strides 8, 16, 32)."""
    f = image_size / 416.0
    return [[(w * f, h * f) for w, h in level] for level in _YOLOV3_416]


def _wh(boxes_wh: np.ndarray) -> np.ndarray:
    wh = np.asarray(boxes_wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ValueError(f"boxes_wh must be (n, 2) widths and heights in input pixels, got {wh.shape}")
    return wh[(wh > 0).all(1)]


def best_possible_recall(
    boxes_wh: np.ndarray, anchors: list[list[tuple[float, float]]], ratio: float = ANCHOR_RATIO
) -> float:
    """The fraction of boxes ``(n, 2)`` that some anchor reaches (see module docstring); 1.0 for no boxes."""
    wh = _wh(boxes_wh)
    if len(wh) == 0:
        return 1.0
    a = np.asarray([pair for level in anchors for pair in level], dtype=np.float64)  # (k, 2)
    r = wh[:, None, :] / a[None, :, :]
    m = np.minimum(r, 1.0 / r).min(axis=2)  # (n, k)
    return float((m.max(axis=1) > 1.0 / ratio).mean())


def fit_anchors(
    boxes_wh: np.ndarray, num_levels: int = 3, per_level: int = 3, seed: int = 0
) -> list[list[tuple[float, float]]]:
    """k-means (scikit-learn, ``num_levels * per_level`` clusters) on the boxes' ``(w, h)``, sorted by area and
    dealt out to the levels from the finest stride up.

    The widths and heights are clustered in log space, so small and large boxes weigh alike (a box twice as wide
    as its anchor is as far from it as one half as wide, which is what the ratio test above measures).

    Raises:
        ValueError: fewer distinct boxes than anchors.
    """
    from sklearn.cluster import KMeans

    wh = _wh(boxes_wh)
    k = num_levels * per_level
    if len(np.unique(wh, axis=0)) < k:
        raise ValueError(f"fitting {k} anchors needs at least {k} distinct box sizes, got {len(wh)} boxes")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(np.log(wh))
    centres = np.exp(km.cluster_centers_)
    centres = centres[np.argsort(centres.prod(axis=1))]
    return [
        [(float(w), float(h)) for w, h in centres[i * per_level : (i + 1) * per_level]]
        for i in range(num_levels)
    ]


def choose_anchors(
    boxes_wh: np.ndarray, image_size: int, seed: int = 0
) -> tuple[list[list[tuple[float, float]]], float]:
    """The anchors to train with and their BPR: the defaults when their BPR >= 0.98 on ``boxes_wh`` (input
    pixels), else k-means anchors (with a :class:`DataWarning` when those stay below 0.98 too)."""
    anchors = default_anchors(image_size)
    bpr = best_possible_recall(boxes_wh, anchors)
    if bpr >= BPR_THRESHOLD:
        return anchors, bpr
    wh = _wh(boxes_wh)
    try:
        fitted = fit_anchors(wh, seed=seed)
    except ValueError:
        warnings.warn(
            f"the default anchors reach {bpr:.3f} of the boxes (best possible recall < {BPR_THRESHOLD}) and there "
            "are too few distinct boxes to fit new ones",
            DataWarning,
            stacklevel=2,
        )
        return anchors, bpr
    fitted_bpr = best_possible_recall(wh, fitted)
    if fitted_bpr < BPR_THRESHOLD:
        warnings.warn(
            f"anchors fitted by k-means reach only {fitted_bpr:.3f} of the boxes (best possible recall < "
            f"{BPR_THRESHOLD}); consider the anchor-free head",
            DataWarning,
            stacklevel=2,
        )
    return (fitted, fitted_bpr) if fitted_bpr >= bpr else (anchors, bpr)
