"""The explorer's quality views: out-of-distribution scores from a fitted detector, near-duplicate groups."""

from __future__ import annotations

import os

import numpy as np

from frugalvision.errors import StoreError

__all__ = ["FEATURE_SCORES", "duplicate_group_ids", "ood_scores"]

#: Detector scores computed from embedding vectors alone (the others need logits or block norms).
FEATURE_SCORES: tuple[str, ...] = ("knn", "mahalanobis")


def ood_scores(detector: str | os.PathLike[str], vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """``(N,)`` float64 out-of-distribution scores (higher = stranger: minus the detector's ID score) and the
    score's name, from a detector saved by ``frugalvision ood fit`` (its kNN score, else its Mahalanobis score).

    Raises:
        StoreError: the detector is unreadable, has no feature score, or was fitted on vectors of another width.
    """
    from frugalvision.ood import OODDetector

    det = OODDetector.load(detector)
    names = [s for s in FEATURE_SCORES if s in det.fitted_scores]
    if not names:
        raise StoreError(
            f"detector {detector} has no score computed from embeddings ({', '.join(FEATURE_SCORES)}); "
            f"it has {det.fitted_scores}"
        )
    try:
        scores = det.score(features=vectors)
    except ValueError as e:
        raise StoreError(f"detector {detector} does not fit these embeddings: {e}") from e
    return -np.asarray(scores[names[0]], dtype=np.float64), names[0]


def duplicate_group_ids(vectors: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """``(N,)`` int64: the near-duplicate group of each row (cosine ``>= threshold``, groups numbered from 0 in
    row order of their first member), ``-1`` for rows without a duplicate
    (:func:`frugalvision.curation.near_duplicates` and :func:`~frugalvision.curation.duplicate_groups`)."""
    from frugalvision.curation import NEAR_DUPLICATE_THRESHOLD, duplicate_groups, near_duplicates

    pairs = near_duplicates(vectors, NEAR_DUPLICATE_THRESHOLD if threshold is None else threshold)
    out = np.full(len(vectors), -1, dtype=np.int64)
    for g, rows in enumerate(duplicate_groups(pairs, len(vectors))):
        out[rows] = g
    return out
