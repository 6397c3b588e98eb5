"""Scores of frozen features on labelled images: how well a backbone fits a data set before any training.

For features ``F (N, D)`` of the labelled images and their classes ``y (N,)``:

* ``knn_recall_at_1`` and ``map_at_r``: leave-one-out retrieval with cosine similarity, every image a query
  against all the others (:func:`frugalvision.metrics.retrieval_metrics`; MAP@R from Musgrave et al., "A Metric
  Learning Reality Check", ECCV 2020). Recall@1 is the accuracy of a 1-nearest-neighbour classifier.
* ``linear_probe``: mean accuracy of a multinomial logistic regression on standardised features over stratified
  ``k``-fold cross-validation (scikit-learn's ``StandardScaler`` + ``LogisticRegression``, L2 penalty
  ``C = 1``); ``k = min(folds, smallest class size)``, folds shuffled with ``seed``.
* ``logme``: :func:`frugalvision.metrics.logme` (You et al., ICML 2021) on the raw features.

Higher is better for all four. Retrieval and LogME are deterministic; the linear probe is for a fixed ``seed``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from frugalvision.errors import DataError, DataWarning
from frugalvision.metrics import logme, retrieval_metrics

__all__ = ["SCORES", "check_labels", "feature_scores", "linear_probe_accuracy"]

#: The quality scores :func:`feature_scores` returns, in table order.
SCORES: tuple[str, ...] = ("knn_recall_at_1", "map_at_r", "linear_probe", "logme")


def check_labels(labels: Sequence[str] | np.ndarray, source: str = "the data set") -> np.ndarray:
    """Class names ``(N,)`` -> class ids ``(N,)``, refusing what no score can use.

    Raises:
        DataError: fewer than 2 classes, or a class with a single image (leave-one-out retrieval and
            cross-validation need a second image of each class); the message names the classes.
    """
    names = np.asarray([str(x) for x in labels])
    classes, ids, counts = np.unique(names, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"{source} has {len(classes)} class(es) with labelled images; selecting a backbone needs at least 2"
        )
    single = classes[counts < 2].tolist()
    if single:
        shown = ", ".join(single[:10]) + (f" and {len(single) - 10} more" if len(single) > 10 else "")
        raise DataError(
            f"{source}: class(es) {shown} have a single image; every class needs at least 2 (add images, or "
            "remove the class)"
        )
    return ids.reshape(-1).astype(np.int64)


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, max_iter: int = 1000
) -> float:
    """Cross-validated accuracy of a logistic regression on the frozen ``features (N, D)`` for ``labels (N,)``.

    Stratified ``k``-fold with ``k = min(folds, smallest class size)`` (at least 2), shuffled with ``seed``;
    each fold fits ``StandardScaler`` then ``LogisticRegression(C=1.0, max_iter=max_iter)`` on the other folds.

    Returns:
        The mean of the folds' accuracies, in [0, 1].
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    smallest = int(np.bincount(labels).min(initial=0) if labels.size else 0)
    k = max(2, min(folds, smallest))
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", ConvergenceWarning
        )  # the accuracy is what is reported, converged or not
        scores = cross_val_score(model, features, labels, cv=split, scoring="accuracy")
    return float(np.mean(scores))


def feature_scores(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, name: str = "model"
) -> dict[str, float | None]:
    """All of :data:`SCORES` for ``features (N, D)`` and class ids ``labels (N,)`` (from :func:`check_labels`).

    ``logme`` is ``None`` (with a :class:`~frugalvision.errors.DataWarning` naming ``name``) where LogME has no
    maximum: labels that are an exact linear function of the features with ``N <= D`` and ``F Fᵀ`` singular
    (e.g. duplicated images).
    """
    feats = np.asarray(features, dtype=np.float32)
    retrieval = retrieval_metrics(feats, labels, k=1, metric="cosine", include=("recall", "map_at_r"))
    out: dict[str, Any] = {
        "knn_recall_at_1": float(retrieval["recall@1"]),
        "map_at_r": float(retrieval["map@r"]),
        "linear_probe": linear_probe_accuracy(feats, labels, folds=folds, seed=seed),
    }
    try:
        out["logme"] = logme(feats, labels)
    except ValueError as e:
        warnings.warn(f"{name}: LogME left out: {e}", DataWarning, stacklevel=2)
        out["logme"] = None
    return out
