"""Retrieval metrics for embeddings: Recall@K, Precision@1, R-Precision, MAP@R and NMI.

All neighbour-based metrics come from one exact k-NN pass (faiss flat search on the CPU, chunked
``matmul`` + ``topk`` on a GPU), done in blocks of queries so that a 50k-item evaluation stays within a few
hundred MiB. Each query is searched only as deep as it needs (its own ``R``, or the largest recall ``k``)
rather than as deep as the largest class, which pays off on long-tailed data.

Conventions (the same as pytorch-metric-learning's ``AccuracyCalculator``, which the tests compare against):

* Without a separate reference set every item is a query and is searched against all *other* items; it is
  removed from its own neighbour list by index, so exact duplicates of it still count.
* ``R`` of a query is the number of reference items of its class (other than itself).
* Queries with ``R = 0`` (the only item of their class, or a class absent from the reference set) can never
  retrieve a match; they are left out of every neighbour-based metric, including Recall@K, so that
  Recall@1 equals Precision@1. If no query is left, the metric is ``nan`` (with a warning).
* Averages are over queries (not over classes).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from frugalvision._checks import check_choice
from frugalvision.metrics.knn import (
    METRICS,
    ExactSearcher,
    Metric,
    as_embeddings,
    as_labels,
    check_k,
    default_chunk_size,
    prepare,
    resolve_backend,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

ArrayLike = torch.Tensor | np.ndarray
INCLUDE: tuple[str, ...] = ("recall", "precision_at_1", "r_precision", "map_at_r", "nmi")
#: k-means runs of NMI by default; the clustering of lowest inertia is scored.
NMI_N_INIT = 10
#: NMI's k-means initialisations: ``"k-means++"`` (scikit-learn) or ``"random"`` (faiss, as pml).
NMI_INITS: tuple[str, ...] = ("k-means++", "random")
#: How the default NMI is computed, in words (printed beside the value by the CLI).
NMI_METHOD = f"k-means++, lowest inertia of {NMI_N_INIT} runs"


def _as_ks(k: int | Sequence[int]) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else k
    if not isinstance(ks, Sequence) or isinstance(ks, str) or len(ks) == 0:
        raise TypeError(f"k must be an int or a non-empty sequence of ints, got {k!r}")
    for v in ks:
        check_k(v, 2**62, "any set")
    return tuple(sorted({int(v) for v in ks}))


def _count_relevant(
    query_labels: torch.Tensor, reference_labels: torch.Tensor, self_excluded: bool
) -> torch.Tensor:
    """``R`` per query: reference items sharing its label, itself not counted when ``self_excluded``."""
    classes, counts = torch.unique(reference_labels, return_counts=True)
    pos = torch.searchsorted(classes, query_labels).clamp_max(len(classes) - 1)
    found = classes[pos] == query_labels
    return torch.where(found, counts[pos], 0) - int(self_excluded)


def _mean_over(values: torch.Tensor, valid: torch.Tensor, name: str) -> float:
    if not bool(valid.any()):
        warnings.warn(
            f"{name}: no query has another item of its class in the reference set; returning nan",
            RuntimeWarning,
            stacklevel=3,
        )
        return float("nan")
    return float(values[valid].mean())


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    k: int | Sequence[int] = (1, 5),
    metric: Metric = "cosine",
    reference: ArrayLike | None = None,
    reference_labels: ArrayLike | None = None,
    include: Sequence[str] = INCLUDE,
    chunk_size: int | None = None,
    seed: int = 0,
    nmi_n_init: int = NMI_N_INIT,
    nmi_init: str = "k-means++",
) -> dict[str, float]:
    """Compute several retrieval metrics from a single k-NN pass.

    Definitions (``rel(i)`` = 1 if the i-th neighbour has the query's label; ``R`` = number of reference
    items of the query's class other than the query):

    * ``recall@k``: fraction of queries with ``rel(i) = 1`` for some ``i <= k`` (the deep-metric-learning
      Recall@K of Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016).
    * ``precision@1``: fraction of queries whose nearest neighbour has their label.
    * ``r_precision``: mean of ``(1/R) Σ_{i<=R} rel(i)``.
    * ``map@r``: mean of ``(1/R) Σ_{i<=R} P(i) rel(i)`` with ``P(i)`` the precision over the first ``i``
      neighbours (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020, §3.2,
      https://arxiv.org/abs/2003.08505).
    * ``nmi``: see :func:`nmi` (best of ``nmi_n_init`` k-means++ runs); computed on the query embeddings only.

    Queries with ``R = 0`` are left out of the neighbour-based metrics (see the module docstring).

    Args:
        embeddings: ``(N, D)`` query embeddings (tensor or array, computed in float32).
        labels: ``(N,)`` integer class ids of the queries.
        k: the K of ``recall@K``, an int or a sequence of ints; each at most the reference size.
        metric: ``"cosine"`` (rows L2-normalised, also before k-means for NMI), ``"ip"`` (raw inner
            product) or ``"l2"`` (Euclidean). ``"ip"`` and ``"l2"`` cluster the raw embeddings for NMI.
        reference: optional ``(M, D)`` gallery searched instead of the queries themselves; then no item is
            excluded from any list. Must come with ``reference_labels``.
        reference_labels: ``(M,)`` integer class ids of ``reference``.
        include: which metric families to compute, any of ``"recall"``, ``"precision_at_1"``,
            ``"r_precision"``, ``"map_at_r"``, ``"nmi"``.
        chunk_size: queries per k-NN block (``None``: automatic, ~64 MiB buffers); results do not depend
            on it.
        seed: random seed of the k-means used for NMI.
        nmi_n_init, nmi_init: ``n_init`` and ``init`` of :func:`nmi` (default: best of 10 k-means++ runs).

    Returns:
        A dict with keys among ``"recall@<k>"`` (one per k), ``"precision@1"``, ``"r_precision"``,
        ``"map@r"``, ``"nmi"``, each a Python float in [0, 1] (``nan`` if no query has a match to find).

    Raises:
        TypeError: non-tensor input, float labels, ``include`` not a sequence of names, non-int ``k``.
        ValueError: mismatched lengths or dimensions, NaN/inf embeddings, fewer than 2 items (without a
            reference), an empty set, ``k`` larger than the reference set, unknown metric/include names,
            ``reference`` without ``reference_labels`` or the reverse.

    Example:
        >>> emb, lab = torch.randn(200, 16), torch.randint(0, 5, (200,))
        >>> sorted(retrieval_metrics(emb, lab, k=(1, 2), include=("recall", "map_at_r")))
        ['map@r', 'recall@1', 'recall@2']
    """
    if isinstance(include, str) or not isinstance(include, Sequence):
        raise TypeError(f"include must be a sequence of metric names such as ('recall',), got {include!r}")
    if len(include) == 0:
        raise ValueError(f"include must name at least one metric among {INCLUDE}")
    for name in include:
        check_choice(name, INCLUDE, "each entry of include")
    check_choice(metric, METRICS, "metric")
    ks = _as_ks(k)
    if "nmi" in include:
        _check_nmi_settings(nmi_n_init, nmi_init, None, prefix="nmi_")

    query = as_embeddings(embeddings, "embeddings")
    query_labels = as_labels(labels, query.shape[0], "labels", "embeddings")
    if (reference is None) != (reference_labels is None):
        raise ValueError("reference and reference_labels must be given together (or both left out)")
    self_excluded = reference is None
    if reference is None:
        if query.shape[0] < 2:
            raise ValueError(f"need at least 2 items to evaluate retrieval, got {query.shape[0]}")
        ref, ref_labels = query, query_labels
    else:
        ref = as_embeddings(reference, "reference").to(query.device)
        ref_labels = as_labels(reference_labels, ref.shape[0], "reference_labels", "reference")
        if ref.shape[1] != query.shape[1]:
            raise ValueError(
                f"embeddings and reference must have the same dimension D, got {query.shape[1]} and {ref.shape[1]}"
            )
    ref_labels = ref_labels.to(query.device)
    query_labels = query_labels.to(query.device)
    available = ref.shape[0] - int(self_excluded)
    if "recall" in include:
        what = "the reference set" if reference is not None else "the number of other items"
        check_k(ks[-1], available, what)

    out: dict[str, float] = {}
    neighbour_metrics = [m for m in include if m != "nmi"]
    if neighbour_metrics:
        out.update(
            _neighbour_metrics(
                prepare(query, metric),
                query_labels,
                prepare(ref, metric) if reference is not None else None,
                ref_labels,
                ks,
                metric,
                neighbour_metrics,
                chunk_size,
            )
        )
    if "nmi" in include:
        out["nmi"] = _nmi(
            prepare(query, metric), query_labels, seed=seed, n_init=int(nmi_n_init), init=nmi_init, niter=None
        )
    return out


def _neighbour_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor | None,
    reference_labels: torch.Tensor,
    ks: tuple[int, ...],
    metric: str,
    include: list[str],
    chunk_size: int | None,
) -> dict[str, float]:
    self_excluded = reference is None
    ref = query if reference is None else reference
    relevant = _count_relevant(query_labels, reference_labels, self_excluded)
    valid = relevant > 0
    need_r = "r_precision" in include or "map_at_r" in include
    # Each query is searched only as deep as it needs: its R (R-Precision, MAP@R) or the largest recall k.
    # Queries are taken in order of that depth, so every block's k is tight: on long-tailed data most
    # queries need far fewer neighbours than the largest class.
    k_floor = ks[-1] if "recall" in include else 1
    depth = relevant.clamp_min(k_floor) if need_r else torch.full_like(relevant, k_floor)
    order = torch.argsort(depth, stable=True)
    backend = resolve_backend("auto", query.device)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    n = query.shape[0]
    per_query = {
        name: torch.zeros(n, dtype=torch.float64, device=query.device)
        for name in [f"recall@{kk}" for kk in ks if "recall" in include]
        + [m for m in ("precision@1", "r_precision", "map@r") if m.replace("@", "_at_") in include]
    }
    searcher = ExactSearcher(ref, metric=metric, backend=backend)
    for start, stop in _depth_blocks(depth[order], chunk_size, ref.shape[0], backend):
        rows = order[start:stop]
        k_block = int(depth[rows].max())
        _, indices = searcher.search(query[rows], k_block, rows if self_excluded else None)
        hits = reference_labels[indices] == query_labels[rows, None]  # (c, k_block) rel(i)
        if "recall" in include:
            # 0-based rank of the first hit (k_block if none)
            first_hit = torch.where(hits.any(1), hits.to(torch.int8).argmax(1), k_block)
            for kk in ks:
                per_query[f"recall@{kk}"][rows] = (first_hit < kk).to(torch.float64)
        if "precision_at_1" in include:
            per_query["precision@1"][rows] = hits[:, 0].to(torch.float64)
        if need_r:
            r = relevant[rows]
            ranks = torch.arange(1, k_block + 1, device=query.device, dtype=torch.float64)
            in_r = hits & (ranks[None, :] <= r[:, None])  # rel(i) for i <= R
            denom = r.clamp_min(1).to(torch.float64)
            if "r_precision" in include:
                per_query["r_precision"][rows] = in_r.sum(1).to(torch.float64) / denom
            if "map_at_r" in include:
                precision_at_i = in_r.cumsum(1).to(torch.float64) / ranks  # P(i)
                per_query["map@r"][rows] = (precision_at_i * in_r).sum(1) / denom
    return {name: _mean_over(values, valid, name) for name, values in per_query.items()}


def _depth_blocks(
    sorted_depth: torch.Tensor, chunk_size: int | None, n_reference: int, backend: str
) -> list[tuple[int, int]]:
    """Split queries sorted by search depth into blocks of similar depth (at most 1.5× the block's first).

    Each block holds at most ``chunk_size`` queries (default: ~64 MiB of buffers at the block's depth).
    """
    blocks, start, n = [], 0, sorted_depth.shape[0]
    while start < n:
        cap = int(sorted_depth[start]) * 3 // 2
        rows = chunk_size or default_chunk_size(cap, n_reference, backend)
        same_depth = int(torch.searchsorted(sorted_depth, cap, right=True))
        stop = max(start + 1, min(n, start + rows, same_depth))
        blocks.append((start, stop))
        start = stop
    return blocks


def _nmi(
    embeddings: torch.Tensor, labels: torch.Tensor, *, seed: int, n_init: int, init: str, niter: int | None
) -> float:
    x = np.ascontiguousarray(embeddings.cpu().numpy(), dtype=np.float32)
    y = labels.cpu().numpy()
    n_classes = len(np.unique(y))
    if init == "random":
        # pml's FaissKMeans: points sampled as centroids, Lloyd iterations; nredo keeps the lowest objective.
        # min_points_per_centroid only sets when faiss prints a warning to stderr; it does not change the result.
        kmeans = faiss.Kmeans(
            x.shape[1], n_classes, niter=niter or 20, nredo=n_init, seed=seed, min_points_per_centroid=1
        )
        kmeans.train(x)
        _, assignment = kmeans.index.search(x, 1)
        clusters = assignment[:, 0]
    else:
        # k-means++ seeds (numpy), Lloyd iterations on every point (faiss), the lowest inertia of n_init runs:
        # scikit-learn's KMeans algorithm, ~10x faster here (5,000 x 1280: 0.5 s a run instead of 5 s).
        rng = np.random.default_rng(seed)
        runs = [_lloyd(x, _kmeans_plus_plus(x, n_classes, rng), niter or 300) for _ in range(n_init)]
        clusters = min(runs, key=lambda run: run[1])[0]  # the lowest inertia (the first of equals)
    return float(normalized_mutual_info_score(y, clusters))


def _lloyd(x: np.ndarray, init: np.ndarray, niter: int) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from centroids ``init`` over every row of ``x`` (faiss, which stops once the assignment
    no longer changes): ``(N,)`` cluster of each row and the inertia (sum of squared distances to its centroid)."""
    kmeans = faiss.Kmeans(
        x.shape[1],
        init.shape[0],
        niter=niter,
        min_points_per_centroid=1,
        max_points_per_centroid=x.shape[0],  # no subsampling: every point counts, as in scikit-learn
    )
    kmeans.train(x, init_centroids=init)
    distance, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0], float(distance.sum(dtype=np.float64))


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(k, D)`` greedy k-means++ seeds (Arthur & Vassilvitskii, SODA 2007; scikit-learn's greedy variant): each
    new centre is the best of ``2 + ln k`` candidates drawn with probability proportional to the squared distance
    to the nearest centre so far, "best" meaning the lowest total squared distance afterwards."""
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    first = int(rng.integers(n))
    centres = [first]
    nearest = np.maximum(sq - 2.0 * (x @ x[first]).astype(np.float64) + sq[first], 0.0)
    trials = 2 + int(np.log(k))
    for _ in range(1, k):
        total = nearest.sum()
        p = nearest / total if total > 0 else None  # all points on the centres: any point will do
        candidates = rng.choice(n, size=trials, p=p)
        d = sq[:, None] - 2.0 * (x @ x[candidates].T).astype(np.float64) + sq[candidates][None, :]
        after = np.minimum(nearest[:, None], np.maximum(d, 0.0))
        pick = int(np.argmin(after.sum(axis=0)))
        nearest = after[:, pick]
        centres.append(int(candidates[pick]))
    return np.ascontiguousarray(x[centres])


def _check_nmi_settings(n_init: object, init: object, niter: object, prefix: str = "") -> None:
    check_choice(str(init), NMI_INITS, f"{prefix}init")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"{prefix}n_init must be a positive int, got {n_init!r}")
    if niter is not None and (
        isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 1
    ):
        raise ValueError(f"niter must be a positive int or None, got {niter!r}")


def nmi(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    metric: Metric = "cosine",
    seed: int = 0,
    n_init: int = NMI_N_INIT,
    init: str = "k-means++",
    niter: int | None = None,
) -> float:
    """Normalised mutual information between the labels and a k-means clustering of the embeddings.

    k-means with as many clusters as distinct labels is run ``n_init`` times from different initialisations;
    the clustering of lowest inertia ``Σ_i ‖x_i - c(x_i)‖²`` is kept and every embedding assigned to its
    centroid. The score is ``I(Y; C) / ((H(Y) + H(C)) / 2)`` (sklearn's ``normalized_mutual_info_score``,
    arithmetic normalisation).

    The clustering, not the embeddings, is what makes NMI noisy: a single k-means run from randomly sampled
    points (pytorch-metric-learning's ``FaissKMeans``) often merges two classes and splits a third, so the same
    embeddings scored 0.64-0.83 across seeds. The default, k-means++ seeding (Arthur & Vassilvitskii, SODA
    2007) with the best of ``n_init = 10`` runs (scikit-learn's ``KMeans`` algorithm: greedy k-means++ seeds,
    Lloyd iterations over every point -- run by faiss, ~10x faster than scikit-learn here), finds the same
    clustering for any
    seed on well-separated classes; the tests check that and the remaining spread on overlapping ones.

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class ids.
        metric: ``"cosine"`` clusters L2-normalised rows; ``"ip"``/``"l2"`` cluster the raw embeddings.
        seed: k-means seed.
        n_init: k-means runs; the one of lowest inertia is scored.
        init: ``"k-means++"`` (the default) or ``"random"`` (faiss ``Kmeans`` with
            ``nredo = n_init``, at most 256 points per cluster sampled for training: pytorch-metric-learning's
            settings; ``n_init=1, seed=1234, niter=20`` reproduces its NMI).
        niter: k-means iterations at most [default: 300 for k-means++ (scikit-learn's), 20 for random (pml's)].

    Returns:
        NMI in [0, 1].

    Raises:
        TypeError / ValueError: as :func:`retrieval_metrics`; also fewer than 2 items, ``n_init`` or ``niter``
        not a positive int, an unknown ``init``.
    """
    check_choice(metric, METRICS, "metric")
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, x.shape[0], "labels", "embeddings")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 items to compute NMI, got {x.shape[0]}")
    _check_nmi_settings(n_init, init, niter)
    return _nmi(prepare(x, metric), y, seed=seed, n_init=int(n_init), init=init, niter=niter)


class RetrievalOptions(TypedDict, total=False):
    """The keyword options of the single-metric functions, passed on to :func:`retrieval_metrics` (their
    defaults are there)."""

    metric: Metric
    reference: ArrayLike | None
    reference_labels: ArrayLike | None
    chunk_size: int | None


def recall_at_k(
    embeddings: ArrayLike,
    labels: ArrayLike,
    k: int | Sequence[int] = (1, 2, 4, 8),
    **options: Unpack[RetrievalOptions],
) -> dict[int, float]:
    """Recall@K for each K: the fraction of queries with a same-class item among their K nearest neighbours.

    Arguments and conventions as :func:`retrieval_metrics`. Returns ``{K: recall}``.
    """
    values = retrieval_metrics(embeddings, labels, k=k, include=("recall",), **options)
    return {int(key.split("@")[1]): v for key, v in values.items()}


def precision_at_1(embeddings: ArrayLike, labels: ArrayLike, **options: Unpack[RetrievalOptions]) -> float:
    """Fraction of queries whose nearest neighbour shares their label; see :func:`retrieval_metrics`."""
    return retrieval_metrics(embeddings, labels, include=("precision_at_1",), **options)["precision@1"]


def r_precision(embeddings: ArrayLike, labels: ArrayLike, **options: Unpack[RetrievalOptions]) -> float:
    """R-Precision: mean over queries of the share of same-class items among the first R neighbours.

    ``R`` is the number of other reference items of the query's class; see :func:`retrieval_metrics`.
    """
    return retrieval_metrics(embeddings, labels, include=("r_precision",), **options)["r_precision"]


def map_at_r(embeddings: ArrayLike, labels: ArrayLike, **options: Unpack[RetrievalOptions]) -> float:
    """MAP@R of Musgrave et al. 2020 (§3.2): mean over queries of ``(1/R) Σ_{i<=R} P(i) rel(i)``.

    ``P(i)`` is the precision over the first ``i`` neighbours and ``rel(i)`` whether the i-th neighbour
    shares the query's label; ``R`` is the number of other reference items of the query's class. Queries
    with ``R = 0`` are left out. See :func:`retrieval_metrics` for the arguments.
    """
    return retrieval_metrics(embeddings, labels, include=("map_at_r",), **options)["map@r"]
