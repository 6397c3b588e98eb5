"""Single-label classification metrics and calibration against scikit-learn, torchmetrics and float64 references."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    top_k_accuracy_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from frugalvision.metrics import (
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    reliability_bins,
    softmax,
    topk_accuracy,
)


def make_logits(n: int, c: int, seed: int, *, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels and logits that favour the label (continuous: no ties)."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, c + 1)
    labels = rng.choice(c, size=n, p=freq / freq.sum())
    logits = rng.normal(0.0, 1.0, (n, c))
    logits[np.arange(n), labels] += rng.normal(1.0, 1.0, n)
    return scale * logits, labels


def ref_softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Float64 softmax via torch (independent of the code under test)."""
    return torch.softmax(torch.from_numpy(z).double() / t, dim=1).numpy()


def ref_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Float64 NLL via torch's cross-entropy."""
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(z).double() / t, torch.from_numpy(y)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_accuracy_equals_sklearn_and_torchmetrics(seed: int) -> None:
    logits, labels = make_logits(500, 12, seed)
    got = topk_accuracy(logits, labels, k=(1, 3, 5))
    for k in (1, 3, 5):
        assert got[f"top{k}"] == pytest.approx(
            top_k_accuracy_score(labels, logits, k=k, labels=np.arange(12)), abs=1e-12
        )
    tm = MulticlassAccuracy(num_classes=12, top_k=5, average="micro")
    assert got["top5"] == pytest.approx(
        float(tm(torch.from_numpy(logits), torch.from_numpy(labels))), abs=1e-6
    )
    tm1 = MulticlassAccuracy(num_classes=12, top_k=1, average="micro")
    assert got["top1"] == pytest.approx(
        float(tm1(torch.from_numpy(logits), torch.from_numpy(labels))), abs=1e-6
    )
    # torch tensors are accepted; default k=(1, 5); a single int k
    assert topk_accuracy(torch.from_numpy(logits).float(), torch.from_numpy(labels)) == pytest.approx(
        {"top1": got["top1"], "top5": got["top5"]}, abs=1e-12
    )
    assert topk_accuracy(logits, labels, k=3) == {"top3": got["top3"]}


def test_topk_ties_go_to_the_lower_class_index_and_k_at_least_c_is_a_hit() -> None:
    scores = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]])
    labels = np.array([0, 1, 2, 1])
    # rank = #strictly higher + #equal with lower index: row0 0, row1 1, row2 2, row3 1
    got = topk_accuracy(scores, labels, k=(1, 2, 3, 10))
    assert got == {"top1": 0.25, "top2": 0.75, "top3": 1.0, "top10": 1.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_accuracy_macro_f1_confusion_equal_sklearn(seed: int) -> None:
    logits, labels = make_logits(400, 9, seed)
    preds = logits.argmax(axis=1)
    assert balanced_accuracy(labels, logits) == pytest.approx(
        balanced_accuracy_score(labels, preds), abs=1e-12
    )
    assert balanced_accuracy(labels, preds, 9) == pytest.approx(
        balanced_accuracy_score(labels, preds), abs=1e-12
    )
    assert macro_f1(labels, logits) == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-12)
    np.testing.assert_array_equal(
        confusion_matrix(labels, preds, 9), sk_confusion_matrix(labels, preds, labels=np.arange(9))
    )
    np.testing.assert_array_equal(confusion_matrix(labels, logits), confusion_matrix(labels, preds, 9))
    rep = classification_report(labels, logits)
    sk_p = f1_score(labels, preds, average=None, labels=np.arange(9))
    np.testing.assert_allclose([r["f1"] for r in rep["per_class"]], sk_p, atol=1e-12)
    assert rep["macro_f1"] == pytest.approx(macro_f1(labels, preds, 9))
    assert rep["accuracy"] == pytest.approx(float((preds == labels).mean()))
    assert sum(r["support"] for r in rep["per_class"]) == 400 == rep["num_samples"]


def test_class_without_samples() -> None:
    # class 3 has no samples but is predicted once (F1 0, recall nan); class 4 has neither (F1 nan, left out)
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 2, 3])
    with pytest.warns(UserWarning):  # sklearn warns: y_pred contains classes not in y_true
        assert balanced_accuracy(labels, preds, 5) == pytest.approx(balanced_accuracy_score(labels, preds))
    assert macro_f1(labels, preds, 5) == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-12)
    assert macro_f1(labels, preds, 5) == pytest.approx((2 / 3 + 0.8 + 0.8 + 0.0) / 4)
    rep = classification_report(labels, preds, 5, class_names=["a", "b", "c", "d", "e"])
    d, e = rep["per_class"][3], rep["per_class"][4]
    assert d["class"] == "d" and d["support"] == 0 and math.isnan(d["recall"])
    assert d["precision"] == 0.0 and d["f1"] == 0.0
    assert e["support"] == 0 and all(math.isnan(e[key]) for key in ("precision", "recall", "f1"))
    assert np.asarray(rep["confusion_matrix"]).shape == (5, 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_torchmetrics_and_a_float64_loop(seed: int) -> None:
    logits, labels = make_logits(600, 10, seed)
    probs = ref_softmax(logits)
    got = expected_calibration_error(probs, labels, n_bins=15)
    tm = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    assert got == pytest.approx(float(tm(torch.from_numpy(probs), torch.from_numpy(labels))), abs=1e-6)
    # the equation with an explicit loop over bins (lo, hi]
    conf, correct = probs.max(1), probs.argmax(1) == labels
    ref = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ref += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
    assert got == pytest.approx(ref, abs=1e-12)
    b = reliability_bins(probs, labels, 15)
    assert b["count"].sum() == 600 and len(b["confidence"]) == 15
    empty = b["count"] == 0
    assert np.isnan(b["accuracy"][empty]).all() and not np.isnan(b["accuracy"][~empty]).any()
    filled = ~empty
    assert (
        (b["confidence"][filled] > b["lower"][filled]) & (b["confidence"][filled] <= b["upper"][filled])
    ).all()


def test_ece_perfectly_calibrated_and_fully_overconfident() -> None:
    # confidence 1 and always right -> 0; confidence 1 and always wrong -> 1
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 0])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 2, 0, 1])) == 1.0


