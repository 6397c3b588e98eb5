"""Retrieval metrics against pytorch-metric-learning, slow loops written from the definitions and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import normalized_mutual_info_score

from frugalvision.metrics import (
    knn,
    map_at_r,
    nmi,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)

PML_INCLUDE = ("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI")
PML_KEYS = {
    "precision_at_1": "precision@1",
    "r_precision": "r_precision",
    "mean_average_precision_at_r": "map@r",
    "NMI": "nmi",
}
PML_KMEANS_SEED = 1234  # faiss's default seed, used by pml's FaissKMeans
# pml's NMI: one faiss k-means run from randomly sampled points, at faiss's default seed
PML_NMI = {"seed": PML_KMEANS_SEED, "nmi_init": "random", "nmi_n_init": 1}


def clustered(
    n: int, dim: int, classes: int, seed: int, spread: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class centres plus noise: continuous values, so no two distances tie; metrics well away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def pml_values(query, query_labels, reference=None, reference_labels=None) -> dict[str, float]:
    calc = AccuracyCalculator(include=PML_INCLUDE, device=torch.device("cpu"), k="max_bin_count")
    got = calc.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query=False)
    return {PML_KEYS[key]: value for key, value in got.items()}


def assert_same_values(ours: dict[str, float], ref: dict[str, float]) -> None:
    keys = sorted(ref)
    torch.testing.assert_close(
        torch.tensor([ours[key] for key in keys], dtype=torch.float64),
        torch.tensor([ref[key] for key in keys], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


# pml searches with faiss IndexFlatL2 on the raw embeddings: our "l2" on raw rows, our "cosine" on normalised rows.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_matches_pml_on_query_set(seed: int, metric: str) -> None:
    emb, labels = clustered(300, 16, 10, seed)
    labels[:3] = torch.tensor([100, 101, 102])  # three classes with a single item: excluded by both
    ours = retrieval_metrics(emb, labels, metric=metric, **PML_NMI)
    pml_emb = F.normalize(emb) if metric == "cosine" else emb
    ref = pml_values(pml_emb, labels)
    assert 0.1 < ref["map@r"] < 0.9, "test data should give a non-trivial MAP@R"
    assert_same_values(ours, ref)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_matches_pml_on_long_tailed_classes(chunk_size: int | None) -> None:
    # Class sizes from 2 to 120: queries are searched in blocks of similar depth R, each with its own k.
    sizes = [120, 60, 30, 15, 8, 4, 2, 2, 1]
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    g = torch.Generator().manual_seed(5)
    labels = labels[torch.randperm(len(labels), generator=g)]
    emb = torch.randn(len(sizes), 16, generator=g)[labels] + 1.2 * torch.randn(len(labels), 16, generator=g)
    ours = retrieval_metrics(emb, labels, chunk_size=chunk_size, **PML_NMI)
    assert_same_values(ours, pml_values(F.normalize(emb), labels))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_matches_pml_with_reference_set(seed: int, metric: str) -> None:
    emb, labels = clustered(400, 16, 10, seed)
    query, query_labels = emb[:100], labels[:100].clone()
    reference, reference_labels = emb[100:], labels[100:].clone()
    query_labels[:2] = 50  # a class missing from the reference set: no match possible, excluded by both
    ours = retrieval_metrics(
        query,
        query_labels,
        metric=metric,
        reference=reference,
        reference_labels=reference_labels,
        **PML_NMI,
    )
    prep = F.normalize if metric == "cosine" else (lambda t: t)
    ref = pml_values(prep(query), query_labels, prep(reference), reference_labels)
    assert_same_values(ours, ref)


def slow_recall(emb: np.ndarray, labels: np.ndarray, k: int, ref=None, ref_labels=None) -> float:
    """Recall@k by a loop over queries, cosine similarity in float64, straight from the definition."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    self_search = ref is None
    ref_unit = unit if self_search else ref / np.linalg.norm(ref, axis=1, keepdims=True)
    ref_labels = labels if self_search else ref_labels
    found = []
    for i in range(len(unit)):
        others = [j for j in range(len(ref_unit)) if not (self_search and j == i)]
        if not any(ref_labels[j] == labels[i] for j in others):
            continue  # no same-class item to find: query left out
        ranked = sorted(others, key=lambda j: -float(unit[i] @ ref_unit[j]))
        found.append(any(ref_labels[j] == labels[i] for j in ranked[:k]))
    return float(np.mean(found))


