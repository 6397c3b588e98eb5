"""Single-label classification metrics and calibration: top-k / balanced accuracy, macro-F1, confusion matrix,
expected calibration error, reliability bins, softmax and temperature scaling.

Inputs are ``logits (N, C)`` or ``probs (N, C)`` (one row per image, one column per class), ``labels (N,)``
(integer class indices in ``[0, C)``) and, for the count-based metrics, ``preds`` either as ``(N,)`` predicted
indices or as ``(N, C)`` scores whose row-wise argmax is the prediction.

Numpy only (torch tensors are accepted and copied to numpy), so the metrics also run where torch is absent;
:func:`fit_temperature` also needs scipy (imported when called).
Everything is vectorised, with no Python loop over images, classes or bins; memory is ``O(N C + C^2)``.

Conventions (stated once, used everywhere):

* **Ties** in scores are broken toward the lower class index: the prediction is ``argmax`` (its first maximum),
  and for top-k the rank of the true class ``y`` is ``#{c : s_c > s_y} + #{c < y : s_c = s_y}``, so a sample is a
  top-k hit iff that rank is ``< k``. (This is a stable descending sort; ``k >= C`` is always a hit.)
* **A class with no samples** (support 0) has an undefined recall: it is ``nan`` in the per-class report and
  left out of the balanced accuracy (the mean recall over the classes that occur in ``labels``, as scikit-learn's
  ``balanced_accuracy_score``). A class never predicted has an undefined precision (``nan`` in the report). Its
  F1 is ``2 TP / (2 TP + FP + FN)``, which is ``0`` when it has samples or predictions but no hit, and undefined
  (``nan``) only when it has neither samples nor predictions; the macro-F1 averages the defined ones, which is
  scikit-learn's ``f1_score(average="macro")`` with its default label set (the classes in labels or preds).

References:

* ECE and reliability diagrams: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, §2,
  https://arxiv.org/abs/1706.04599: with ``M`` equal-width bins ``B_m = ((m-1)/M, m/M]`` of the top-1
  confidence ``p̂_i = max_c p_ic``, ``ECE = Σ_m |B_m|/N · |acc(B_m) - conf(B_m)|``.
* Temperature scaling: the same paper, §4.2: ``q_i = softmax(z_i / T)`` with the one scalar ``T > 0`` that
  minimises the negative log-likelihood on a validation split; it never changes the argmax.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from frugalvision.metrics._arrays import score_matrix
from frugalvision.metrics._arrays import to_numpy as _to_numpy

__all__ = [
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "macro_f1",
    "reliability_bins",
    "softmax",
    "topk_accuracy",
]

_T_MIN, _T_MAX = 1e-2, 1e2  # bounds of the fitted temperature


def _indices(x: Any, name: str, n: int | None, num_classes: int | None) -> np.ndarray:
    """Validated int64 ``(N,)`` class indices in ``[0, num_classes)`` (upper bound unchecked if ``None``)."""
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per row of the scores), got {a.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one entry, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bad = lo if lo < 0 else hi
        upper = "C" if num_classes is None else str(num_classes)
        raise ValueError(f"{name} must be class indices in [0, {upper}), got {bad}")
    return a


def _num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _labels_preds(labels: Any, preds: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated ``(labels, preds, C)``; ``preds (N, C)`` scores become their row-wise argmax."""
    p = _to_numpy(preds, "preds")
    if p.ndim == 2:
        s = score_matrix(p, "preds")
        if num_classes is not None and _num_classes(num_classes) != s.shape[1]:
            raise ValueError(f"num_classes is {num_classes} but preds has {s.shape[1]} columns")
        c = s.shape[1]
        pred = s.argmax(axis=1)
    elif p.ndim == 1:
        pred = _indices(p, "preds", None, None if num_classes is None else _num_classes(num_classes))
        c = _num_classes(num_classes) if num_classes is not None else 0
    else:
        raise ValueError(f"preds must be 1-D (N,) class indices or 2-D (N, C) scores, got shape {p.shape}")
    y = _indices(labels, "labels", pred.shape[0], c or None)
    if not c:
        c = int(max(y.max(), pred.max())) + 1
    return y, pred.astype(np.int64), c


