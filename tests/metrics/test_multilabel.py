"""Multi-label metrics against sklearn, torchmetrics, brute force and hand-worked cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score
from torchmetrics.classification import MultilabelAveragePrecision

from frugalvision.metrics import (
    average_precision_per_class,
    mean_average_precision,
    multilabel_metrics,
    per_class_report,
    tune_thresholds,
)
from frugalvision.plots import save_per_class_ap_plot

THRESHOLD_KEYS = ("map", "cp", "cr", "cf1", "op", "or", "of1")


def long_tailed(
    n: int, c: int, seed: int, *, decimals: int | None = None, unknown: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores correlated with Zipf-frequency targets; ``decimals`` rounds scores (many ties)."""
    rng = np.random.default_rng(seed)
    freq = 0.4 / np.arange(1, c + 1)
    targets = (rng.random((n, c)) < freq).astype(np.int64)
    targets[0] = 1  # every class has a positive
    scores = np.clip(0.3 * targets + rng.normal(0.35, 0.2, (n, c)), 0.0, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)
    if unknown:
        targets[rng.random((n, c)) < unknown] = -1
        targets[0] = 1
    return scores, targets


def sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = []
    for c in range(scores.shape[1]):
        known = targets[:, c] != -1
        y = targets[known, c]
        out.append(average_precision_score(y, scores[known, c]) if y.any() else math.nan)
    return np.array(out)


# --------------------------------------------------------------------------------------------- AP / mAP


@pytest.mark.parametrize("decimals", [1, 2, None])
@pytest.mark.parametrize("unknown", [0.0, 0.2])
def test_ap_equals_sklearn_with_ties_and_unknowns(decimals: int | None, unknown: float) -> None:
    scores, targets = long_tailed(400, 12, seed=3, decimals=decimals, unknown=unknown)
    ap = average_precision_per_class(scores, targets)
    assert ap.shape == (12,) and ap.dtype == np.float64
    np.testing.assert_allclose(ap, sklearn_ap(scores, targets), rtol=0, atol=1e-12)


def test_ap_hand_example_with_tie_and_unknown() -> None:
    # cut at 0.9: P=1, R=1/2; cut at 0.8 (tie of a positive and a negative): P=2/3, R=1
    scores = np.array([[0.95], [0.9], [0.8], [0.8], [0.1]])
    targets = np.array([[-1], [1], [0], [1], [0]])  # the unknown 0.95 must not count
    assert average_precision_per_class(scores, targets)[0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)


def test_ap_nan_without_known_positive_and_one_when_all_positive() -> None:
    scores = np.array([[0.2, 0.3, 0.9], [0.7, 0.1, 0.4], [0.5, 0.6, 0.1]])
    targets = np.array([[0, 1, -1], [0, 1, -1], [-1, 1, 0]])
    ap = average_precision_per_class(scores, targets)
    assert math.isnan(ap[0]) and ap[1] == 1.0 and math.isnan(ap[2])


def test_ap_accepts_torch_float32_and_bool_targets() -> None:
    scores, targets = long_tailed(200, 5, seed=1, decimals=2)
    s32 = torch.from_numpy(scores.astype(np.float32)).requires_grad_()
    got = average_precision_per_class(s32, torch.from_numpy(targets.astype(bool)))
    ref = sklearn_ap(scores.astype(np.float32), targets)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_map_matches_torchmetrics_with_ignore_index() -> None:
    scores, targets = long_tailed(600, 10, seed=5, decimals=2, unknown=0.15)
    metric = MultilabelAveragePrecision(num_labels=10, average="macro", ignore_index=-1)
    ref = float(metric(torch.from_numpy(scores).float(), torch.from_numpy(targets)))
    ours = mean_average_precision(scores, targets)
    assert ours == pytest.approx(ref, abs=1e-6)  # torchmetrics works in float32
    assert ours == pytest.approx(float(np.mean(sklearn_ap(scores, targets))), abs=1e-12)


def test_map_leaves_out_classes_without_known_positive() -> None:
    scores, targets = long_tailed(300, 6, seed=2)
    targets[:, 2] = 0
    targets[:, 4] = -1
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1, 3, 5)])
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    with pytest.warns(RuntimeWarning, match="no class has a known positive"):
        assert math.isnan(mean_average_precision(scores, np.zeros_like(targets)))


