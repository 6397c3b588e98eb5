"""k-means (faiss) and balanced sampling from clusters: pick a subset that covers the data evenly.

Curation by clustering, as in DINOv2's data pipeline (Oquab et al., "DINOv2: Learning Robust Visual Features
without Supervision", 2023, §3: images are clustered with k-means on self-supervised embeddings and retrieval
draws from the clusters) and, for the balancing, Vo et al., "Automatic Data Curation for Self-Supervised
Learning: A Clustering-Based Approach", 2024 (https://arxiv.org/abs/2405.15613): hierarchical k-means
(k-means on the points, then k-means on the centroids of the level below, ...) and *balanced sampling*, which
takes an equal share from every cluster at every level, so that the long tail of rare concepts is not drowned by
the few dominant ones.

Here :func:`select_balanced` does exactly that top-down: the budget ``n`` is split equally among the top-level
clusters (:func:`balanced_quotas`; a cluster with fewer points than its share gives the rest to the others),
each share is split equally among the cluster's children, and at the leaves (the k-means clusters of the
points) points are drawn at random or nearest-to-centroid first. ``levels=(k,)`` is flat k-means with
per-cluster quotas. Not implemented: Vo et al.'s resampling refinement of each k-means level.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from frugalvision._checks import check_choice
from frugalvision.metrics.knn import as_embeddings

__all__ = [
    "HierarchicalClusters",
    "balanced_quotas",
    "default_clusters",
    "hierarchical_kmeans",
    "kmeans",
    "select_balanced",
]


def default_clusters(count: int) -> int:
    """About ``sqrt(N)`` clusters (at least 2, at most ``N``)."""
    return int(min(count, max(2, round(np.sqrt(count)))))


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, max_points: int) -> np.ndarray:
    """Greedy k-means++ seeding on a random sample of at most ``max_points`` rows.

    k-means++ (Arthur & Vassilvitskii, SODA 2007) draws each new centre with probability ∝ D(x)², the squared
    distance to the nearest centre chosen so far; the greedy variant (as in scikit-learn) draws
    ``2 + ln k`` candidates and keeps the one that lowers the total ``Σ D²`` most.
    """
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], size=max_points, replace=False)]
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(1)
    trials = 2 + int(np.log(k))

    def sq_dist(rows: np.ndarray) -> np.ndarray:  # (len(rows), N) squared distances, via one matmul
        return np.maximum(sq[rows][:, None] + sq[None, :] - 2.0 * x64[rows] @ x64.T, 0.0)

    first = int(rng.integers(x.shape[0]))
    centres = [first]
    d2 = sq_dist(np.array([first]))[0]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            candidates = rng.integers(x.shape[0], size=1)
        else:
            candidates = rng.choice(x.shape[0], size=trials, p=d2 / total)
        cand_d2 = np.minimum(d2[None, :], sq_dist(np.asarray(candidates)))
        best = int(np.argmin(cand_d2.sum(1)))
        centres.append(int(candidates[best]))
        d2 = cand_d2[best]
    return np.ascontiguousarray(x[centres], dtype=np.float32)


def kmeans(
    vectors: np.ndarray | torch.Tensor,
    k: int,
    *,
    niter: int = 25,
    seed: int = 0,
    spherical: bool = True,
    nredo: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with faiss, seeded by k-means++.

    Seeding: greedy k-means++ (Arthur & Vassilvitskii 2007) on at most ``64 k`` sampled rows, which avoids the
    merged-clusters local minima of faiss's uniform random seeding. Lloyd iterations: faiss (which trains on at
    most 256 rows per centroid, sampled with ``seed``).

    Args:
        vectors: ``(N, D)``.
        k: clusters, ``1 <= k <= N``.
        niter: Lloyd iterations.
        seed: random seed (seeding and faiss's sampling).
        spherical: L2-normalise the rows and the centroids (cosine geometry, for embeddings).
        nredo: runs from different seedings; the one with the best objective is kept.

    Returns:
        ``(centroids (k, D) float32, assignment (N,) int64)``; every cluster id in ``[0, k)``.
    """
    x = as_embeddings(vectors, "vectors")
    if spherical:
        x = torch.nn.functional.normalize(x, dim=1)
    arr = np.ascontiguousarray(x.numpy())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= arr.shape[0]:
        raise ValueError(f"k must be an int in [1, {arr.shape[0]}] (the number of vectors), got {k!r}")
    if nredo < 1:
        raise ValueError(f"nredo must be >= 1, got {nredo}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for run in range(nredo):
        km = faiss.Kmeans(
            arr.shape[1],
            int(k),
            niter=niter,
            seed=seed + run,
            spherical=spherical,
            verbose=False,
            min_points_per_centroid=1,
        )
        km.train(arr, init_centroids=_kmeans_plus_plus(arr, int(k), rng, 64 * int(k)))
        dist, assign = km.index.search(arr, 1)
        # objective: sum of squared distances (spherical: the index is inner-product, 2 - 2 cos = squared distance)
        cost = float((2.0 - 2.0 * dist).sum()) if spherical else float(dist.sum())
        if best is None or cost < best[0]:
            best = (cost, np.asarray(km.centroids, dtype=np.float32), assign[:, 0].astype(np.int64))
    assert best is not None
    return best[1], best[2]


@dataclass(frozen=True)
class HierarchicalClusters:
    """Result of :func:`hierarchical_kmeans`.

    Attributes:
        assignments: ``assignments[0]`` is ``(N,)`` cluster of each point at level 0; ``assignments[l]`` is
            ``(k_{l-1},)`` cluster of each level-``l-1`` cluster at level ``l``.
        centroids: centroids of each level.
    """

    assignments: list[np.ndarray]
    centroids: list[np.ndarray]

    def point_clusters(self, level: int) -> np.ndarray:
        """``(N,)`` cluster of every point at ``level``."""
        out = self.assignments[0]
        for a in self.assignments[1 : level + 1]:
            out = a[out]
        return out


def hierarchical_kmeans(
    vectors: np.ndarray | torch.Tensor, levels: Sequence[int], *, niter: int = 25, seed: int = 0
) -> HierarchicalClusters:
    """k-means on the points with ``levels[0]`` clusters, then on those centroids with ``levels[1]``, ...

    Vo et al. 2024, §4 (spherical k-means at every level). ``levels`` must decrease strictly. The levels above
    the first cluster few points (centroids), so they keep the best of 10 initialisations.
    """
    ks = [int(k) for k in levels]
    if not ks or any(b >= a for a, b in itertools.pairwise(ks)):
        raise ValueError(
            f"levels must be a non-empty, strictly decreasing list of cluster counts, got {list(levels)}"
        )
    assignments, centroids = [], []
    current: np.ndarray | torch.Tensor = vectors
    for depth, k in enumerate(ks):
        c, a = kmeans(current, k, niter=niter, seed=seed + depth, nredo=1 if depth == 0 else 10)
        assignments.append(a)
        centroids.append(c)
        current = c
    return HierarchicalClusters(assignments, centroids)


def balanced_quotas(sizes: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Split a budget ``n`` as evenly as possible among clusters of ``sizes``, none beyond its size.

    Water-filling: every cluster gets ``min(size, t)`` for the largest level ``t`` that fits, and the few
    remaining units go one each to the largest clusters still below their size. Sums to ``min(n, Σ sizes)``.

    Example:
        >>> balanced_quotas([1000, 200, 10], 300).tolist()
        [145, 145, 10]
    """
    s = np.asarray(sizes, dtype=np.int64)
    if s.ndim != 1 or (s < 0).any():
        raise ValueError(f"sizes must be a 1-D list of non-negative counts, got {sizes!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n = int(min(n, s.sum()))
    quotas = np.zeros_like(s)
    remaining, open_ = n, s > 0
    while remaining > 0 and open_.any():
        share = remaining // int(open_.sum())
        if share == 0:  # fewer units than open clusters: one each, largest spare capacity first
            spare = np.where(open_, s - quotas, -1)
            for i in np.argsort(-spare, kind="stable")[:remaining]:
                quotas[i] += 1
            break
        give = np.where(open_, np.minimum(share, s - quotas), 0)
        quotas += give
        remaining -= int(give.sum())
        open_ = quotas < s
    return quotas


def select_balanced(
    vectors: np.ndarray | torch.Tensor,
    n: int,
    *,
    levels: Sequence[int] | None = None,
    within: str = "random",
    seed: int = 0,
    niter: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``n`` rows spread evenly over (hierarchical) k-means clusters.

    Args:
        vectors: ``(N, D)`` embeddings.
        n: rows to select (all of them if ``n >= N``).
        levels: clusters per level, fine to coarse (``(k,)`` = flat k-means); ``None`` = ``(~sqrt(N),)``.
        within: how a leaf cluster gives its quota: ``"random"`` (Vo et al.) or ``"closest"`` (nearest to the
            centroid first: the most typical members).
        seed: random seed (k-means init and random draws).

    Returns:
        ``(indices (n,) int64 sorted, cluster (N,) int64 leaf cluster of every row)``.
    """
    check_choice(within, ("random", "closest"), "within")
    x = as_embeddings(vectors, "vectors")
    count = x.shape[0]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    ks = list(levels) if levels is not None else [default_clusters(count)]
    if ks and ks[0] > count:
        raise ValueError(f"levels[0]={ks[0]} is larger than the number of vectors ({count})")
    tree = hierarchical_kmeans(x, ks, niter=niter, seed=seed)
    leaf = tree.assignments[0]
    rng = np.random.default_rng(seed)
    normed = torch.nn.functional.normalize(x, dim=1).numpy()

    def members_of(level: int, cluster: int) -> np.ndarray:
        """Clusters of level ``level - 1`` (or points when level == 0) inside ``cluster``."""
        return np.flatnonzero(tree.assignments[level] == cluster)

    point_count = [
        np.bincount(tree.point_clusters(lvl), minlength=len(tree.centroids[lvl])) for lvl in range(len(ks))
    ]
    chosen: list[np.ndarray] = []

    def take(level: int, cluster: int, quota: int) -> None:
        if quota <= 0:
            return
        children = members_of(level, cluster)
        if level == 0:  # children are points
            if within == "random":
                pick = rng.choice(children, size=quota, replace=False)
            else:
                sims = normed[children] @ tree.centroids[0][cluster]
                pick = children[np.argsort(-sims, kind="stable")[:quota]]
            chosen.append(pick)
            return
        quotas = balanced_quotas(point_count[level - 1][children], quota)
        for child, q in zip(children, quotas, strict=True):
            take(level - 1, int(child), int(q))

    top = len(ks) - 1
    for cluster, q in enumerate(balanced_quotas(point_count[top], int(n))):
        take(top, cluster, int(q))
    return np.sort(np.concatenate(chosen)).astype(np.int64), leaf