def confusion_matrix(labels: Any, preds: Any, num_classes: int | None = None) -> np.ndarray:
    """The ``(C, C)`` int64 confusion matrix: entry ``[i, j]`` counts the samples of true class ``i`` predicted
    as ``j`` (rows are labels, columns predictions, as scikit-learn's ``confusion_matrix``).

    ``preds`` is ``(N,)`` indices or ``(N, C)`` scores (argmax, first maximum on ties). ``num_classes``
    defaults to ``C`` of the scores, else to ``max(labels, preds) + 1``; pass it so that classes without samples
    or predictions still get their (zero) row and column.
    """
    y, p, c = _labels_preds(labels, preds, num_classes)
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def _per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix; ``nan`` where undefined."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def balanced_accuracy(labels: Any, preds: Any, num_classes: int | None = None) -> float:
    """Mean per-class recall ``(1/|K|) Σ_{c∈K} TP_c / n_c`` over the classes ``K`` that have samples.

    Classes with no samples are left out (their recall is undefined), as in scikit-learn's
    ``balanced_accuracy_score``. ``preds``: ``(N,)`` indices or ``(N, C)`` scores (argmax).
    """
    recall = _per_class(confusion_matrix(labels, preds, num_classes))["recall"]
    return float(np.nanmean(recall))


def macro_f1(labels: Any, preds: Any, num_classes: int | None = None) -> float:
    """Unweighted mean of the per-class ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.

    Classes with neither samples nor predictions (F1 undefined) are left out; a class with samples or
    predictions but no hit counts as ``0`` (scikit-learn's ``f1_score(average="macro")``).
    """
    f1 = _per_class(confusion_matrix(labels, preds, num_classes))["f1"]
    return float(np.nanmean(f1))