@pytest.mark.parametrize("seed", [0, 3])
def test_recall_matches_slow_loop(seed: int) -> None:
    emb, labels = clustered(120, 8, 6, seed, spread=2.0)
    labels[0] = 99  # a lone query
    e, y = emb.double().numpy(), labels.numpy()
    ours = recall_at_k(emb, labels, k=(1, 2, 4, 8))
    assert ours.keys() == {1, 2, 4, 8}
    for k, value in ours.items():
        assert math.isclose(value, slow_recall(e, y, k), abs_tol=1e-12), k
    assert 0.1 < ours[1] < ours[8] < 1.0  # non-trivial values


def test_recall_matches_slow_loop_with_reference() -> None:
    emb, labels = clustered(150, 8, 6, 4, spread=2.0)
    e, y = emb.double().numpy(), labels.numpy()
    ours = recall_at_k(emb[:50], labels[:50], k=(1, 3), reference=emb[50:], reference_labels=labels[50:])
    for k, value in ours.items():
        assert math.isclose(value, slow_recall(e[:50], y[:50], k, e[50:], y[50:]), abs_tol=1e-12), k


def test_hand_worked_case_query_set() -> None:
    # Points on a line at 0, 1, 3, 7 (all pairwise distances differ) with labels 0, 1, 0, 0.
    #   item 0: neighbours 1(✗) 2(✓) 3(✓), R=2 -> AP = (1/2)(1/2) = 1/4, RP = 1/2, P@1 = 0
    #   item 1: R=0, left out
    #   item 2: neighbours 1(✗) 0(✓) 3(✓), R=2 -> AP = 1/4, RP = 1/2, P@1 = 0
    #   item 3: neighbours 2(✓) 1(✗) 0(✓), R=2 -> AP = (1/2)(1/1) = 1/2, RP = 1/2, P@1 = 1
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    got = retrieval_metrics(
        emb, labels, k=(1, 2), metric="l2", include=("recall", "precision_at_1", "r_precision", "map_at_r")
    )
    expected = {
        "map@r": 1 / 3,
        "r_precision": 1 / 2,
        "precision@1": 1 / 3,
        "recall@1": 1 / 3,
        "recall@2": 1.0,
    }
    assert_same_values(got, expected)
    assert math.isclose(map_at_r(emb, labels, metric="l2"), 1 / 3, abs_tol=1e-12)
    assert math.isclose(r_precision(emb, labels, metric="l2"), 1 / 2, abs_tol=1e-12)
    assert math.isclose(precision_at_1(emb, labels, metric="l2"), 1 / 3, abs_tol=1e-12)


def test_hand_worked_case_reference_set() -> None:
    # Reference at 1, 2, 3, 4, 5 with labels 0, 1, 0, 1, 1; two queries at 0.
    #   query label 0: R=2, top-2 = [✓, ✗] -> AP = (1/2)(1) = 1/2
    #   query label 1: R=3, top-3 = [✗, ✓, ✗] -> AP = (1/3)(1/2) = 1/6
    reference = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    query = torch.zeros(2, 1)
    got = map_at_r(
        query,
        torch.tensor([0, 1]),
        metric="l2",
        reference=reference,
        reference_labels=torch.tensor([0, 1, 0, 1, 1]),
    )
    assert math.isclose(got, (1 / 2 + 1 / 6) / 2, abs_tol=1e-12)


def test_chunking_does_not_change_anything() -> None:
    emb, labels = clustered(97, 8, 5, 7)
    whole = retrieval_metrics(emb, labels, k=(1, 3), chunk_size=None)
    for chunk in (3, 7, 96, 500):
        assert retrieval_metrics(emb, labels, k=(1, 3), chunk_size=chunk) == whole
    for backend in ("faiss", "torch"):
        for metric in ("cosine", "ip", "l2"):
            s_all, i_all = knn(emb, emb, 10, metric=metric, exclude_self=True, backend=backend)
            s_chk, i_chk = knn(emb, emb, 10, metric=metric, exclude_self=True, backend=backend, chunk_size=7)
            torch.testing.assert_close(i_chk, i_all, rtol=0, atol=0)
            torch.testing.assert_close(s_chk, s_all)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_knn_matches_float64_brute_force(metric: str) -> None:
    query, _ = clustered(40, 6, 3, 8)
    reference, _ = clustered(90, 6, 3, 9)
    q, r = query.double(), reference.double()
    if metric == "cosine":
        q, r = F.normalize(q), F.normalize(r)
    scores = -(torch.cdist(q, r) ** 2) if metric == "l2" else q @ r.T
    expected_scores, expected_idx = scores.topk(5, dim=1)
    if metric == "l2":
        expected_scores = -expected_scores
    for backend in ("faiss", "torch"):
        got_scores, got_idx = knn(query, reference, 5, metric=metric, backend=backend)
        assert got_idx.dtype == torch.int64 and got_scores.dtype == torch.float32
        torch.testing.assert_close(got_idx, expected_idx, rtol=0, atol=0)
        torch.testing.assert_close(got_scores.double(), expected_scores, rtol=1e-5, atol=1e-4)


