"""Approximate all-pairs range search and k-NN over many embeddings, verified or re-ranked exactly.

For near-duplicate search and the kNN OOD score on collections where the exact scan (``N^2 D``) takes hours.

**Cosine via a reduced L2 index.** Rows are L2-normalised (``u = x / ‖x‖``); for unit vectors
``cos(u, v) >= t  <=>  ‖u - v‖² <= 2 - 2t``. An optional PCA to ``pca_dim`` dimensions (faiss ``PCAMatrix``, an
orthogonal projection ``P``, no whitening) only shrinks distances, ``‖P(u - v)‖ <= ‖u - v‖``, and one more coordinate, the
norm of what PCA leaves out, ``r(u) = ‖u_c - PᵀP u_c‖`` (``u_c`` = ``u`` minus the PCA mean), tightens the bound
without breaking it: ``‖P(u - v)‖² + (r(u) - r(v))² <= ‖u - v‖²`` (Pythagoras, then the reverse triangle
inequality on the left-out part). So every pair with ``cos >= t`` is still within ``2 - 2t`` in the reduced space:
PCA adds candidates (pairs whose difference lies mostly in the dropped directions), it never loses a pair. The
reduced rows go into an ``IndexIVFFlat`` (L2; k-means lists trained on a sample); a query scans the ``nprobe``
nearest lists, which is where pairs are lost (pairs whose two rows fall in lists far apart). Every candidate is
then checked with its exact full-dimensional cosine, so what is returned is exact: the approximation only costs
recall (each row checks its ``candidates`` nearest rows inside the radius, or all of them when there are more), which :func:`pair_recall` / :func:`knn_recall` measure against a brute-force scan of a sample of rows.

For k-NN, ``candidates * k`` neighbours are taken in the reduced space and re-ranked by exact cosine.

Memory: the reduced rows (``N x pca_dim`` float32) and the index; the full rows are read in chunks (a
``numpy.memmap`` works) and only the candidates' rows are gathered.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from frugalvision.index.faiss_index import CHUNK_BYTES, default_nlist

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_PCA_DIM",
    "KNN_CANDIDATES",
    "KNN_PCA_DIM",
    "ReducedIndex",
    "approximate_knn",
    "exact_knn",
    "knn_nprobe",
    "knn_recall",
    "pair_recall",
    "similar_pairs",
]

DEFAULT_PCA_DIM = 128
DEFAULT_NPROBE = 16
DEFAULT_CANDIDATES = 32
_TRAIN_PER_LIST = 40
_MIN_TRAIN = 10_000
# k-NN (the kNN OOD score) ranks k = 50 neighbours, where near duplicates only test a radius: it needs more of the
# spectrum and more lists. Chosen with benchmarks/scale_knn.py on 50,000 x 1280 embedding-like rows (recall@50 of
# PCA 128 / nprobe 16 / 2 x k candidates: 0.794; PCA 256 / 64 of 447 lists / 4 x k: 0.966), checked on 200,000 rows
# (0.673 -> 0.947, with 128 of 894 lists: the lists scanned must grow with the lists).
KNN_PCA_DIM = 256
KNN_CANDIDATES = 4
_KNN_LISTS_PER_PROBE = 7


def knn_nprobe(nlist: int) -> int:
    """Lists scanned per k-NN query by default: ``ceil(nlist / 7)`` (at least 1), a fixed share of the lists."""
    return max(1, -(-int(nlist) // _KNN_LISTS_PER_PROBE))


def _rows_per_chunk(dim: int) -> int:
    return max(1, CHUNK_BYTES // (4 * dim))


def unit_rows(source: Any, start: int, stop: int, name: str = "embeddings") -> np.ndarray:
    """Rows ``[start, stop)`` of ``source`` as L2-normalised float32, checked for NaN (named by row)."""
    x = np.array(source[start:stop], dtype=np.float32)
    return _normalise(x, name, start)


def _normalise(
    x: np.ndarray, name: str, first_row: int | None = None, rows: np.ndarray | None = None
) -> np.ndarray:
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        row = rows[i] if rows is not None else (first_row or 0) + i
        raise ValueError(f"{name} row {int(row)} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def gather_unit_rows(source: Any, ids: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """``source[ids]`` L2-normalised; read in increasing order (one pass over a memory map)."""
    unique, where = np.unique(ids, return_inverse=True)
    return _normalise(np.array(source[unique], dtype=np.float32), name, rows=unique)[where]


def _check_source(source: Any, name: str) -> tuple[int, int]:
    if not hasattr(source, "shape") or len(source.shape) != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got {type(source).__name__}")
    count, dim = (int(v) for v in source.shape)
    if count == 0 or dim == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(source.shape)}")
    return count, dim


class ReducedIndex:
    """Normalised rows of ``source``, optionally PCA-reduced, in an L2 ``IndexIVFFlat`` (see the module docstring).

    Args:
        source: ``(N, D)`` rows (array or memory map), normalised here.
        pca_dim: reduce to this many dimensions when ``D`` is larger (``None``: no PCA).
        nlist: IVF lists; default half :func:`~frugalvision.index.default_nlist` of ``N`` (about ``2 sqrt(N)``),
            trained on ``40 nlist`` rows: 2,000 lists at 1M rows.
        nprobe: lists scanned per query.
        seed: draw of the training sample.
    """

    def __init__(
        self,
        source: Any,
        *,
        pca_dim: int | None = DEFAULT_PCA_DIM,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        seed: int = 0,
        name: str = "embeddings",
    ) -> None:
        count, dim = _check_source(source, name)
        self.count, self.dim, self.name = count, dim, name
        nlist = max(1, default_nlist(count) // 2) if nlist is None else int(nlist)
        if not 1 <= nlist <= count:
            raise ValueError(f"nlist must be in [1, {count}], got {nlist}")
        rng = np.random.default_rng(seed)
        size = min(
            count, max(_TRAIN_PER_LIST * nlist, _MIN_TRAIN)
        )  # k-means costs size x nlist x 10 iterations
        sample_rows = np.sort(rng.choice(count, size, replace=False)) if size < count else np.arange(count)
        sample = gather_unit_rows(source, sample_rows, name)
        self.pca: Any = None
        if pca_dim is not None and pca_dim < dim:
            self.pca = faiss.PCAMatrix(dim, int(pca_dim), 0.0, False)  # orthogonal: distances only shrink
            self.pca.train(sample)
            self.pca_mean = faiss.vector_to_array(self.pca.mean).astype(np.float32)
            sample = self.reduce(sample)
        self.reduced_dim = int(sample.shape[1])  # pca_dim + 1 (the residual norm), or D
        self.index: Any = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.reduced_dim), self.reduced_dim, nlist)
        self.index.cp.min_points_per_centroid = 1
        self.index.cp.niter = 10  # faiss's default 25 costs 2.5x for lists that only route queries
        self.index.train(np.ascontiguousarray(sample))
        self.index.nprobe = min(int(nprobe), nlist)
        del sample
        self.reduced = np.empty((count, self.reduced_dim), dtype=np.float32)
        self.inv_norm = np.empty(count, dtype=np.float32)  # 1 / ‖x_i‖, for exact cosines of gathered rows
        step = _rows_per_chunk(dim)
        for start in range(0, count, step):
            rows = np.array(source[start : start + step], dtype=np.float32)
            bad = ~np.isfinite(rows).all(1)
            if bad.any():
                raise ValueError(
                    f"{name} row {start + int(np.nonzero(bad)[0][0])} contains NaN or infinite values"
                )
            norms = np.linalg.norm(rows, axis=1)
            self.inv_norm[start : start + len(rows)] = 1.0 / np.maximum(norms, 1e-12)
            self.reduced[start : start + step] = self.reduce(
                rows * self.inv_norm[start : start + len(rows), None]
            )
        self.index.add(self.reduced)

    def cosines(
        self, source: Any, a: np.ndarray, b: np.ndarray, queries: np.ndarray | None = None
    ) -> np.ndarray:
        """Exact cosines of the row pairs ``(a[i], b[i])`` of ``source`` (or of unit ``queries[a[i]]`` and row
        ``b[i]``), a few MB of gathered rows at a time (large gathers are slow on a busy machine)."""
        out = np.empty(len(a), dtype=np.float32)
        step = max(256, (1 << 22) // (4 * self.dim))
        for start in range(0, len(a), step):
            ia, ib = a[start : start + step], b[start : start + step]
            right = np.asarray(source[ib], dtype=np.float32)
            if queries is None:
                left = np.asarray(source[ia], dtype=np.float32)
                scale = self.inv_norm[ia] * self.inv_norm[ib]
            else:
                left, scale = queries[ia], self.inv_norm[ib]
            out[start : start + step] = np.einsum("ij,ij->i", left, right) * scale
        return out

    def reduce(self, unit: np.ndarray) -> np.ndarray:
        """Normalised ``(n, D)`` rows in the reduced space: ``[P u_c, r(u)]`` with PCA, else ``u``."""
        if self.pca is None:
            return np.ascontiguousarray(unit, dtype=np.float32)
        kept = self.pca.apply(unit)
        centred = unit - self.pca_mean
        left_out = np.sum(centred * centred, axis=1) - np.sum(kept * kept, axis=1)  # ‖u_c‖² - ‖P u_c‖²
        residual = np.sqrt(np.maximum(left_out, 0.0))[:, None]
        return np.ascontiguousarray(np.hstack([kept, residual]), dtype=np.float32)


def similar_pairs(
    source: Any,
    threshold: float,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    pca_dim: int | None = DEFAULT_PCA_DIM,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    block: int = 4096,
    seed: int = 0,
    name: str = "embeddings",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pairs ``i < j`` of rows with cosine ``>= threshold``, found approximately, checked exactly.

    Each row takes its ``candidates`` nearest rows in the reduced IVF index; those beyond the radius
    ``2 - 2 threshold`` are dropped unchecked (they cannot be pairs: the reduction only shrinks distances), the
    others are checked with their exact cosine. A row whose ``candidates`` are all inside the radius (a large group
    of near-copies, or a dense region PCA squeezed) gets a range search for every row inside it, all checked: the
    work grows with such rows only, and they are counted.

    Returns:
        ``(first, second, similarity, dense_rows)``: ``(P,)`` int64, int64, float32 (unsorted; the exact cosines
        of the full rows), and the number of rows that needed the range search.
    """
    reduced = ReducedIndex(source, pca_dim=pca_dim, nlist=nlist, nprobe=nprobe, seed=seed, name=name)
    # squared L2 between unit vectors is 2 - 2 cos; a float32 margin keeps pairs at exactly the threshold
    radius = np.float32((2.0 - 2.0 * threshold) * (1 + 1e-5) + 1e-6)
    take = min(int(candidates) + 1, reduced.count)  # + the row itself
    firsts, seconds, sims = [], [], []
    capped = 0
    for start in range(0, reduced.count, block):
        stop = min(start + block, reduced.count)
        dist, ids = reduced.index.search(reduced.reduced[start:stop], take)
        inside = (dist <= radius) & (ids >= 0)
        rows = np.broadcast_to(np.arange(start, stop)[:, None], ids.shape)
        keep = inside & (ids != rows)
        a, b = rows[keep], ids[keep].astype(np.int64)
        full = np.nonzero(inside[:, -1])[0] if take < reduced.count else np.zeros(0, np.int64)
        if full.size:  # more than `candidates` rows inside the radius: all of them, by a range search
            capped += int(full.size)
            lims, _, more = reduced.index.range_search(reduced.reduced[start + full], float(radius))
            extra_rows = np.repeat(start + full, np.diff(lims).astype(np.int64))
            other = extra_rows != more
            a = np.concatenate([a, extra_rows[other]])
            b = np.concatenate([b, more[other].astype(np.int64)])
        a, b = np.minimum(a, b), np.maximum(a, b)  # a pair may be seen from both rows: deduplicated below
        if a.size == 0:
            continue
        cos = reduced.cosines(source, a, b)
        ok = cos >= np.float32(threshold)
        firsts.append(a[ok])
        seconds.append(b[ok])
        sims.append(np.minimum(cos[ok], 1.0).astype(np.float32))
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32), capped
    a, b, s = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims)
    _, unique = np.unique(a * reduced.count + b, return_index=True)
    return a[unique], b[unique], s[unique], capped


