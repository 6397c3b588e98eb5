"""The kNN OOD score searched approximately (PCA + IVF candidates, exact re-ranking) against exact search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frugalvision.ood import knn_score, knn_score_report
from frugalvision.ood import scores as module


def low_rank(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    """Clustered rows lying in a ``rank``-dimensional subspace of ``dim`` (PCA to ``rank`` keeps all of them)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T
    z = rng.standard_normal((8, rank))[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, rank))
    return (z @ basis + 0.3 * basis[0]).astype(np.float32)


def reference_score(q: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """float64 brute force from the paper's formula: minus the distance to the k-th nearest unit vector."""
    qn = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    rn = ref / np.linalg.norm(ref.astype(np.float64), axis=1, keepdims=True)
    d = np.sqrt(np.maximum(2.0 - 2.0 * qn @ rn.T, 0))  # ‖u - v‖² = 2 - 2 u·v for unit vectors
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return -np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_approximate_score_is_exact_when_pca_keeps_the_rank_and_every_list_is_scanned(
    exclude_self: bool,
) -> None:
    ref = low_rank(1500, 48, 12, 0)
    q = ref if exclude_self else low_rank(300, 48, 12, 1)
    scores, report = knn_score_report(
        q,
        ref,
        20,
        exclude_self=exclude_self,
        method="approximate",
        pca_dim=12,
        nprobe=10_000,
        recall_sample=100,
    )
    expected = reference_score(q, ref, 20, exclude_self)
    np.testing.assert_allclose(scores.numpy(), expected, atol=2e-4)
    assert report is not None and report["recall_at_k"] > 0.99 and report["kth_similarity_max_error"] < 1e-4
    exact_scores = knn_score(
        torch.from_numpy(q), torch.from_numpy(ref), 20, exclude_self=exclude_self, method="exact"
    )
    np.testing.assert_allclose(exact_scores.numpy(), expected, atol=2e-4)


def test_report_measures_a_lossy_search() -> None:
    rng = np.random.default_rng(2)
    ref = (rng.standard_normal((20, 32))[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 32))).astype(
        np.float32
    )
    q = rng.standard_normal((400, 32)).astype(np.float32)
    scores, report = knn_score_report(
        q, ref, 10, method="approximate", pca_dim=3, nprobe=1, candidates=1, recall_sample=400
    )
    expected = reference_score(q, ref, 10, False)
    assert report is not None and report["sample_queries"] == 400
    assert report["recall_at_k"] < 0.9
    # the search re-ranks true cosines, so it can only find neighbours as far or farther than the true k-th
    assert np.all(scores.numpy() <= expected + 1e-5)
    assert report["kth_similarity_max_error"] > 0


def test_auto_switch_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = low_rank(500, 16, 4, 3)
    assert knn_score_report(ref[:10], ref, 5)[1] is None  # small: exact
    monkeypatch.setattr(module, "KNN_APPROXIMATE_FROM", 500)
    assert knn_score_report(ref[:10], ref, 5, pca_dim=None)[1] is not None
    with pytest.raises(ValueError, match="features have dimension 8 but reference has 16"):
        knn_score(ref[:10, :8], ref, 5)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 499\]"):
        knn_score(ref, ref, 500, exclude_self=True)