def test_exclude_self_keeps_exact_duplicates() -> None:
    emb, _ = clustered(30, 4, 3, 10)
    emb[5] = emb[4]  # item 5 duplicates item 4
    emb[20:26] = emb[19]  # item 19 has six exact copies, more than k + 1
    for backend in ("faiss", "torch"):
        _, idx = knn(emb, emb, 3, exclude_self=True, backend=backend)
        rows = torch.arange(30)[:, None]
        assert not bool((idx == rows).any()), "a query must never be its own neighbour"
        assert int(idx[4, 0]) == 5 and int(idx[5, 0]) == 4
        assert set(idx[19].tolist()) <= set(range(20, 26))
        for i in range(20, 26):
            assert set(idx[i].tolist()) <= set(range(19, 26)) - {i}
    labels = torch.arange(30)  # every class a pair of duplicates or a singleton
    labels[5] = 4
    got = retrieval_metrics(emb[:6], labels[:6], k=(1,), include=("recall", "precision_at_1"))
    assert got == {"recall@1": 1.0, "precision@1": 1.0}  # items 4 and 5 find each other; 0-3 are left out


def test_numpy_input_equals_torch_input() -> None:
    emb, labels = clustered(60, 8, 4, 11)
    ours = retrieval_metrics(emb, labels, k=(1, 2))
    assert retrieval_metrics(emb.numpy(), labels.numpy().astype(np.int32), k=(1, 2)) == ours
    assert retrieval_metrics(emb.double(), labels, k=(1, 2)) == ours


def test_nmi_matches_sklearn_when_clusters_are_unambiguous() -> None:
    # Two tight blobs far apart: whatever its initialisation, k-means with two clusters ends on the blobs
    # (with more blobs, random initialisation can merge two of them and split another). So our NMI must equal
    # sklearn's NMI between the labels and blob membership.
    g = torch.Generator().manual_seed(12)
    labels = torch.arange(2).repeat_interleave(30)[torch.randperm(60, generator=g)]
    blob = labels.clone()
    blob[torch.nonzero(labels == 0)[:6, 0]] = 1  # six items of class 0 sit in the blob of class 1
    blob[torch.nonzero(labels == 1)[:2, 0]] = 0
    emb = 20 * torch.eye(8)[blob] + 0.05 * torch.randn(60, 8, generator=g)
    expected = normalized_mutual_info_score(labels.numpy(), blob.numpy())
    assert 0.3 < expected < 0.9
    for metric in ("cosine", "l2"):
        for seed in (0, 1, 2):
            assert math.isclose(nmi(emb, labels, metric=metric, seed=seed), expected, abs_tol=1e-12)
    assert math.isclose(nmi(emb, blob), 1.0, abs_tol=1e-12)


def test_nmi_function_matches_pml() -> None:
    emb, labels = clustered(300, 16, 10, 13)
    calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"))
    expected = calc.get_accuracy(emb, labels)["NMI"]
    got = nmi(emb, labels, metric="l2", seed=PML_KMEANS_SEED, init="random", n_init=1)
    assert math.isclose(got, expected, abs_tol=1e-12)


def separated_blobs_with_label_noise() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """20 tight, well-separated blobs of 15 points in 32-d; 20 % of the labels redrawn at random.

    The lowest-inertia 20-clustering is the blob membership, so the NMI to report is the NMI between the
    labels and the blobs, whatever the seed. Returns ``(embeddings, labels, blob)``.
    """
    g = torch.Generator().manual_seed(21)
    blob = torch.arange(20).repeat_interleave(15)
    emb = torch.randn(20, 32, generator=g)[blob] + 0.1 * torch.randn(300, 32, generator=g)
    labels = blob.clone()
    flip = torch.rand(300, generator=g) < 0.2
    labels[flip] = torch.randint(0, 20, (int(flip.sum()),), generator=g)
    return emb, labels, blob