def _similarities_to_all(source: Any, queries: np.ndarray, name: str) -> Any:
    """Yield ``(start, (Q, chunk) cosines)`` of unit ``queries`` against the rows of ``source``, chunk by chunk."""
    count, dim = _check_source(source, name)
    step = _rows_per_chunk(dim)
    for start in range(0, count, step):
        yield start, queries @ unit_rows(source, start, start + step, name).T


def pair_recall(
    source: Any,
    threshold: float,
    first: np.ndarray,
    second: np.ndarray,
    *,
    sample: int = 1000,
    seed: int = 0,
    name: str = "embeddings",
) -> dict[str, Any]:
    """Share of the exact pairs of ``sample`` random rows that ``(first, second)`` holds.

    The exact pairs come from a brute-force scan (``sample x N x D`` multiply-adds, chunked): every ``j != i``
    with ``cos(i, j) >= threshold`` for the sampled rows ``i``.

    Returns:
        ``{"recall": r or None (no exact pair in the sample), "exact_pairs": E, "sample_rows": S}``.
    """
    count, _ = _check_source(source, name)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(count, min(sample, count), replace=False))
    queries = gather_unit_rows(source, rows, name)
    expected: set[tuple[int, int]] = set()
    for start, sims in _similarities_to_all(source, queries, name):
        qi, cj = np.nonzero(sims >= np.float32(threshold))
        for i, j in zip(rows[qi].tolist(), (cj + start).tolist(), strict=True):
            if i != j:
                expected.add((min(i, j), max(i, j)))
    chosen = set(rows.tolist())
    has = np.isin(first, rows) | np.isin(second, rows)
    found = {
        (int(a), int(b)) for a, b in zip(first[has], second[has], strict=True) if a in chosen or b in chosen
    }
    recall = len(found & expected) / len(expected) if expected else None
    return {"recall": recall, "exact_pairs": len(expected), "sample_rows": len(rows)}