# --------------------------------------------------------------------------------------------- thresholds


def f1_at(scores: np.ndarray, targets: np.ndarray, thr: float) -> float:
    """F1 of ``score >= thr`` on the known rows, written out directly."""
    known = targets != -1
    pred, pos = scores[known] >= thr, targets[known] == 1
    tp, fp, fn = np.sum(pred & pos), np.sum(pred & ~pos), np.sum(~pred & pos)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("decimals", [1, None])
def test_tuned_thresholds_reach_the_brute_force_best_f1(decimals: int | None) -> None:
    scores, targets = long_tailed(300, 8, seed=7, decimals=decimals, unknown=0.2)
    targets[:, 7] = np.where(targets[:, 7] == 1, 0, targets[:, 7])  # no known positive -> default
    thr = tune_thresholds(scores, targets, default=0.42)
    assert thr.shape == (8,) and thr[7] == 0.42
    for c in range(7):
        known = targets[:, c] != -1
        cuts = np.unique(scores[known, c])  # predict everything at or above each distinct known score
        best = max(f1_at(scores[:, c], targets[:, c], t) for t in cuts)
        assert f1_at(scores[:, c], targets[:, c], thr[c]) == pytest.approx(best, abs=1e-12)
        # the threshold lies strictly between two known scores (or on the lowest one)
        assert not np.any(scores[known, c] == thr[c]) or thr[c] == scores[known, c].min()


def test_tuned_threshold_is_the_midpoint_and_ignores_unknown_scores() -> None:
    # best F1 = 1 when 0.9 and 0.7 are kept; next lower *known* score is 0.3 (0.5 is unknown)
    scores = np.array([[0.9], [0.7], [0.5], [0.3], [0.1]])
    targets = np.array([[1], [1], [-1], [0], [0]])
    assert tune_thresholds(scores, targets)[0] == pytest.approx(0.5)
    # all known entries positive: the threshold is the lowest score, so everything stays predicted
    assert tune_thresholds(scores, np.array([[1], [1], [-1], [1], [1]]))[0] == 0.1
    # adjacent floats: no midpoint exists, the kept score itself is the threshold
    hi = 0.5
    lo = np.nextafter(hi, 0.0)
    assert tune_thresholds(np.array([[hi], [lo]]), np.array([[1], [0]]))[0] == hi


# --------------------------------------------------------------------------------------------- CP / CR / OP / OR