def test_nmi_is_the_same_for_every_seed_and_equals_the_reference_clustering() -> None:
    emb, labels, blob = separated_blobs_with_label_noise()
    assert len(torch.unique(labels)) == 20
    expected = normalized_mutual_info_score(labels.numpy(), blob.numpy())  # the reference clustering
    assert 0.6 < expected < 0.9
    seeds = range(4)
    got = [nmi(emb, labels, seed=seed) for seed in seeds]
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64),
        torch.full((4,), expected, dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    assert retrieval_metrics(emb, labels, include=("nmi",), seed=3)["nmi"] == got[3]
    # pml's single run from random points merges blobs: below the reference and spread over the seeds
    single = [nmi(emb, labels, seed=seed, init="random", n_init=1) for seed in seeds]
    assert max(single) < expected - 0.02 and max(single) - min(single) > 0.01


def test_no_query_with_a_match_gives_nan_with_warning() -> None:
    emb, _ = clustered(5, 4, 1, 14)
    with pytest.warns(RuntimeWarning, match="no query"):
        got = retrieval_metrics(emb, torch.arange(5), include=("map_at_r",))
    assert math.isnan(got["map@r"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": torch.zeros(9, dtype=torch.int64)}, ValueError, "labels has 9 entries"),
        ({"labels": torch.zeros(10)}, TypeError, "integer class ids"),
        ({"labels": torch.zeros(10, 1, dtype=torch.int64)}, ValueError, r"1-D \(N,\)"),
        ({"embeddings": torch.full((10, 4), float("nan"))}, ValueError, "NaN"),
        ({"embeddings": torch.zeros(10)}, ValueError, r"2-D \(N, D\)"),
        ({"embeddings": [[0.0]] * 10}, TypeError, "torch.Tensor or numpy.ndarray"),
        ({"k": (1, 10)}, ValueError, "k=10 is larger than the number of other items"),
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 1.5}, TypeError, "k must be an int"),
        ({"metric": "cos"}, ValueError, "metric must be one of"),
        ({"include": "recall"}, TypeError, "sequence of metric names"),
        ({"include": ("recall", "mAP")}, ValueError, "include must be one of"),
        ({"reference": torch.zeros(3, 4)}, ValueError, "given together"),
        (
            {"reference": torch.zeros(3, 5), "reference_labels": torch.zeros(3, dtype=torch.int64)},
            ValueError,
            "dimension",
        ),
        (
            {"reference": torch.zeros(3, 4), "reference_labels": torch.zeros(3, dtype=torch.int64), "k": 4},
            ValueError,
            "k=4 is larger than the reference set",
        ),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"nmi_n_init": 0}, ValueError, "n_init must be a positive int"),
        ({"nmi_init": "kmeans"}, ValueError, "init must be one of"),
    ],
)
def test_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"embeddings": torch.randn(10, 4), "labels": torch.arange(10) % 3, "k": (1,)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        retrieval_metrics(args.pop("embeddings"), args.pop("labels"), **args)


def test_fewer_than_two_items() -> None:
    with pytest.raises(ValueError, match="at least 2 items"):
        retrieval_metrics(torch.randn(1, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least 2 items"):
        nmi(torch.randn(1, 4), torch.tensor([0]))


def test_knn_errors() -> None:
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="exclude_self=True needs"):
        knn(x, x[:4], 2, exclude_self=True)
    with pytest.raises(ValueError, match="same dimension"):
        knn(x, torch.randn(6, 4), 2)
    with pytest.raises(ValueError, match="k=6 is larger"):
        knn(x, x, 6, exclude_self=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        knn(x, x, 2, backend="gpu")


def test_kmeans_plus_plus_seeds_one_centre_per_separated_blob() -> None:
    """Greedy k-means++ (the seeding NMI uses) puts one seed in each of 12 far-apart blobs, for every seed; a
    uniform draw of 12 points misses a blob almost always (checked for contrast)."""
    from frugalvision.metrics.retrieval import _kmeans_plus_plus

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 32)) * 20
    blob = np.repeat(np.arange(12), [5, 80, 10, 40, 3, 60, 25, 7, 90, 15, 30, 50])
    x = (centres[blob] + rng.normal(size=(len(blob), 32))).astype(np.float32)

    def blobs_hit(seeds: np.ndarray) -> int:
        return len({int(np.argmin(((centres - s) ** 2).sum(1))) for s in seeds})

    for seed in range(5):
        assert blobs_hit(_kmeans_plus_plus(x, 12, np.random.default_rng(seed))) == 12
    uniform = [blobs_hit(x[np.random.default_rng(s).choice(len(x), 12, replace=False)]) for s in range(5)]
    assert max(uniform) < 12


def test_lloyd_equals_sklearn_from_the_same_seeds() -> None:
    """The faiss Lloyd iterations NMI runs equal scikit-learn's ``KMeans`` started from the same centroids."""
    from sklearn.cluster import KMeans

    from frugalvision.metrics.retrieval import _kmeans_plus_plus, _lloyd

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, 64))
    x = (centres[rng.integers(0, 8, 600)] + rng.normal(size=(600, 64)) * 0.8).astype(np.float32)
    for seed in range(3):
        init = _kmeans_plus_plus(x, 8, np.random.default_rng(seed))
        assignment, inertia = _lloyd(x, init, 300)
        reference = KMeans(8, init=init, n_init=1, max_iter=300, tol=0).fit(x)
        np.testing.assert_array_equal(assignment, reference.labels_)
        np.testing.assert_allclose(inertia, reference.inertia_, rtol=1e-4)