def test_softmax_is_stable_and_matches_torch() -> None:
    z = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    p = softmax(z)
    np.testing.assert_allclose(p, ref_softmax(z), atol=1e-15)
    np.testing.assert_allclose(softmax(z, temperature=2.5), ref_softmax(z, 2.5), atol=1e-15)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(softmax(z[0]), p[0])


def test_temperature_scaling_fixes_an_overconfident_case() -> None:
    # logits x8 of a moderately accurate classifier: overconfident, best T is well above 1
    logits, labels = make_logits(800, 10, seed=7, scale=8.0)
    t = fit_temperature(logits, labels)
    assert t > 1.5
    assert ref_nll(logits, labels, t) < ref_nll(logits, labels, 1.0) - 0.1
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))
    ece_before = expected_calibration_error(softmax(logits), labels)
    ece_after = expected_calibration_error(softmax(logits, t), labels)
    assert ece_after < ece_before
    # brute-force grid minimum of the float64 NLL (torch cross-entropy): a coarse log grid, then a fine one
    coarse = np.exp(np.linspace(np.log(0.5), np.log(50.0), 401))
    i = int(np.argmin([ref_nll(logits, labels, g) for g in coarse]))
    fine = np.linspace(coarse[max(i - 2, 0)], coarse[min(i + 2, 400)], 2001)
    t_grid = fine[int(np.argmin([ref_nll(logits, labels, g) for g in fine]))]
    assert t == pytest.approx(t_grid, abs=1e-3)
    # tensors accepted, same answer
    assert fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(t, abs=1e-9)


def test_temperature_of_an_underconfident_case_is_below_one() -> None:
    logits, labels = make_logits(800, 10, seed=3, scale=0.3)
    t = fit_temperature(logits, labels)
    assert t < 1.0
    grid = np.exp(np.linspace(np.log(0.01), np.log(2.0), 4001))
    nll = [ref_nll(logits, labels, g) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: topk_accuracy(np.zeros((4, 3)), np.zeros((4, 1), dtype=int)),
            r"labels must be 1-D \(N,\), got \(4, 1\)",
        ),
        (
            lambda: topk_accuracy(np.zeros((4, 3)), np.array([0, 1, 2, 3])),
            r"labels must be class indices in \[0, 3\), got 3",
        ),
        (
            lambda: topk_accuracy(np.zeros((4, 3)), np.array([0, -1, 2, 0])),
            r"labels must be class indices .* got -1",
        ),
        (lambda: topk_accuracy(np.zeros((4, 3)), np.array([0, 1, 2])), r"labels must have 4 entries"),
        (lambda: topk_accuracy(np.zeros((4, 3)), np.array([0.0, 1, 2, 0])), r"labels must hold integer"),
        (lambda: topk_accuracy(np.zeros(4), np.array([0, 1, 2, 0])), r"logits_or_probs must be 2-D"),
        (lambda: topk_accuracy(np.full((2, 3), np.nan), np.array([0, 1])), r"logits_or_probs contains 6 NaN"),
        (lambda: topk_accuracy(np.zeros((2, 3)), np.array([0, 1]), k=0), r"k must be a positive integer"),
        (
            lambda: fit_temperature(np.array([[0.0, np.inf]]), np.array([0])),
            r"logits contains 1 NaN or infinite",
        ),
        (lambda: fit_temperature(np.zeros((2, 3)), np.array([0, 5])), r"labels must be class indices"),
        (lambda: softmax(np.zeros((2, 3)), temperature=0.0), r"temperature must be a finite number > 0"),
        (lambda: softmax(np.array([[np.nan, 0.0]])), r"logits contains 1 NaN"),
        (
            lambda: expected_calibration_error(np.full((2, 3), 0.5), np.array([0, 1])),
            r"probs rows must sum to 1",
        ),
        (
            lambda: expected_calibration_error(np.array([[1.5, -0.5]]), np.array([0])),
            r"probs must lie in \[0, 1\]",
        ),
        (
            lambda: reliability_bins(np.eye(2), np.array([0, 1]), n_bins=0),
            r"n_bins must be a positive integer",
        ),
        (
            lambda: confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3),
            r"preds must be class indices in \[0, 3\)",
        ),
        (
            lambda: confusion_matrix(np.array([0, 1]), np.zeros((2, 3)), 4),
            r"num_classes is 4 but preds has 3",
        ),
        (lambda: macro_f1(np.array([[0, 1]]), np.array([0, 1])), r"labels must be 1-D"),
        (
            lambda: macro_f1(np.array([0, 1]), np.zeros((2, 2, 2))),
            r"preds must be 1-D \(N,\) class indices or 2-D",
        ),
        (lambda: balanced_accuracy(np.array([0, 1]), np.array(["a", "b"])), r"preds must hold numbers"),
        (
            lambda: classification_report(np.array([0, 1]), np.array([0, 1]), 2, ["x"]),
            r"class_names must have 2",
        ),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
