"""Multi-label tagging metrics: per-class AP, mAP, CP/CR/CF1 and OP/OR/OF1, top-k and tuned thresholds.

Inputs are ``scores (N, C)`` (probabilities, or any scores whose order means confidence) and ``targets (N, C)``
with ``1`` = present, ``0`` = absent and ``-1`` = unknown (the class was not annotated for that image). Unknown
entries are left out of every metric of their class: they are neither positives nor negatives, and a
prediction that lands on one is neither right nor wrong.

Numpy only (torch tensors are accepted and copied to numpy), so the metrics also run where torch is absent.
Every function sorts each class once, in ``O(N log N)`` per class, with no Python loop over classes or
thresholds.

References:

* AP as in sklearn's ``average_precision_score``: ``AP = Σ_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds ``n``, so tied scores enter together (no interpolation).
* CP, CR, CF1, OP, OR, OF1 and the top-3 protocol: Chen et al., "Multi-Label Image Recognition with Graph
  Convolutional Networks" (ML-GCN), CVPR 2019, §4.1, https://arxiv.org/abs/1904.03582; also used by
  Ridnik et al., "Asymmetric Loss for Multi-Label Classification" (ASL), ICCV 2021.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from frugalvision.metrics._arrays import score_matrix
from frugalvision.metrics._arrays import to_numpy as _to_numpy

__all__ = [
    "average_precision_per_class",
    "mean_average_precision",
    "multilabel_metrics",
    "per_class_report",
    "tune_thresholds",
]

_KEYS = ("cp", "cr", "cf1", "op", "or", "of1")


def _check(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the inputs; return float64 scores, ``known`` and ``positive`` masks, all ``(N, C)``."""
    s = score_matrix(scores, "scores", rows="image")
    t = _to_numpy(targets, "targets")
    if t.shape != s.shape:
        raise ValueError(f"targets must have the shape of scores {s.shape}, got {t.shape}")
    t = t.astype(np.float64) if t.dtype != np.bool_ else t.astype(np.int8)
    valid = (t == 1) | (t == 0) | (t == -1)
    if not valid.all():
        bad_values = np.unique(t[~valid])[:5].tolist()
        raise ValueError(
            f"targets must hold only 1 (present), 0 (absent) or -1 (unknown), got e.g. {bad_values}"
        )
    return s, t != -1, t == 1


def _thresholds(thresholds: Any, num_classes: int) -> np.ndarray:
    """A scalar or ``(C,)`` threshold as a ``(C,)`` float64 array."""
    thr = _to_numpy(thresholds, "thresholds").astype(np.float64)
    if thr.ndim == 0:
        thr = np.full(num_classes, float(thr))
    if thr.shape != (num_classes,):
        raise ValueError(f"thresholds must be a number or have shape ({num_classes},), got shape {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds contains NaN")
    return thr


def _check_top_k(top_k: Any, num_classes: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be an int in [1, {num_classes}] (the number of classes), got {top_k!r}")
    return int(top_k)


class _Ranking:
    """Each class's known entries sorted by decreasing score, as ``(C, N)`` arrays.

    Unknown entries get the score ``-inf`` and no weight, so they sit at the end and change no count.
    ``last[c, i]`` marks the last entry of a run of tied scores: the cut points of the distinct thresholds.
    """

    def __init__(self, s: np.ndarray, known: np.ndarray, pos: np.ndarray) -> None:
        st = np.ascontiguousarray(np.where(known, s, -np.inf).T)
        order = np.argsort(-st, axis=1)  # order inside a tie run does not matter: only run ends are used
        self.scores = np.take_along_axis(st, order, axis=1)
        self.pos = np.take_along_axis(np.ascontiguousarray(pos.T), order, axis=1)
        neg = np.take_along_axis(np.ascontiguousarray((known & ~pos).T), order, axis=1)
        self.tp = np.cumsum(self.pos, axis=1, dtype=np.int64)
        self.fp = np.cumsum(neg, axis=1, dtype=np.int64)
        self.positives = self.tp[:, -1]
        last = np.ones_like(self.pos)
        last[:, :-1] = self.scores[:, :-1] != self.scores[:, 1:]
        self.last = last & np.isfinite(self.scores)

    def precision(self) -> np.ndarray:
        """``tp / (tp + fp)`` at every position (0 where nothing known is above it)."""
        predicted = self.tp + self.fp
        return np.divide(self.tp, predicted, out=np.zeros(self.tp.shape), where=predicted > 0)


def _ap(ranking: _Ranking) -> np.ndarray:
    # At each cut n (last entry of a tie run), R_n - R_{n-1} = (tp_n - tp_{n-1}) / P: the positives of the run.
    tp_at_cuts = np.where(ranking.last, ranking.tp, 0)
    before = np.zeros_like(tp_at_cuts)
    before[:, 1:] = np.maximum.accumulate(tp_at_cuts, axis=1)[:, :-1]  # tp at the previous cut (tp grows)
    new_positives = np.where(ranking.last, ranking.tp - before, 0)
    summed = (new_positives * ranking.precision()).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ranking.positives > 0, summed / ranking.positives, np.nan)