def classification_report(
    labels: Any,
    preds: Any,
    num_classes: int | None = None,
    class_names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """A scikit-learn ``classification_report``-like dict.

    Returns ``{"accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "num_samples",
    "per_class": [{"class", "precision", "recall", "f1", "support"}, ...], "confusion_matrix": (C, C) list}``.
    Undefined per-class values (no samples: recall; no predictions: precision; neither: F1) are ``nan`` and left
    out of the macro means.
    """
    cm = confusion_matrix(labels, preds, num_classes)
    c = cm.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else [str(n) for n in class_names]
    if len(names) != c:
        raise ValueError(f"class_names must have {c} names (one per class), got {len(names)}")
    pc = _per_class(cm)
    n = int(cm.sum())
    per_class = [
        {
            "class": names[i],
            "precision": float(pc["precision"][i]),
            "recall": float(pc["recall"][i]),
            "f1": float(pc["f1"][i]),
            "support": int(pc["support"][i]),
        }
        for i in range(c)
    ]

    def mean(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return {
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": mean(pc["recall"]),
        "macro_precision": mean(pc["precision"]),
        "macro_recall": mean(pc["recall"]),
        "macro_f1": mean(pc["f1"]),
        "num_samples": n,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def topk_accuracy(logits_or_probs: Any, labels: Any, k: int | Iterable[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for each ``k``: the fraction of rows whose true class is among the ``k`` highest scores.

    ``logits_or_probs (N, C)``, ``labels (N,)``. Returns ``{"top1": ..., "top5": ...}``. Ties are broken toward
    the lower class index (see the module docstring); ``k >= C`` gives ``1.0``.
    """
    s = score_matrix(logits_or_probs, "logits_or_probs")
    n, c = s.shape
    y = _indices(labels, "labels", n, c)
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in ks):
        raise ValueError(f"k must be a positive integer or a non-empty sequence of them, got {k!r}")
    true = s[np.arange(n), y][:, None]
    cols = np.arange(c)[None, :]
    rank = (s > true).sum(axis=1) + ((s == true) & (cols < y[:, None])).sum(axis=1)
    return {f"top{int(v)}": float((rank < v).mean()) for v in ks}


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(z / T)_c = exp(z_c/T - m) / Σ_j exp(z_j/T - m)`` with ``m = max_j z_j/T`` (no overflow),
    in float64. ``logits (N, C)`` (or ``(C,)``), ``temperature T > 0``."""
    z = _to_numpy(logits, "logits")
    if z.ndim not in (1, 2) or z.size == 0:
        raise ValueError(f"logits must be 1-D (C,) or 2-D (N, C) and non-empty, got shape {z.shape}")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise ValueError(f"logits contains {int((~np.isfinite(z)).sum())} NaN or infinite value(s)")
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    z = z / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _probs(probs: Any) -> np.ndarray:
    p = score_matrix(probs, "probs")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]; pass softmax(logits)"
        )
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if bad.size:
        raise ValueError(
            f"probs rows must sum to 1, row {int(bad[0])} sums to {sums[bad[0]]:.6g}; pass softmax(logits)"
        )
    return p


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics of the top-1 confidence for a reliability diagram (Guo et al. 2017).

    ``probs (N, C)`` (rows sum to 1), ``labels (N,)``. Bin ``m`` (0-based) holds the rows whose confidence
    ``p̂ = max_c p_c`` lies in ``(m/M, (m+1)/M]`` (bin 0 also takes ``p̂ = 0``). Returns float64 arrays of length
    ``M``: ``lower``, ``upper`` (edges), ``confidence`` (mean ``p̂``), ``accuracy`` (fraction whose argmax, first
    maximum on ties, is the label), both ``nan`` for an empty bin, and int64 ``count``.
    """
    p = _probs(probs)
    n, c = p.shape
    y = _indices(labels, "labels", n, c)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "confidence": np.where(count > 0, mean_conf, np.nan),
        "accuracy": np.where(count > 0, acc, np.nan),
        "count": count.astype(np.int64),
    }


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """``ECE = Σ_m |B_m|/N · |acc(B_m) - conf(B_m)|`` over ``n_bins`` equal-width bins of the top-1 confidence
    (Guo et al., ICML 2017); empty bins contribute nothing. ``probs (N, C)`` rows sum to 1, ``labels (N,)``."""
    b = reliability_bins(probs, labels, n_bins)
    w = b["count"] / b["count"].sum()
    gap = np.abs(b["accuracy"] - b["confidence"])
    return float(np.sum(np.where(b["count"] > 0, w * gap, 0.0)))


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean ``-log softmax(z / t)_y`` in float64 via log-sum-exp."""
    s = z / t
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature ``T`` of temperature scaling (Guo et al., ICML 2017, §4.2):

    ``T* = argmin_{T>0} (1/N) Σ_i -log softmax(z_i / T)_{y_i}``, in float64.

    The NLL is convex in ``1/T`` (a log-sum-exp of linear functions minus a linear one), hence unimodal in
    ``log T``, which is optimised by bounded Brent search (``scipy.optimize.minimize_scalar``) on
    ``[log 0.01, log 100]``. If the minimum lies outside (e.g. perfectly separated training logits, where the NLL
    keeps falling as ``T → 0``), the nearer bound is returned. Dividing by ``T > 0`` never changes the argmax.
    ``logits (N, C)``, ``labels (N,)``.
    """
    from scipy.optimize import minimize_scalar  # here, so the other metrics need numpy only

    z = score_matrix(logits, "logits")
    y = _indices(labels, "labels", z.shape[0], z.shape[1])
    res = minimize_scalar(
        lambda u: _nll(z, y, float(np.exp(u))),
        bounds=(np.log(_T_MIN), np.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(np.exp(res.x))