def approximate_knn(
    queries: Any,
    reference: Any,
    k: int,
    *,
    exclude_self: bool = False,
    candidates: int = KNN_CANDIDATES,
    pca_dim: int | None = KNN_PCA_DIM,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar reference rows of each query: ``candidates * k`` from the reduced IVF index,
    re-ranked by exact cosine.

    Args:
        exclude_self: ``queries`` is ``reference`` (row ``i`` = row ``i``): drop each row's own match.
        candidates, pca_dim, nlist: see :class:`ReducedIndex` (defaults :data:`KNN_CANDIDATES`,
            :data:`KNN_PCA_DIM`).
        nprobe: lists scanned per query; ``None``: :func:`knn_nprobe` of the index's lists.

    Returns:
        ``(similarities (Q, k) float32, descending; ids (Q, k) int64)``, ``-inf`` / ``-1`` where fewer were found.
    """
    reduced = ReducedIndex(
        reference, pca_dim=pca_dim, nlist=nlist, nprobe=nprobe or 1, seed=seed, name="reference"
    )
    if nprobe is None:
        reduced.index.nprobe = min(knn_nprobe(reduced.index.nlist), reduced.index.nlist)
    count_q, dim_q = _check_source(queries, "features")
    if dim_q != reduced.dim:
        raise ValueError(f"features have dimension {dim_q} but the reference has {reduced.dim}")
    wanted = k + int(exclude_self)
    take = min(reduced.count, max(wanted, candidates * wanted))
    block = max(1, (1 << 26) // (4 * reduced.dim * take))
    out_s = np.full((count_q, k), -np.inf, dtype=np.float32)
    out_i = np.full((count_q, k), -1, dtype=np.int64)
    for start in range(0, count_q, block):
        stop = min(start + block, count_q)
        q = unit_rows(queries, start, stop, "features")
        _, cand = reduced.index.search(reduced.reduce(q), take)
        if exclude_self:
            cand = np.where(cand == np.arange(start, stop)[:, None], -1, cand)
        found = cand >= 0
        rows = np.nonzero(found)[0]
        exact = np.full(cand.shape, -np.inf, dtype=np.float32)
        exact[found] = reduced.cosines(reference, rows, cand[found], queries=q)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        out_s[start:stop, : order.shape[1]] = np.take_along_axis(exact, order, 1)
        out_i[start:stop, : order.shape[1]] = np.where(
            np.isfinite(out_s[start:stop, : order.shape[1]]), np.take_along_axis(cand, order, 1), -1
        )
    return out_s, out_i


def exact_knn(
    queries: np.ndarray, reference: Any, k: int, *, self_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine k-NN of unit ``queries (Q, D)`` over ``reference`` rows, chunked; ``self_rows``: the
    reference row of each query to leave out (``-1``: none)."""
    _check_source(reference, "reference")
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, sims in _similarities_to_all(reference, queries, "reference"):
        ids = np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)
        if self_rows is not None:
            sims = np.where(ids == self_rows[:, None], -np.inf, sims)
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, ids], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_s, best_i


def knn_recall(
    queries: Any,
    reference: Any,
    k: int,
    found_ids: np.ndarray,
    found_sims: np.ndarray,
    *,
    exclude_self: bool = False,
    sample: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall of approximate k-NN results against brute force on ``sample`` random queries, and the largest
    error of the k-th similarity (what the kNN score uses).

    Returns:
        ``{"recall_at_k": r, "kth_similarity_max_error": e, "sample_queries": S}``.
    """
    count_q, _ = _check_source(queries, "features")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(count_q, min(sample, count_q), replace=False))
    exact_s, exact_i = exact_knn(
        gather_unit_rows(queries, rows, "features"), reference, k, self_rows=rows if exclude_self else None
    )
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found_ids[rows], exact_i, strict=True))
    error = float(np.max(np.abs(found_sims[rows, k - 1] - exact_s[:, k - 1])))
    return {
        "recall_at_k": hits / (k * len(rows)),
        "kth_similarity_max_error": error,
        "sample_queries": len(rows),
    }