def average_precision_per_class(scores: Any, targets: Any) -> np.ndarray:
    """Average precision of each class over its known entries.

    ``AP_c = Σ_n (R_n - R_{n-1}) P_n`` with ``P_n``, ``R_n`` the precision and recall when the images scoring at
    least the n-th highest distinct score are predicted positive (tied scores form one step). This is
    sklearn's ``average_precision_score`` of column ``c`` restricted to the rows where ``targets[:, c] != -1``.

    Args:
        scores: ``(N, C)`` scores (tensor or array); higher means more confident.
        targets: ``(N, C)`` with 1 (present), 0 (absent), -1 (unknown).

    Returns:
        ``(C,)`` float64 AP in [0, 1]; ``nan`` for a class with no known positive.

    Raises:
        ValueError: shape mismatch, NaN/inf scores, targets outside {1, 0, -1}.
    """
    return _ap(_Ranking(*_check(scores, targets)))


def _macro(values: np.ndarray, valid: np.ndarray, name: str) -> float:
    if not valid.any():
        warnings.warn(f"{name}: no class has a known positive; returning nan", RuntimeWarning, stacklevel=3)
        return float("nan")
    return float(values[valid].mean())


def mean_average_precision(scores: Any, targets: Any) -> float:
    """mAP: the mean of :func:`average_precision_per_class` over the classes with at least one known positive.

    Same as torchmetrics' ``MultilabelAveragePrecision(average="macro", ignore_index=-1)`` when every class has
    a known positive (torchmetrics counts a class without positives as AP 0; here it is left out).
    ``nan`` (with a warning) if no class has a known positive.
    """
    ap = average_precision_per_class(scores, targets)
    return _macro(ap, ~np.isnan(ap), "mean_average_precision")


def tune_thresholds(scores: Any, targets: Any, *, default: float = 0.5) -> np.ndarray:
    """Per-class threshold maximising F1 on these (validation) scores; predict ``score >= threshold``.

    For each class, every cut between two consecutive distinct known scores is tried; the best one (the
    highest threshold among equal F1) is returned as the midpoint between the lowest score kept and the next
    lower known score, so that a new score between the two is decided by proximity rather than by which side
    the validation set happened to end on. If the best cut keeps every known entry, the threshold is the
    lowest known score. ``F1 = 2 TP / (2 TP + FP + FN)``.

    Args:
        scores: ``(N, C)`` validation scores.
        targets: ``(N, C)`` with 1, 0, -1 (unknown entries are ignored).
        default: threshold of a class with no known positive.

    Returns:
        ``(C,)`` float64 thresholds.
    """
    ranking = _Ranking(*_check(scores, targets))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2.0 * ranking.tp / (ranking.tp + ranking.fp + ranking.positives[:, None])
    best = np.argmax(np.where(ranking.last, f1, -1.0), axis=1)  # first maximum: the highest threshold
    rows = np.arange(len(best))
    kept = ranking.scores[rows, best]
    following = np.full(len(best), -np.inf)
    inside = best + 1 < ranking.scores.shape[1]
    following[inside] = ranking.scores[rows[inside], best[inside] + 1]  # -inf past the last known entry
    with np.errstate(invalid="ignore"):
        middle = following + (kept - following) / 2.0
    # Two adjacent floats have no float between them: then the kept score itself is the threshold.
    thr = np.where(np.isfinite(following) & (middle > following), middle, kept)
    return np.where(ranking.positives > 0, thr, float(default))


