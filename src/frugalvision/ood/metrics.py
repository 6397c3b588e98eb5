"""Detection metrics for OOD scores: AUROC, AUPR (ID or OOD as positive) and FPR at 95 % TPR.

ID is the positive class and higher scores mean "more ID" (the convention of :mod:`frugalvision.ood.scores`).
The definitions are those of scikit-learn, computed here in float64 without it:

* **AUROC**: probability that a random ID sample scores above a random OOD one, ties counting one half
  (Mann-Whitney U / (n_id · n_ood)) = ``sklearn.metrics.roc_auc_score``.
* **AUPR-In / AUPR-Out**: average precision ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds, with ID
  as positive (scores as they are) or OOD as positive (scores negated) =
  ``sklearn.metrics.average_precision_score``.
* **FPR@95TPR**: fraction of OOD samples accepted at the highest threshold that keeps at least 95 % of the ID
  samples (``score >= t``) = the first ``fpr`` where ``tpr >= 0.95`` on ``sklearn.metrics.roc_curve``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["aupr", "auroc", "fpr_at_tpr", "ood_metrics"]


def _scores(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s)")
    return arr


def _curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct threshold, highest threshold first."""
    scores = np.concatenate([positive, negative])
    is_pos = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(is_pos)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps


def auroc(id_scores: object, ood_scores: object) -> float:
    """Area under the ROC curve, ID positive (= ``roc_auc_score``); 1.0 = perfect, 0.5 = chance."""
    pos, neg = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_scores = both[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], both.size]
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def aupr(id_scores: object, ood_scores: object, positive: str = "in") -> float:
    """Average precision with ID (``positive="in"``) or OOD (``"out"``, scores negated) as the positive class."""
    pos, neg = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    if positive == "out":
        pos, neg = -neg, -pos
    elif positive != "in":
        raise ValueError(f"positive must be 'in' or 'out', got {positive!r}")
    tps, fps = _curve(pos, neg)
    precision = tps / (tps + fps)
    recall = tps / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(id_scores: object, ood_scores: object, tpr: float = 0.95) -> float:
    """False-positive rate (OOD accepted as ID) at the first threshold whose ID true-positive rate is ``>= tpr``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    pos, neg = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    tps, fps = _curve(pos, neg)
    first = int(np.argmax(tps / pos.size >= tpr))  # the last point has TPR = 1, so one exists
    return float(fps[first] / neg.size)


def ood_metrics(id_scores: object, ood_scores: object) -> dict[str, float]:
    """``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` of one score on an ID and an OOD set."""
    return {
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr(id_scores, ood_scores, "in"),
        "aupr_out": aupr(id_scores, ood_scores, "out"),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
    }
