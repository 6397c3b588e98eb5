"""k-means, balanced quotas and balanced selection from unequal clusters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from frugalvision.curation import balanced_quotas, hierarchical_kmeans, kmeans, select_balanced


def _blobs(sizes: list[int], dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(len(sizes), dim) * 10
    y = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


def _max_min_fair(sizes: list[int], n: int) -> list[int]:
    """Brute force: among all allocations of n, the one maximising the sorted quota vector (max-min fairness)."""
    best: tuple[int, ...] | None = None
    for q in itertools.product(*(range(s + 1) for s in sizes)):
        if sum(q) == min(n, sum(sizes)) and (best is None or sorted(q) > sorted(best)):
            best = q
    assert best is not None
    return sorted(best)


@pytest.mark.parametrize(
    ("sizes", "n"), [([1000, 200, 10], 300), ([5, 5, 5], 7), ([3, 0, 2], 100), ([7, 1, 4, 2], 9), ([6, 6], 0)]
)
def test_balanced_quotas(sizes: list[int], n: int) -> None:
    q = balanced_quotas(sizes, n)
    assert q.sum() == min(n, sum(sizes)) and (q <= np.array(sizes)).all() and (q >= 0).all()
    if max(sizes) <= 7:
        assert sorted(q.tolist()) == _max_min_fair(sizes, n)
    if sizes == [1000, 200, 10]:
        assert q.tolist() == [145, 145, 10]


def test_kmeans_recovers_separated_clusters() -> None:
    x, y = _blobs([50, 30, 20])
    _, assign = kmeans(x, 3, seed=1)
    # the clustering equals the truth up to a renaming of the clusters
    assert len({(a, b) for a, b in zip(assign.tolist(), y.tolist(), strict=True)}) == 3
    with pytest.raises(ValueError, match="k must be an int"):
        kmeans(x, 101)


def test_balanced_selection_takes_equal_counts_from_unequal_clusters() -> None:
    x, y = _blobs([500, 50, 20])
    idx, _ = select_balanced(x, 30, levels=(3,))
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert np.bincount(y[idx]).tolist() == [10, 10, 10]  # a random subset would take ~26/3/1
    # hierarchical: 12 fine clusters grouped into 3 coarse ones still splits evenly across the 3 blobs
    idx, _ = select_balanced(x, 30, levels=(12, 3), seed=3)
    assert np.bincount(y[idx]).tolist() == [10, 10, 10]
    # the small cluster runs out: the others share its remainder
    idx, _ = select_balanced(x, 120, levels=(3,))
    assert np.bincount(y[idx]).tolist() == [50, 50, 20]
    assert len(select_balanced(x, 10_000)[0]) == len(x)


def test_closest_picks_the_most_typical_members_and_is_deterministic() -> None:
    x, _ = _blobs([40, 40])
    idx, leaf = select_balanced(x, 2, levels=(2,), within="closest")
    a1, _ = select_balanced(x, 10, seed=5)
    a2, _ = select_balanced(x, 10, seed=5)
    np.testing.assert_array_equal(a1, a2)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in idx:
        members = np.flatnonzero(leaf == leaf[i])
        centre = normed[members].mean(0)
        centre /= np.linalg.norm(centre)
        assert normed[i] @ centre >= (normed[members] @ centre).max() - 1e-3


def test_hierarchical_levels() -> None:
    x, _ = _blobs([30, 30, 30])
    tree = hierarchical_kmeans(x, [9, 3])
    assert tree.assignments[0].shape == (90,) and tree.assignments[1].shape == (9,)
    assert set(tree.point_clusters(1).tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="strictly decreasing"):
        hierarchical_kmeans(x, [3, 9])