def _counts(pred: np.ndarray, known: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class TP, FP, FN over the known entries."""
    pred = pred & known
    tp = (pred & pos).sum(axis=0)
    fp = (pred & ~pos).sum(axis=0)
    fn = (~pred & pos).sum(axis=0)
    return tp, fp, fn


def _ratio(num: np.ndarray | float, den: np.ndarray | float, empty: float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty), where=den > 0)


def _harmonic(p: float, r: float) -> float:
    if np.isnan(p) or np.isnan(r):
        return float("nan")
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _summary(pred: np.ndarray, known: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    tp, fp, fn = _counts(pred, known, pos)
    has_pos = (tp + fn) > 0
    cp = _macro(_ratio(tp, tp + fp, 0.0), has_pos, "cp")
    cr = _macro(_ratio(tp, tp + fn, 0.0), has_pos, "cr")
    op = float(_ratio(tp.sum(), (tp + fp).sum(), 0.0))
    orc = float(_ratio(tp.sum(), (tp + fn).sum(), np.nan))
    return {"cp": cp, "cr": cr, "cf1": _harmonic(cp, cr), "op": op, "or": orc, "of1": _harmonic(op, orc)}


def multilabel_metrics(
    scores: Any,
    targets: Any,
    *,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    top_k: int = 3,
) -> dict[str, float]:
    """mAP and the ML-GCN / ASL precision-recall summary, at thresholds and for top-k prediction.

    At the thresholds, class ``c`` is predicted for an image when ``scores[:, c] >= thresholds[c]``. For top-k,
    each image predicts its ``top_k`` highest-scoring classes (ties: lower class index first), chosen among all
    C classes; a prediction on an unknown entry is not counted. (ML-GCN's code also drops a top-k class whose
    logit is below 0; here the top-k prediction ignores the thresholds.)

    With ``TP_c, FP_c, FN_c`` counted over the known entries of class ``c`` (ML-GCN §4.1):

    * ``cp`` = mean over classes of ``TP_c / (TP_c + FP_c)``, a class with no prediction counting as 0
      (sklearn's ``zero_division=0``); ``cr`` = mean of ``TP_c / (TP_c + FN_c)``; ``cf1 = 2 cp cr / (cp + cr)``
      (the harmonic mean of the averages, not the mean of per-class F1). The class means run over the classes
      with at least one known positive, as for ``map``; with every class having one, ``cp`` and ``cr`` equal
      sklearn's macro ``precision_score`` / ``recall_score(zero_division=0)``.
    * ``op`` = ``Σ TP / Σ (TP + FP)``, ``or`` = ``Σ TP / Σ (TP + FN)`` pooled over all classes and known entries
      (sklearn's micro average), ``of1 = 2 op or / (op + or)``.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N, C)`` with 1, 0, -1.
        thresholds: one threshold for all classes or ``(C,)`` per class (e.g. from :func:`tune_thresholds`).
        top_k: classes predicted per image for the ``@top<k>`` keys, in ``[1, C]``.

    Returns:
        ``{"map", "cp", "cr", "cf1", "op", "or", "of1"}`` and the same six with the suffix ``@top<k>``
        (e.g. ``"cf1@top3"``), as Python floats (``nan`` where no class has a known positive).

    Raises:
        ValueError: bad shapes or values of ``scores``, ``targets``, ``thresholds`` or ``top_k``.
    """
    s, known, pos = _check(scores, targets)
    thr = _thresholds(thresholds, s.shape[1])
    k = _check_top_k(top_k, s.shape[1])
    ap = _ap(_Ranking(s, known, pos))
    out = {"map": _macro(ap, ~np.isnan(ap), "map")}
    out.update(_summary(s >= thr[None, :], known, pos))
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred_k = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(pred_k, top, True, axis=1)
    out.update({f"{key}@top{k}": v for key, v in _summary(pred_k, known, pos).items()})
    return out


def per_class_report(
    scores: Any,
    targets: Any,
    classes: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
) -> list[dict[str, Any]]:
    """One row per class for report tables.

    Returns:
        ``[{"class", "ap", "precision", "recall", "f1", "threshold", "positives"}, ...]`` in class order:
        AP over the known entries, precision / recall / F1 at ``score >= threshold`` (precision 0 when nothing
        is predicted; recall, F1 and AP ``nan`` without known positives) and the number of known positives.

    Raises:
        ValueError: as :func:`multilabel_metrics`, or ``classes`` not one name per column of ``scores``.
    """
    s, known, pos = _check(scores, targets)
    if isinstance(classes, str) or len(classes) != s.shape[1]:
        raise ValueError(f"classes must name each of the {s.shape[1]} columns of scores, got {classes!r:.80}")
    thr = _thresholds(thresholds, s.shape[1])
    ap = _ap(_Ranking(s, known, pos))
    tp, fp, fn = _counts(s >= thr[None, :], known, pos)
    precision = _ratio(tp, tp + fp, 0.0)
    recall = _ratio(tp, tp + fn, np.nan)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, 0.0)
    f1[(tp + fn) == 0] = np.nan
    return [
        {
            "class": str(name),
            "ap": float(ap[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "threshold": float(thr[c]),
            "positives": int(tp[c] + fn[c]),
        }
        for c, name in enumerate(classes)
    ]
