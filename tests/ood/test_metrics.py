"""OOD metrics equal scikit-learn's on the same scores (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from frugalvision.ood import aupr, auroc, fpr_at_tpr, ood_metrics


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 300, 2)
    decimals = int(rng.integers(0, 3))  # coarse rounding creates many ties
    s_id = np.round(rng.normal(1.0, 1.0, n_id), decimals)
    s_ood = np.round(rng.normal(0.0, 1.5, n_ood), decimals)
    y = np.r_[np.ones(n_id), np.zeros(n_ood)]
    s = np.r_[s_id, s_ood]
    m = ood_metrics(s_id, s_ood)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert fpr_at_tpr(s_id, s_ood, 0.8) == pytest.approx(fpr[np.argmax(tpr >= 0.8)], abs=1e-12)


def test_extreme_cases() -> None:
    id_s, ood_s = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    assert ood_metrics(id_s, ood_s) == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert auroc(ood_s, id_s) == 0.0 and fpr_at_tpr(ood_s, id_s) == 1.0
    same = np.zeros(5)
    assert auroc(same, same) == 0.5 and fpr_at_tpr(same, same) == 1.0
    assert aupr(same, np.zeros(15)) == pytest.approx(0.25)  # every threshold: precision = base rate


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        auroc(np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc(np.array([np.nan]), np.zeros(3))
    with pytest.raises(ValueError, match="tpr must lie"):
        fpr_at_tpr(np.zeros(2), np.zeros(2), tpr=0.0)
    with pytest.raises(ValueError, match="'in' or 'out'"):
        aupr(np.zeros(2), np.zeros(2), positive="both")