def mlgcn_summary(pred: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The ML-GCN equations (§4.1) in float64, one class at a time."""
    nc = np.array([np.sum(pred[:, c] & (targets[:, c] == 1)) for c in range(pred.shape[1])], float)
    npred = pred.sum(0).astype(float)
    ng = (targets == 1).sum(0).astype(float)
    cp = float(np.mean(np.where(npred > 0, nc / np.maximum(npred, 1), 0.0)))
    cr = float(np.mean(nc / ng))
    op, orc = nc.sum() / npred.sum(), nc.sum() / ng.sum()
    return {
        "cp": cp,
        "cr": cr,
        "cf1": 2 * cp * cr / (cp + cr),
        "op": op,
        "or": orc,
        "of1": 2 * op * orc / (op + orc),
    }


@pytest.mark.parametrize("per_class", [False, True])
def test_thresholded_metrics_equal_sklearn_and_mlgcn(per_class: bool) -> None:
    scores, targets = long_tailed(500, 9, seed=11, decimals=2)
    thr: float | np.ndarray = 0.5
    if per_class:
        thr = np.random.default_rng(0).uniform(0.3, 0.7, 9)
        thr[8] = 2.0  # a class that predicts nothing: precision 0
    got = multilabel_metrics(scores, targets, thresholds=thr)
    pred = scores >= np.broadcast_to(thr, (9,))
    kw = {"zero_division": 0}
    assert got["cp"] == pytest.approx(precision_score(targets, pred, average="macro", **kw), abs=1e-12)
    assert got["cr"] == pytest.approx(recall_score(targets, pred, average="macro", **kw), abs=1e-12)
    assert got["op"] == pytest.approx(precision_score(targets, pred, average="micro", **kw), abs=1e-12)
    assert got["or"] == pytest.approx(recall_score(targets, pred, average="micro", **kw), abs=1e-12)
    assert got["of1"] == pytest.approx(f1_score(targets, pred, average="micro", **kw), abs=1e-12)
    for key, value in mlgcn_summary(pred, targets).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["map"] == pytest.approx(float(np.mean(sklearn_ap(scores, targets))), abs=1e-12)
    assert set(got) == set(THRESHOLD_KEYS) | {f"{k}@top3" for k in THRESHOLD_KEYS[1:]}
    assert all(isinstance(v, float) for v in got.values())


def test_unknown_entries_are_skipped_and_empty_classes_left_out_of_class_means() -> None:
    scores, targets = long_tailed(400, 7, seed=13, decimals=2, unknown=0.25)
    targets[:, 6] = np.where(targets[:, 6] == 1, 0, targets[:, 6])  # no known positive
    got = multilabel_metrics(scores, targets, thresholds=0.5)
    pred, known = scores >= 0.5, targets != -1
    # micro: sklearn's binary scores over the pooled known entries (class 6's false positives included)
    assert got["op"] == pytest.approx(precision_score(targets[known], pred[known]), abs=1e-12)
    assert got["or"] == pytest.approx(recall_score(targets[known], pred[known]), abs=1e-12)
    # macro: per class on its known rows, over the classes with a known positive
    per_p = [
        precision_score(targets[known[:, c], c], pred[known[:, c], c], zero_division=0) for c in range(6)
    ]
    per_r = [recall_score(targets[known[:, c], c], pred[known[:, c], c]) for c in range(6)]
    assert got["cp"] == pytest.approx(np.mean(per_p), abs=1e-12)
    assert got["cr"] == pytest.approx(np.mean(per_r), abs=1e-12)
    # the same as sklearn's macro restricted to those classes, on complete data
    full = np.where(targets == -1, 0, targets)
    ref = multilabel_metrics(scores, full, thresholds=0.5)
    has = [c for c in range(7) if full[:, c].any()]
    kw = {"labels": has, "average": "macro", "zero_division": 0}
    assert ref["cp"] == pytest.approx(precision_score(full, pred, **kw), abs=1e-12)
    assert ref["cr"] == pytest.approx(recall_score(full, pred, **kw), abs=1e-12)


def test_top_k_hand_example() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.7],  # top-2: classes 0, 1
            [0.2, 0.3, 0.6, 0.6],  # top-2: 2 and 3 (tie with nothing left out)
            [0.5, 0.5, 0.5, 0.1],  # tie of three: lower class index first -> 0, 1
        ]
    )
    targets = np.array([[1, 0, 0, 1], [0, 0, 1, -1], [0, 1, 1, 0]])
    got = multilabel_metrics(scores, targets, thresholds=0.99, top_k=2)
    # predictions counted (unknown (1, 3) dropped): TP = (0,0), (1,2), (2,1); FP = (0,1), (2,0)
    # per class: c0 tp1 fp1 fn0; c1 tp1 fp1 fn0; c2 tp1 fp0 fn1; c3 tp0 fp0 fn1
    cp = (0.5 + 0.5 + 1.0 + 0.0) / 4
    cr = (1.0 + 1.0 + 0.5 + 0.0) / 4
    assert got["cp@top2"] == pytest.approx(cp)
    assert got["cr@top2"] == pytest.approx(cr)
    assert got["cf1@top2"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert got["op@top2"] == pytest.approx(3 / 5)
    assert got["or@top2"] == pytest.approx(3 / 5)
    assert got["of1@top2"] == pytest.approx(3 / 5)
    # nothing reaches 0.99: thresholded precision and recall are 0
    assert got["cp"] == got["cr"] == got["op"] == got["or"] == got["cf1"] == 0.0


def test_per_class_report_matches_sklearn() -> None:
    scores, targets = long_tailed(300, 4, seed=17, decimals=2, unknown=0.1)
    targets[:, 3] = np.where(targets[:, 3] == 1, 0, targets[:, 3])
    thr = np.array([0.4, 0.5, 0.6, 0.5])
    rows = per_class_report(scores, targets, ["cat", "dog", "sky", "boat"], thr)
    assert [r["class"] for r in rows] == ["cat", "dog", "sky", "boat"]
    ap = sklearn_ap(scores, targets)
    for c, row in enumerate(rows[:3]):
        known = targets[:, c] != -1
        y, p = targets[known, c], scores[known, c] >= thr[c]
        assert row["ap"] == pytest.approx(ap[c], abs=1e-12)
        assert row["precision"] == pytest.approx(precision_score(y, p, zero_division=0), abs=1e-12)
        assert row["recall"] == pytest.approx(recall_score(y, p), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(y, p), abs=1e-12)
        assert row["threshold"] == thr[c] and row["positives"] == int(y.sum())
    assert rows[3]["positives"] == 0 and math.isnan(rows[3]["ap"]) and math.isnan(rows[3]["recall"])


# --------------------------------------------------------------------------------------------- bad input


def _good() -> tuple[np.ndarray, np.ndarray]:
    return np.full((4, 3), 0.5), np.array([[1, 0, -1]] * 4)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s, t: (s[:, :2], t), "targets must have the shape"),
        (lambda s, t: (s[0], t[0]), "scores must be 2-D"),
        (lambda s, t: (s, t * 2), "targets must hold only 1"),
        (lambda s, t: (s, t + 0.5), "targets must hold only 1"),
        (lambda s, t: (np.where(s > 0, np.nan, s), t), "scores contains 12 NaN"),
        (lambda s, t: (s[:0], t[:0]), "at least one image"),
        (lambda s, t: (s.astype(str), t), "scores must hold numbers"),
    ],
)
def test_bad_inputs_name_the_argument(change, match: str) -> None:
    s, t = change(*_good())
    for fn in (average_precision_per_class, tune_thresholds, multilabel_metrics):
        with pytest.raises(ValueError, match=match):
            fn(s, t)


@pytest.mark.parametrize("top_k", [0, 4, 1.5, True])
def test_bad_top_k(top_k) -> None:
    with pytest.raises(ValueError, match="top_k must be an int in"):
        multilabel_metrics(*_good(), top_k=top_k)


@pytest.mark.parametrize("thresholds", [[0.5, 0.5], np.full((3, 1), 0.5), [0.5, np.nan, 0.5]])
def test_bad_thresholds(thresholds) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        multilabel_metrics(*_good(), thresholds=thresholds)
    with pytest.raises(ValueError, match="thresholds"):
        per_class_report(*_good(), ["a", "b", "c"], thresholds)


def test_bad_classes() -> None:
    with pytest.raises(ValueError, match="classes must name each of the 3"):
        per_class_report(*_good(), ["a", "b"], 0.5)


def test_torch_and_numpy_agree() -> None:
    scores, targets = long_tailed(100, 5, seed=19, decimals=1, unknown=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = multilabel_metrics(scores, targets, top_k=2)
        b = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets).float(), top_k=2)
    assert a == b


# --------------------------------------------------------------------------------------------- plot


def test_per_class_ap_plot_writes_a_png(tmp_path) -> None:
    scores, targets = long_tailed(200, 6, seed=23)
    targets[:, 5] = 0
    ap = average_precision_per_class(scores, targets)
    positives = (targets == 1).sum(0)
    out = save_per_class_ap_plot(ap, positives, [f"class {c}" for c in range(6)], tmp_path / "sub" / "ap.png")
    assert out == tmp_path / "sub" / "ap.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.height > 100
    with pytest.raises(ValueError, match="one entry per class"):
        save_per_class_ap_plot(ap, positives[:3], ["a"] * 6, tmp_path / "x.png")


def test_top_k_ties_go_to_the_lower_class_index() -> None:
    rng = np.random.default_rng(0)
    # 100 ones and 100 zeros per row: long runs of ties, which a quicksort reorders
    scores = np.stack([rng.permutation(np.repeat([1.0, 0.0], 100)) for _ in range(3)])
    targets = scores.astype(int)
    for row in targets:
        row[np.flatnonzero(row == 0)[:3]] = 1  # the three lowest-index classes among the tied zeros
    k = int(targets.sum(1).min())
    assert (targets.sum(1) == k).all()
    got = multilabel_metrics(scores, targets, top_k=k)
    assert got[f"op@top{k}"] == 1.0 and got[f"or@top{k}"] == 1.0
