"""The selection scores against independent references: brute-force leave-one-out 1-NN and MAP@R written from
their definitions, hand-worked Pareto fronts, and the label checks."""

from __future__ import annotations

import numpy as np
import pytest

from frugalvision.errors import DataError
from frugalvision.selection import check_labels, feature_scores, linear_probe_accuracy, pareto_front


def clusters(n_per_class: int, k: int, d: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per_class)
    means = rng.normal(size=(k, d)) * separation
    return (means[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


def loo_reference(feats: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Recall@1 and MAP@R (Musgrave et al. 2020, §3.2) by brute force in float64, cosine similarity."""
    x = feats.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    hits, maps = [], []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        order = sorted(others, key=lambda j: -sim[i, j])
        rel = [labels[j] == labels[i] for j in order]
        hits.append(rel[0])
        r = int(sum(rel))
        maps.append(sum(rel[q] * sum(rel[: q + 1]) / (q + 1) for q in range(r)) / r)
    return float(np.mean(hits)), float(np.mean(maps))


def test_retrieval_scores_equal_brute_force() -> None:
    feats, labels = clusters(6, 4, 5, 0.8, 0)
    scores = feature_scores(feats, labels)
    recall, map_r = loo_reference(feats, labels)
    assert 0.2 < recall < 1.0  # a case where neighbours do err
    assert scores["knn_recall_at_1"] == pytest.approx(recall, abs=1e-6)
    assert scores["map_at_r"] == pytest.approx(map_r, abs=1e-6)


def test_every_score_ranks_separable_above_shuffled_labels() -> None:
    feats, labels = clusters(15, 4, 8, 3.0, 1)
    shuffled = np.random.default_rng(2).permutation(labels)
    good, bad = feature_scores(feats, labels), feature_scores(feats, shuffled)
    assert good["linear_probe"] == 1.0 and good["knn_recall_at_1"] == 1.0
    for key in ("knn_recall_at_1", "map_at_r", "linear_probe", "logme"):
        assert good[key] > bad[key] + 0.1, key
    assert bad["linear_probe"] < 0.5  # chance is 0.25


def test_linear_probe_is_stratified_and_seeded() -> None:
    feats, labels = clusters(10, 3, 6, 1.0, 3)
    labels[:8] = 0  # class sizes 8 + 2 + ... : the smallest class has 2 images -> 2 folds, not an error
    labels[8:10] = 1
    labels[10:] = 2
    a = linear_probe_accuracy(feats, labels, folds=5, seed=0)
    assert a == linear_probe_accuracy(feats, labels, folds=5, seed=0)
    assert 0.0 <= a <= 1.0
    with pytest.raises(ValueError, match="folds must be >= 2"):
        linear_probe_accuracy(feats, labels, folds=1)


def test_logme_left_out_with_a_warning_where_it_has_no_maximum() -> None:
    labels = np.repeat([0, 1, 2], 3)
    feats = np.eye(3, dtype=np.float32)[labels]  # features = one-hot labels, N > D... duplicated rows
    feats = np.hstack([feats, np.zeros((9, 20), np.float32)])
    with pytest.warns(UserWarning, match="LogME left out"):
        scores = feature_scores(feats, labels, name="onehot")
    assert scores["logme"] is None and scores["linear_probe"] == 1.0


def test_check_labels() -> None:
    assert check_labels(["b", "a", "b", "a"]).tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match="1 class"):
        check_labels(["a", "a", "a"], "folder x")
    with pytest.raises(DataError, match=r"folder x: class\(es\) c have a single image"):
        check_labels(["a", "a", "b", "b", "c"], "folder x")


def test_pareto_front_by_hand() -> None:
    # (quality, speed): B dominates D; A best quality; C fastest; E equal to A in quality but slower
    quality = [0.9, 0.8, 0.5, 0.7, 0.9, None]
    speed = [10.0, 50.0, 100.0, 40.0, 5.0, 1000.0]
    assert pareto_front(quality, speed) == [True, True, True, False, False, False]
    assert pareto_front([0.5, 0.5], [1.0, 1.0]) == [True, True]  # ties dominate nobody
    with pytest.raises(ValueError, match="same length"):
        pareto_front([0.1], [])
