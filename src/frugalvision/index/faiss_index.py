"""A faiss index of embedding vectors plus their metadata (paths, labels, free-form info), saved atomically.

Four index kinds (Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs", 2017,
https://arxiv.org/abs/1702.08734):

* ``"flat"``: exact search (``IndexFlatIP`` / ``IndexFlatL2``), every query compared with every vector.
* ``"ivf"``: ``IndexIVFFlat``: k-means splits the vectors into ``nlist`` lists; a query scans only the
  ``nprobe`` lists with the nearest centroids. Approximate, much faster on large collections.
* ``"ivfpq"``: ``IndexIVFPQ``: the same lists, each vector stored as ``pq_m`` bytes of product-quantisation codes
  (Jégou, Douze & Schmid, "Product quantization for nearest neighbor search", TPAMI 2011): 16x smaller than
  float32 at 128-d with the default 4 dimensions per byte. Saved with its inverted lists in ``index.ivfdata``,
  memory-mapped when loaded (faiss's ``OnDiskInvertedLists``), so the index may exceed memory;
  :func:`frugalvision.index.build_on_disk` builds one shard by shard from a memory-mapped array.
* ``"hnsw"``: ``IndexHNSWFlat``: a navigable small-world graph (Malkov & Yashunin, "Efficient and robust
  approximate nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2018), ``hnsw_m``
  links per vector, ``ef_search`` candidates kept per query. No training; the vectors stay in memory.

Approximate kinds can keep the exact vectors (``rerank=True``, ``vectors.npy``, memory-mapped when loaded): a
query then takes ``rerank_factor * k`` candidates from the index and re-orders them by their exact scores. Each
approximate index measures its recall@10 against exact search when built (:attr:`EmbeddingIndex.recall`) and
keeps it in ``meta.json``.

Search settings left out (``None``, saved as ``null``) follow each search's ``k``: :func:`default_nprobe` (a 32nd
of the lists, at least 16), :func:`default_ef_search` (``clip(10 k, 64, 1024)``) and :func:`default_rerank_factor`
(20); values given are used as they are. :meth:`EmbeddingIndex.effective` says which values a search uses; they
are handed to faiss per call, so the index itself is never changed by a search.

On disk an index is a directory holding ``index.faiss`` (faiss's own format), ``meta.json`` and, depending on the
kind, ``index.ivfdata`` and ``vectors.npy``. ``meta.json``
records a ``checksum`` of every row's path, label and vector (:func:`frugalvision._integrity.rows_digest`), checked
at load (and ``vectors_checksum`` of ``vectors.npy``), so metadata edited, reordered or paired with another
``index.faiss`` is refused instead of giving hits
with wrong labels. A save that fails (a full disk) raises :class:`~frugalvision.errors.StoreError` naming the file
and keeps the previous index; what a killed save left beside the directory is removed by the next save.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import faiss
import numpy as np

from frugalvision._checks import check_choice
from frugalvision._fs import fsync, leftovers
from frugalvision._integrity import CHUNK_BYTES, read_rows, row_chunks, rows_digest, take_rows
from frugalvision.errors import StoreError

if TYPE_CHECKING:  # torch tensors are accepted, but torch is never imported here (the runtime has none)
    import torch

FORMAT = "frugalvision-embedding-index"
# 2: meta.json holds the rows' checksum; 3: kinds ivfpq and hnsw, recall, re-ranking vectors; 4: nprobe, ef_search
# and rerank_factor may be null (the defaults for each search's k)
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
IVF_DATA_FILE = "index.ivfdata"  # the inverted lists of an "ivfpq" index, memory-mapped
VECTORS_FILE = "vectors.npy"  # the exact vectors of an index built with rerank=True, memory-mapped
AUTO_IVF_MIN_COUNT = 100_000  # kind="auto" builds IVF from this many vectors on
MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below 39 training points per centroid
DEFAULT_HNSW_M = 32  # links per vector of an HNSW graph
DEFAULT_EF_CONSTRUCTION = 128  # candidates per insertion into an HNSW graph (faiss's default is 40)
DEFAULT_PQ_NBITS = 8
# Search settings used when none is given (None): functions of k and the list count, see default_nprobe,
# default_ef_search and default_rerank_factor for how they were chosen.
NPROBE_SHARE = 1 / 32  # share of the IVF lists scanned for k <= 10
NPROBE_MIN = 16
EF_SEARCH_PER_HIT = 10  # HNSW candidates per wanted hit...
EF_SEARCH_MIN = 64  # ...at least...
EF_SEARCH_MAX = 1024  # ...and at most
RERANK_FACTOR = 20  # re-ranked candidates per wanted hit
LEGACY_EF_SEARCH, LEGACY_RERANK_FACTOR = 64, 4  # what a format-2 index implies (it had no such fields)
RECALL_K = 10
DEFAULT_RECALL_QUERIES = 1000
TRAIN_POINTS_PER_LIST = (
    64  # default training sample of IVF kinds: 64 vectors per list (faiss uses at most 256)
)

IndexMetric = Literal["ip", "l2"]
IndexKind = Literal["auto", "flat", "ivf", "ivfpq", "hnsw"]
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
IVF_KINDS = ("ivf", "ivfpq")
_FAISS_TYPES: dict[str, type] = {
    "flat": faiss.IndexFlat,
    "ivf": faiss.IndexIVFFlat,
    "ivfpq": faiss.IndexIVFPQ,
    "hnsw": faiss.IndexHNSWFlat,
}
_FAISS_METRIC = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_NO_DIRECT_MAP: int = faiss.DirectMap.NoMap  # type: ignore[attr-defined]  # missing from faiss's stubs


def _is_torch_tensor(x: object) -> bool:
    """True for a ``torch.Tensor``, without importing torch (it is loaded already if ``x`` is one)."""
    import sys

    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(x, torch_module.Tensor)


def _as_vectors(x: object, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` (tensor or array, ``(N, D)``) as a C-contiguous float32 array, checked."""
    if _is_torch_tensor(x):
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have dimension {dim} like the indexed vectors, got shape {x.shape}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise ValueError(f"{name} contains {int((~finite).sum())} NaN or infinite value(s)")
    return out


def _as_strings(values: Sequence[str] | None, name: str, count: int) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of str, got {type(values).__name__}")
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but there are {count} vectors; they must match")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")
    return list(values)


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _as_ids(ids: object, name: str, count: int, *, allow_missing: bool = False) -> np.ndarray:
    """``ids`` as a 1-D int64 array of row numbers in ``[0, count)``; ``allow_missing`` also lets ``-1`` through."""
    arr = ids.detach().cpu().numpy() if _is_torch_tensor(ids) else np.asarray(ids)  # type: ignore[attr-defined]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(
            f"{name} must be a 1-D sequence of integer ids, got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    low = -1 if allow_missing else 0
    bad = (arr < low) | (arr >= count)
    if bad.any():
        also = " or -1 (not indexed)" if allow_missing else ""
        raise ValueError(f"{name} must be ids in [0, {count}){also}, got {int(arr[bad][0])}")
    return arr


def default_nlist(count: int) -> int:
    """About ``4 sqrt(N)`` lists, but no more than ``N // 39`` so each list gets 39 training points."""
    return max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int, k: int = RECALL_K) -> int:
    """IVF lists scanned for ``k`` hits when no ``nprobe`` is given: ``clip(ceil(nlist s max(1, k/10)), 16, nlist)``.

    ``s`` = :data:`NPROBE_SHARE` = 1/32: a fixed share of the lists (the lists scanned must grow with the lists:
    with ``4 sqrt(N)`` lists each holds ``sqrt(N) / 4`` vectors), at least :data:`NPROBE_MIN`, more for more hits.
    Chosen with ``benchmarks/scale_faiss.py`` on 200,000 x 128 clustered vectors (1,789 lists; recall@10 of queries
    around the indexed centres / around other centres): nprobe 16: 1.000 / 0.537, 32: 1.000 / 0.650,
    56 (1/32): 1.000 / 0.748, 128: 1.000 / 0.864, 256: 1.000 / 0.940, at 1,842 / 1,311 / 848 / 457 / 237
    queries/s (batch 64; exact search: 55); confirmed on another distribution (Zipf-sized anisotropic clusters,
    200,000 x 192): 16: 0.863, 32: 0.929, 56: **0.963**, 128: 0.992.
    """
    share = math.ceil(int(nlist) * NPROBE_SHARE * max(1.0, int(k) / RECALL_K))
    return max(1, min(int(nlist), max(NPROBE_MIN, share)))


def default_ef_search(k: int = RECALL_K) -> int:
    """HNSW candidates kept for ``k`` hits when no ``ef_search`` is given: ``clip(10 k, 64, 1024)``, at least ``k``.

    pgvector's rule (:func:`frugalvision.vectordb.default_ef_search`) with faiss's former fixed 64 as the floor:
    100 for ``k = 10``. With :data:`DEFAULT_EF_CONSTRUCTION` 128 (faiss's own default is 40), on 200,000 x 128
    clustered vectors (``benchmarks/scale_faiss.py``, M 32; recall@10 of queries around the indexed centres /
    around other centres): ef_search 64: 1.000 / 0.634, 100: 1.000 / 0.745, 200: 1.000 / 0.890 (efConstruction 40:
    0.996 / 0.391, 0.997 / 0.503, 0.998 / 0.696). Confirmed on Zipf-sized anisotropic clusters, 200,000 x 192:
    ef_search 64 / 100 / 200: 0.963 / **0.983** / 0.995 (efConstruction 40: 0.938 / 0.962 / 0.981), for a build
    1.8x as long (405 s against 221 s on a busy 2-core machine).
    """
    return max(int(k), min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, EF_SEARCH_PER_HIT * int(k))))


def default_rerank_factor(k: int = RECALL_K) -> int:
    """Candidates per wanted hit re-ranked by exact score when no ``rerank_factor`` is given (``k`` unused: the
    candidates already grow with ``k``).

    ``benchmarks/scale_faiss.py``, IVF-PQ with one byte per 4 dimensions at the default nprobe, recall@10 for
    factors 1 / 4 / 10 / 20 against IVF-flat's at the same nprobe: 200,000 x 128 clustered (the tuning set) queries
    around the indexed centres 0.592 / 0.994 / 1.000 / 1.000 (1.000), around other centres 0.450 / 0.689 / 0.739 /
    0.746 (0.748) -- 10 was enough there; the confirmation set (Zipf-sized anisotropic clusters, 200,000 x 192)
    did not confirm it: 0.489 / 0.786 / 0.895 / 0.940 (0.963), its codes lose more, hence 20 (reading 20 k rows of
    ``vectors.npy`` per query). Denser data need more: on 10,000,000 x 128 clustered vectors (2,441 per centre,
    ``benchmarks/scale.py``) the 20 x 10 candidates held 0.768 of the 10 nearest (1,000,000: 0.997); raise
    ``rerank_factor`` or ``pq_m`` there and check the recall recorded in the index.
    """
    del k
    return RERANK_FACTOR


@dataclass(frozen=True)
class SearchResult:
    """Hits of ``Q`` queries.

    Attributes:
        scores: ``(Q, k)`` float32; inner products (higher is closer) for an ``"ip"`` index, squared L2
            distances (lower is closer) for ``"l2"``. ``-inf`` / ``+inf`` where there is no hit.
        ids: ``(Q, k)`` int64 row numbers of the hits in the index, ``-1`` where fewer than ``k`` were found.
    """

    scores: np.ndarray
    ids: np.ndarray
    _paths: list[str] | None
    _labels: list[str] | None

    def _lookup(self, values: list[str] | None, what: str) -> list[list[str | None]]:
        if values is None:
            raise StoreError(f"this index stores no {what}; pass {what}=... to EmbeddingIndex.build")
        return [[values[i] if i >= 0 else None for i in row] for row in self.ids.tolist()]

    @property
    def paths(self) -> list[list[str | None]]:
        """``Q`` lists of the hits' paths (``None`` for missing hits)."""
        return self._lookup(self._paths, "paths")

    @property
    def labels(self) -> list[list[str | None]]:
        """``Q`` lists of the hits' labels (``None`` for missing hits)."""
        return self._lookup(self._labels, "labels")


def default_pq_m(dim: int) -> int:
    """Product-quantisation bytes per vector: one per 4 dimensions (the smallest sub-vector of 4+ dims dividing ``D``)."""
    for sub in range(4, dim + 1):
        if dim % sub == 0:
            return dim // sub
    return 1  # dim < 4


class _SearchSetting:
    """A search setting of :class:`EmbeddingIndex` (an attribute): a positive int as given, or ``None`` for the
    default of each search's ``k``; checked when set."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _SearchSetting: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> int | None: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _SearchSetting | int | None:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: object, value: int | None) -> None:
        setattr(obj, self.slot, None if value is None else _positive_int(value, self.name))


class EmbeddingIndex:
    """Vectors in a faiss index, with optional per-vector paths and labels and a free-form ``info`` dict.

    Build with :meth:`build` (in memory) or :func:`frugalvision.index.build_on_disk` (``"ivfpq"`` from a
    memory-mapped array, shard by shard), query with :meth:`search` / :meth:`search_by_id`, persist with
    :meth:`save` and :meth:`load`. Row ``i`` of the built vectors has id ``i``.

    For cosine similarity, L2-normalise the vectors (and the queries) and use ``metric="ip"``.

    Example:
        >>> vectors = np.random.default_rng(0).standard_normal((1000, 32)).astype("float32")
        >>> index = EmbeddingIndex.build(vectors, paths=[f"img{i}.jpg" for i in range(1000)])
        >>> hits = index.search(vectors[:2], k=3, exclude_ids=[0, 1])
        >>> hits.ids.shape, len(hits.paths[0])
        ((2, 3), 3)
    """

    def __init__(
        self,
        index: Any,
        *,
        metric: IndexMetric,
        kind: str,
        nprobe: int | None,
        paths: list[str] | None,
        labels: list[str] | None,
        info: dict[str, Any],
        ef_search: int | None = None,
        vectors: np.ndarray | None = None,
        rerank_factor: int | None = None,
        recall: dict[str, Any] | None = None,
    ) -> None:
        """Wrap an existing faiss index; use :meth:`build` or :meth:`load` rather than calling this."""
        self._index: Any = index  # a faiss.IndexFlat, IndexIVFFlat, IndexIVFPQ or IndexHNSWFlat
        self._metric = metric
        self._kind = kind
        self._paths = paths
        self._labels = labels
        self._info = info
        self._vectors = vectors  # exact (N, D) float32 vectors for re-ranking, or None
        self._recall = recall
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.rerank_factor = rerank_factor

    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        *,
        paths: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        metric: IndexMetric = "ip",
        kind: IndexKind = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
        pq_nbits: int = DEFAULT_PQ_NBITS,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int | None = None,
        train_size: int | None = None,
        rerank: bool = False,
        rerank_factor: int | None = None,
        recall_queries: int = DEFAULT_RECALL_QUERIES,
        seed: int = 0,
        info: dict[str, Any] | None = None,
    ) -> EmbeddingIndex:
        """Index ``vectors`` in memory.

        Args:
            vectors: ``(N, D)`` vectors, stored as float32; row ``i`` gets id ``i``.
            paths: ``N`` strings (e.g. image paths) returned with the hits.
            labels: ``N`` strings (e.g. class names) returned with the hits.
            metric: ``"ip"`` (inner product; cosine for unit-norm vectors) or ``"l2"`` (squared Euclidean).
            kind: ``"flat"`` (exact), ``"ivf"``, ``"ivfpq"`` (k-means lists trained on a sample of ``vectors``),
                ``"hnsw"`` (graph) or ``"auto"`` (flat below 100,000 vectors, IVF from there on).
            nlist: IVF lists; default ``round(4 sqrt(N))`` capped at ``N // 39`` (see :func:`default_nlist`).
                Must be ``<= N``; fewer than 39 vectors per list triggers a warning (poor k-means).
            nprobe: lists scanned per IVF query (saved with the index; can be changed later via the
                ``nprobe`` attribute). Higher is slower and more accurate; ``nprobe = nlist`` is exact.
                ``None``: :func:`default_nprobe` of the lists and each search's ``k`` (a 32nd of the lists, at
                least 16, for ``k <= 10``).
            pq_m: ``"ivfpq"``: bytes (sub-quantisers) per vector, dividing ``D``; default one per 4 dimensions
                (:func:`default_pq_m`).
            pq_nbits: ``"ivfpq"``: bits per sub-quantiser code (``2 ** pq_nbits`` centroids each, trained on at
                least that many vectors).
            hnsw_m: ``"hnsw"``: links per vector (memory ``~ 8 hnsw_m`` bytes per vector on top of the vectors).
            ef_construction: ``"hnsw"``: candidates kept while inserting a vector (higher builds a better graph,
                more slowly; faiss's own default is 40).
            ef_search: ``"hnsw"``: candidates kept per query (the ``ef_search`` attribute; higher is slower and
                more accurate; at least ``k`` are kept). ``None``: :func:`default_ef_search` of each search's ``k``
                (``clip(10 k, 64, 1024)``).
            train_size: IVF kinds: vectors (a random sample) the k-means and PQ codebooks are trained on;
                default ``64 nlist`` (at least ``2 ** pq_nbits``), at most ``N``.
            rerank: approximate kinds: keep the exact vectors (saved as ``vectors.npy``) and re-order
                ``rerank_factor * k`` candidates by their exact scores.
            rerank_factor: candidates per wanted hit when re-ranking (the ``rerank_factor`` attribute; 1 = off;
                ``None``: :func:`default_rerank_factor`, 20).
            recall_queries: approximate kinds: measure recall@10 against exact search with this many vectors
                as queries, drawn from the rows not used for training where there are enough
                (:attr:`recall`; 0 = skip). Costs ``recall_queries x N x D`` multiply-adds.
            seed: random draws of the training sample and the recall queries.
            info: JSON-serialisable dict saved with the index (e.g. backbone and preprocessing).

        Raises:
            TypeError / ValueError: bad shapes, NaN values, empty ``vectors``, length mismatches, unknown
                ``metric``/``kind``, bad ``nlist``/``nprobe``/``pq_m``/``hnsw_m``..., ``info`` not
                JSON-serialisable.
        """
        check_choice(metric, tuple(_FAISS_METRIC), "metric")
        check_choice(kind, ("auto", *KINDS), "kind")
        x = _as_vectors(vectors, "vectors")
        count, dim = x.shape
        if count == 0:
            raise ValueError("cannot build an index from 0 vectors")
        paths_list = _as_strings(paths, "paths", count)
        labels_list = _as_strings(labels, "labels", count)
        info_dict = _json_copy(info if info is not None else {}, "info")
        resolved = kind if kind != "auto" else ("ivf" if count >= AUTO_IVF_MIN_COUNT else "flat")
        if kind == "auto" and resolved == "flat":
            nlist = None  # auto: the lists apply only once the collection is large enough for IVF
        _check_kind_options(resolved, nlist=nlist, pq_m=pq_m, rerank=rerank)
        rng = np.random.default_rng(seed)
        train_rows = np.arange(count)
        if resolved == "flat":
            index: Any = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        elif resolved == "hnsw":
            index = new_hnsw(dim, metric, hnsw_m, ef_construction)
        else:
            nlist = _check_nlist(nlist, count)
            train_rows = training_rows(count, nlist, train_size, pq_nbits if resolved == "ivfpq" else 0, rng)
            index = train_ivf(x[train_rows], metric, nlist, resolved, pq_m=pq_m, pq_nbits=pq_nbits)
        index.add(x)
        if resolved in IVF_KINDS:
            index.make_direct_map()  # lets search_by_id / reconstruct fetch stored vectors
        built = cls(
            index,
            metric=metric,
            kind=resolved,
            nprobe=nprobe,
            paths=paths_list,
            labels=labels_list,
            info=info_dict,
            ef_search=ef_search,
            vectors=x if rerank else None,
            rerank_factor=rerank_factor,
        )
        if resolved != "flat":
            built._recall = measure_recall(built, x, recall_queries, exclude_rows=train_rows, rng=rng)
        return built

    # -- properties -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        extra = ""
        auto = "None (default)"
        if self._kind in IVF_KINDS:
            extra = f", nlist={self.nlist}, nprobe={self.nprobe or auto}"
        elif self._kind == "hnsw":
            extra = f", ef_search={self.ef_search or auto}"
        if self._vectors is not None:
            extra += f", rerank_factor={self.rerank_factor or auto}"
        return f"EmbeddingIndex(count={len(self)}, dim={self.dim}, metric={self._metric!r}, kind={self._kind!r}{extra})"

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def nlist(self) -> int | None:
        return int(self._index.nlist) if self._kind in IVF_KINDS else None

    @property
    def params(self) -> dict[str, int]:
        """The kind's build parameters (``nlist``, ``pq_m``, ``pq_nbits``, ``hnsw_m``, ``ef_construction``), as saved
        in ``meta.json``."""
        if self._kind == "ivf":
            return {"nlist": int(self._index.nlist)}
        if self._kind == "ivfpq":
            pq = self._index.pq
            return {"nlist": int(self._index.nlist), "pq_m": int(pq.M), "pq_nbits": int(pq.nbits)}
        if self._kind == "hnsw":
            hnsw = self._index.hnsw
            return {"hnsw_m": int(hnsw.nb_neighbors(1)), "ef_construction": int(hnsw.efConstruction)}
        return {}

    nprobe = _SearchSetting(
        """IVF lists scanned per query, as given (ignored by other kinds); ``None``: :func:`default_nprobe` of each
        search's ``k`` (see :meth:`effective`)."""
    )
    ef_search = _SearchSetting(
        """HNSW candidates kept per query, as given (ignored by other kinds); ``None``: :func:`default_ef_search` of
        each search's ``k`` (see :meth:`effective`)."""
    )
    rerank_factor = _SearchSetting(
        """Candidates per wanted hit re-ranked by exact score (only with stored exact vectors; 1 = off), as given;
        ``None``: :func:`default_rerank_factor`."""
    )

    @property
    def reranks(self) -> bool:
        """Whether the index keeps the exact vectors and re-ranks its candidates with them."""
        return self._vectors is not None and self.effective()["rerank_factor"] > 1

    def effective(self, k: int = RECALL_K) -> dict[str, int]:
        """The search settings a search for ``k`` hits uses: the values given, else the defaults for ``k``.

        ``{"nprobe": ...}`` (IVF kinds; at most ``nlist``), ``{"ef_search": ...}`` (``"hnsw"``; at least the
        candidates searched for), and ``"rerank_factor"`` (every kind; 1 when no exact vectors are kept).
        """
        k = _check_k(k)
        out: dict[str, int] = {}
        if self._vectors is None:
            factor = 1
        else:
            factor = self.rerank_factor if self.rerank_factor is not None else default_rerank_factor(k)
        if self._kind in IVF_KINDS:
            nlist = int(self._index.nlist)
            out["nprobe"] = min(nlist, self.nprobe if self.nprobe is not None else default_nprobe(nlist, k))
        elif self._kind == "hnsw":
            ef = self.ef_search if self.ef_search is not None else default_ef_search(k)
            out["ef_search"] = max(ef, k * factor)
        out["rerank_factor"] = factor
        return out

    def _search_params(self, k: int) -> Any:
        """faiss per-call search parameters for ``k`` hits (``None`` for flat): the index itself is not changed,
        so concurrent searches with different ``k`` do not interfere."""
        settings = self.effective(k)
        params: Any = None
        if "nprobe" in settings:
            params = faiss.SearchParametersIVF()
            params.nprobe = settings["nprobe"]
        elif "ef_search" in settings:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            params.efSearch = settings["ef_search"]
        return params

    @property
    def recall(self) -> dict[str, Any] | None:
        """Recall@10 against exact search measured when the index was built, or ``None`` (flat, or skipped).

        ``{"recall_at_10": r, "queries": Q, "held_out": bool, "nprobe"/"ef_search": ..., "rerank_factor": ...}``:
        ``r`` is the mean over ``Q`` stored vectors used as queries (each excluding itself) of the share of the
        exact 10 nearest found among the index's 10; ``held_out`` says the queries were not in the training
        sample. Measured with the search settings of the time; :func:`measure_recall` measures it again.
        """
        return self._recall

    @property
    def paths(self) -> list[str] | None:
        return self._paths

    @property
    def labels(self) -> list[str] | None:
        return self._labels

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    # -- search -----------------------------------------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray | torch.Tensor,
        k: int,
        *,
        exclude_ids: Sequence[int] | np.ndarray | None = None,
    ) -> SearchResult:
        """The ``k`` nearest indexed vectors of each query.

        Args:
            vectors: ``(Q, D)`` queries (same preprocessing as the indexed vectors, e.g. unit norm for ip).
            k: hits per query (``>= 1``; beyond the number of vectors, hits are padded with id ``-1``).
            exclude_ids: ``Q`` ids, one per query: query ``q``'s own id, removed from its hits, or ``-1`` for a
                query that is not indexed (nothing removed; :meth:`lookup` gives ``-1`` for those). Use it when
                the queries may be indexed items ("more like this one"). Removal is by id, so exact duplicates
                stored under other ids remain hits. ``k + 1`` neighbours are searched, then one dropped (the
                query's own id where it is among them, else the last).

        Returns:
            :class:`SearchResult` with ``scores (Q, k)`` (inner products, best first, for ``"ip"``; squared
            L2 distances, nearest first, for ``"l2"``), ``ids (Q, k)`` and the hits' ``paths``/``labels``.
            With re-ranking (:attr:`reranks`) the scores are exact; otherwise an ``"ivfpq"`` index gives
            the scores of its compressed vectors.
        """
        x = _as_vectors(vectors, "vectors", self.dim)
        k = _check_k(k)
        exclude = None
        if exclude_ids is not None:
            exclude = _as_ids(exclude_ids, "exclude_ids", len(self), allow_missing=True)
            if exclude.shape[0] != x.shape[0]:
                raise ValueError(
                    f"exclude_ids has {exclude.shape[0]} entries but there are {x.shape[0]} queries; give one id per query"
                )
        wanted = k + int(exclude is not None)
        settings = self.effective(k)
        params = self._search_params(k)
        if settings["rerank_factor"] > 1:
            scores, ids = self._reranked(x, wanted, settings["rerank_factor"], params)
        else:
            scores, ids = _search(self._index, x, wanted, params)
        if exclude is not None:
            is_self = (ids == exclude[:, None]) & (exclude[:, None] >= 0)  # -1 also pads missing hits
            is_self[~is_self.any(1), -1] = True
            scores = scores[~is_self].reshape(x.shape[0], k)
            ids = ids[~is_self].reshape(x.shape[0], k)
        scores[ids < 0] = -np.inf if self._metric == "ip" else np.inf
        return SearchResult(scores=scores, ids=ids, _paths=self._paths, _labels=self._labels)

    def _reranked(
        self, x: np.ndarray, wanted: int, factor: int, params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """``factor * wanted`` candidates from the index, re-ordered by exact score: ``(Q, wanted)`` each.

        Queries go in blocks so that the gathered candidate vectors take at most about 64 MB. Only the candidates'
        rows of the exact vectors are read (sorted, one read each, :func:`~frugalvision._integrity.take_rows`):
        through a memory map the pages around each row would be faulted in and stay resident, so the whole of a
        large ``vectors.npy`` would end up counted in the process's memory.
        """
        assert self._vectors is not None
        candidates = min(wanted * factor, max(wanted, len(self)))
        block = max(1, (1 << 26) // (4 * self.dim * candidates))
        scores = np.empty((x.shape[0], wanted), dtype=np.float32)
        ids = np.empty((x.shape[0], wanted), dtype=np.int64)
        worst = -np.inf if self._metric == "ip" else np.inf
        for start in range(0, x.shape[0], block):
            q = x[start : start + block]
            _, cand = _search(self._index, q, candidates, params)
            found = cand >= 0
            unique, where = np.unique(cand[found], return_inverse=True)
            stored = take_rows(self._vectors, unique)
            rows = np.nonzero(found)[0]
            exact = np.full(cand.shape, worst, dtype=np.float32)
            if self._metric == "ip":
                exact[found] = np.einsum("ij,ij->i", q[rows], stored[where])
            else:
                exact[found] = np.square(q[rows] - stored[where]).sum(1)
            order = np.argsort(-exact if self._metric == "ip" else exact, axis=1, kind="stable")[:, :wanted]
            got = np.take_along_axis(cand, order, 1)
            if got.shape[1] < wanted:  # fewer vectors than wanted
                pad = wanted - got.shape[1]
                got = np.pad(got, ((0, 0), (0, pad)), constant_values=-1)
                order = np.pad(order, ((0, 0), (0, pad)), constant_values=0)
            ids[start : start + len(q)] = got
            scores[start : start + len(q)] = np.take_along_axis(exact, order, 1)
        return scores, ids

    def search_by_id(
        self, ids: Sequence[int] | np.ndarray, k: int, *, exclude_self: bool = True
    ) -> SearchResult:
        """Search with stored vectors as queries; ``exclude_self`` drops each query's own id (see :meth:`search`)."""
        id_arr = _as_ids(ids, "ids", len(self))
        return self.search(self.reconstruct(id_arr), k, exclude_ids=id_arr if exclude_self else None)

    def lookup(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """The id of each of ``paths`` in the index, ``-1`` for a path that is not indexed: ``(len(paths),)`` int64.

        Paths are compared as files, not as strings: both sides are resolved (made absolute against the current
        folder, ``..`` and symbolic links followed), so ``photos/a.jpg``, ``./photos/a.jpg`` and its absolute
        path all find the row recorded as any of them. Stores record paths as the data reader gave them
        (relative to the folder ``embed`` ran in when the data set was named relatively), so a relative record
        matches only from that same folder. Only indexed paths with the query's file name (or its resolved
        file name) are resolved, so a lookup costs a few file-system calls whatever the index's size.
        Result feeds :meth:`search`'s ``exclude_ids``.

        Raises:
            StoreError: the index stores no paths.
        """
        if self._paths is None:
            raise StoreError("this index stores no paths; pass paths=... to EmbeddingIndex.build")
        by_name: dict[str, list[int]] = {}
        for i, recorded in enumerate(self._paths):
            by_name.setdefault(os.path.basename(recorded), []).append(i)
        found = np.full(len(paths), -1, dtype=np.int64)
        for q, query in enumerate(paths):
            resolved = os.path.realpath(query)
            names = {os.path.basename(os.fspath(query)), os.path.basename(resolved)}
            for i in sorted(i for name in names for i in by_name.get(name, ())):
                if os.path.realpath(self._paths[i]) == resolved:
                    found[q] = i
                    break
        return found

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored ``(len(ids), D)`` float32 vectors of ``ids`` (exact ones where kept; else, for ``"ivfpq"``,
        their compressed approximation)."""
        id_arr = _as_ids(ids, "ids", len(self))
        if id_arr.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._vectors is not None:
            return take_rows(self._vectors, id_arr)  # one read per row: no mapped pages stay resident
        return self._index.reconstruct_batch(id_arr)

    def _vector_chunks(self, exact: bool = False) -> Iterator[np.ndarray]:
        """The vectors in row order, about 16 MB at a time: the index's own, or (``exact``) the kept exact ones."""
        step = max(1, CHUNK_BYTES // (4 * self.dim))
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            if exact:
                assert self._vectors is not None
                yield read_rows(self._vectors, start, stop)
            elif self._kind in ("flat", "hnsw"):
                yield self._index.reconstruct_n(start, stop - start)
            else:  # IVF: by id through the direct map (reconstruct_n would scan every list per chunk)
                yield self._index.reconstruct_batch(np.arange(start, stop, dtype=np.int64))

    def checksum(self) -> str:
        """``"sha256:..."`` of the rows: paths, labels and the index's vectors (saved in ``meta.json``, checked at
        load; ``"ivfpq"``: the decoded codes).

        Hashes every stored vector, in chunks (bounded memory), at SHA-256's speed: 0.3-2 GB/s depending on the
        CPU (1.8 s for 100,000 x 1280 vectors, 488 MiB, on a busy 2-core machine; faiss read them in 1.75 s).
        """
        return rows_digest(self._paths, self._labels, self._vector_chunks())

    def _vectors_checksum(self) -> str | None:
        return None if self._vectors is None else rows_digest(None, None, self._vector_chunks(exact=True))

    # -- persistence ------------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metric": self._metric,
            "kind": self._kind,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "params": self.params,
            "rerank_factor": self.rerank_factor,
            "recall": self._recall,
            "dim": self.dim,
            "count": len(self),
            "paths": self._paths,
            "labels": self._labels,
            "info": self._info,
            "checksum": self.checksum(),
            "vectors_checksum": self._vectors_checksum(),
        }

    def _write_files(self, folder: Path) -> None:
        """Write ``index.faiss`` (+ ``index.ivfdata`` for ``"ivfpq"``, + ``vectors.npy`` if kept) into ``folder``."""
        if self._kind == "ivfpq":
            write_ivf_on_disk(self._index, folder)
        else:
            faiss.write_index(self._index, str(folder / INDEX_FILE))
        if self._vectors is not None:
            write_vectors(folder / VECTORS_FILE, self._vectors)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``meta.json`` (and ``index.ivfdata`` / ``vectors.npy``) into ``directory``,
        atomically; returns the directory.

        Everything is written to a temporary sibling directory first and renamed into place only once
        complete, so an interrupted save leaves the previous index (if any) loadable. An existing
        ``directory`` is replaced only if it is empty or holds a ``meta.json`` (a previous index); anything
        else is refused rather than deleted. Temporary directories that killed saves left beside
        ``directory`` (``.<name>.tmp-<pid>-<hex>``, ``.<name>.old-<pid>-<hex>`` of processes no longer running)
        are removed, the ``.old`` ones only once this save succeeded.

        Raises:
            StoreError: ``directory`` is not a previous index; a file could not be written (disk full, no
                permission...): the message names it, and the previous index is unchanged.
        """
        meta = self._meta()  # the checksum reads every vector: before anything is written
        return save_atomically(directory, lambda staging: self._write_files(staging), meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EmbeddingIndex:
        """Read an index written by :meth:`save`, checking that its files agree.

        ``index.ivfdata`` and ``vectors.npy`` are memory-mapped, not read: the operating system pages in what
        searches touch.

        Raises:
            StoreError: missing directory or file, unreadable or inconsistent files, unsupported version.
        """
        root = Path(directory)
        if not root.is_dir():
            backups = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
            hint = f"; an interrupted save left the previous index in {backups[0]}" if backups else ""
            what = "is not a directory" if root.exists() else "does not exist"
            raise StoreError(f"cannot load an index from {root}: it {what}{hint}")
        meta_path, index_path = root / META_FILE, root / INDEX_FILE
        for path in (meta_path, index_path):
            if not path.is_file():
                raise StoreError(f"cannot load an index from {root}: {path.name} is missing")
        meta = _read_meta(meta_path)
        count, dim, metric, kind = meta["count"], meta["dim"], meta["metric"], meta["kind"]
        needed = [IVF_DATA_FILE] if kind == "ivfpq" else []
        needed += [VECTORS_FILE] if meta["vectors_checksum"] is not None else []
        for name in needed:
            if not (root / name).is_file():
                raise StoreError(f"cannot load an index from {root}: {name} is missing")
        try:  # an on-disk index records its lists' file by name: look for it beside index.faiss
            with quiet_faiss():
                index = faiss.read_index(str(index_path), faiss.IO_FLAG_ONDISK_SAME_DIR)
        except RuntimeError as err:
            raise StoreError(f"{index_path} is not a readable faiss index: {err}") from err

        def fail(problem: str) -> StoreError:
            return StoreError(f"{root} is inconsistent: {problem}; rebuild or re-save the index")

        if int(index.ntotal) != count:
            raise fail(f"{META_FILE} says count={count} but {INDEX_FILE} holds {index.ntotal} vectors")
        if int(index.d) != dim:
            raise fail(f"{META_FILE} says dim={dim} but {INDEX_FILE} has dimension {index.d}")
        if index.metric_type != _FAISS_METRIC[metric]:
            raise fail(f"{META_FILE} says metric={metric!r} but {INDEX_FILE} uses another metric")
        if not isinstance(index, _FAISS_TYPES[kind]):
            raise fail(f"{META_FILE} says kind={kind!r} but {INDEX_FILE} is a {type(index).__name__}")
        for field in ("paths", "labels"):
            values = meta[field]
            if values is not None and len(values) != count:
                raise fail(f"{META_FILE} field {field!r} has {len(values)} entries, expected {count}")
            if values is not None and not all(isinstance(v, str) for v in values):
                raise fail(f"{META_FILE} field {field!r} must hold strings only")
        ivf: Any = index
        if kind in IVF_KINDS and ivf.direct_map.type == _NO_DIRECT_MAP:
            ivf.make_direct_map()  # indexes saved by faiss without it
        vectors = None
        if meta["vectors_checksum"] is not None:
            vectors = _open_vectors(root / VECTORS_FILE, count, dim)
        loaded = cls(
            index,
            metric=metric,
            kind=kind,
            nprobe=meta["nprobe"],
            paths=meta["paths"],
            labels=meta["labels"],
            info=meta["info"],
            ef_search=meta["ef_search"],
            vectors=vectors,
            rerank_factor=meta["rerank_factor"],
            recall=meta["recall"],
        )
        if loaded.checksum() != meta["checksum"]:
            raise fail(
                f"the checksum of paths, labels and vectors differs from the one in {META_FILE}, so {META_FILE} "
                f"and {INDEX_FILE} do not belong together (edited, reordered or copied from another index)"
            )
        if loaded._vectors_checksum() != meta["vectors_checksum"]:
            raise fail(f"{VECTORS_FILE} differs from the one the index was saved with (its checksum)")
        return loaded


# ------------------------------------------------------------------------------------------------ building
def _search(index: Any, x: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(x, k, params=params)`` on numpy queries, also once ``faiss.contrib.torch_utils`` is imported
    (pytorch-metric-learning imports it): it replaces ``Index.search`` by a version without ``params`` and keeps
    faiss's own as ``search_numpy``."""
    search = getattr(index, "search_numpy", index.search)
    return search(x, k, params=params)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_kind_options(kind: str, *, nlist: int | None, pq_m: int | None, rerank: bool) -> None:
    """Refuse options that do not apply to ``kind`` rather than ignoring them."""
    if nlist is not None and kind not in IVF_KINDS:
        raise ValueError(f"nlist applies to kinds 'ivf' and 'ivfpq' only; leave it out for kind={kind!r}")
    if pq_m is not None and kind != "ivfpq":
        raise ValueError(f"pq_m applies to kind='ivfpq' only; leave it out for kind={kind!r}")
    if rerank and kind == "flat":
        raise ValueError(
            "rerank applies to approximate kinds (ivf, ivfpq, hnsw); a flat index is exact already"
        )


def _check_nlist(nlist: int | None, count: int) -> int:
    if nlist is None:
        return default_nlist(count)
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= count:
        raise ValueError(f"nlist must be an int in [1, {count}] (the number of vectors), got {nlist!r}")
    if count < MIN_POINTS_PER_LIST * nlist:
        warnings.warn(
            f"nlist={nlist} gives fewer than {MIN_POINTS_PER_LIST} training vectors per list ({count} vectors); "
            f"k-means will be poor. Use nlist <= {max(1, count // MIN_POINTS_PER_LIST)} or a flat index",
            UserWarning,
            stacklevel=4,
        )
    return int(nlist)


def training_rows(
    count: int, nlist: int, train_size: int | None, pq_nbits: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted rows of a random training sample: ``train_size`` or ``64 nlist`` (at least ``2 ** pq_nbits``)."""
    if train_size is None:
        size = max(TRAIN_POINTS_PER_LIST * nlist, 2**pq_nbits if pq_nbits else 0)
    else:
        size = _positive_int(train_size, "train_size")
    size = min(size, count)
    if size < max(nlist, 2**pq_nbits if pq_nbits else 1):
        need = max(nlist, 2**pq_nbits if pq_nbits else 1)
        raise ValueError(
            f"{size} training vectors cannot train {nlist} lists"
            + (f" and {2**pq_nbits}-centroid product quantisers" if pq_nbits else "")
            + f": give at least {need} (train_size / more vectors), or a smaller nlist / pq_nbits"
        )
    if size == count:
        return np.arange(count)
    return np.sort(rng.choice(count, size, replace=False))


def train_ivf(
    x: np.ndarray, metric: str, nlist: int, kind: str, *, pq_m: int | None = None, pq_nbits: int = 8
) -> Any:
    """An empty, trained ``IndexIVFFlat`` (``kind="ivf"``) or ``IndexIVFPQ`` (``"ivfpq"``) on the rows ``x``."""
    dim = x.shape[1]
    quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    if kind == "ivfpq":
        m = default_pq_m(dim) if pq_m is None else _positive_int(pq_m, "pq_m")
        if dim % m:
            raise ValueError(f"pq_m must divide the dimension {dim}, got {m}")
        if not 1 <= pq_nbits <= 16 or isinstance(pq_nbits, bool):
            raise ValueError(f"pq_nbits must be an int in [1, 16], got {pq_nbits!r}")
        index: Any = faiss.IndexIVFPQ(quantizer, dim, nlist, m, int(pq_nbits), _FAISS_METRIC[metric])
        index.pq.cp.min_points_per_centroid = 1  # sizes are checked by training_rows
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, _FAISS_METRIC[metric])
    index.cp.min_points_per_centroid = (
        1  # we warn ourselves (_check_nlist) instead of faiss printing to stderr
    )
    index.train(np.ascontiguousarray(x, dtype=np.float32))
    return index


def new_hnsw(dim: int, metric: str, hnsw_m: int, ef_construction: int = DEFAULT_EF_CONSTRUCTION) -> Any:
    """An empty ``IndexHNSWFlat`` with ``hnsw_m`` links per vector, ``ef_construction`` candidates per insertion."""
    index = faiss.IndexHNSWFlat(dim, _positive_int(hnsw_m, "hnsw_m"), _FAISS_METRIC[metric])
    index.hnsw.efConstruction = _positive_int(ef_construction, "ef_construction")
    return index


def measure_recall(
    index: EmbeddingIndex,
    vectors: np.ndarray,
    queries: int = DEFAULT_RECALL_QUERIES,
    *,
    exclude_rows: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    k: int = RECALL_K,
) -> dict[str, Any] | None:
    """Recall@``k`` of ``index`` against exact search over ``vectors`` (its rows, possibly memory-mapped).

    ``queries`` rows are drawn (from those not in ``exclude_rows``, the training sample, when at least that many
    remain: ``held_out``), each searched excluding itself; the exact neighbours come from a brute-force scan of
    ``vectors`` in chunks (faiss's ``knn_ground_truth``), so memory stays bounded. Returns ``None`` for
    ``queries=0``.
    """
    from faiss.contrib.exhaustive_search import knn_ground_truth

    if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or queries < 0:
        raise ValueError(f"recall_queries must be an int >= 0, got {queries!r}")
    if queries == 0 or len(index) < 2:
        return None
    rng = rng if rng is not None else np.random.default_rng(0)
    count = len(index)
    pool = np.arange(count)
    if exclude_rows is not None and count - len(exclude_rows) >= queries:
        pool = np.setdiff1d(pool, exclude_rows, assume_unique=True)
    held_out = len(pool) < count
    rows = np.sort(rng.choice(pool, min(queries, len(pool)), replace=False))
    q = take_rows(vectors, rows)
    k = min(k, count - 1)
    _, exact = knn_ground_truth(q, row_chunks(vectors), k + 1, metric_type=_FAISS_METRIC[index.metric])
    is_self = exact == rows[:, None]
    is_self[~is_self.any(1), -1] = True
    exact = exact[~is_self].reshape(len(rows), k)
    found = index.search(q, k, exclude_ids=rows).ids
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(found, exact, strict=True))
    out: dict[str, Any] = {f"recall_at_{k}": round(hits / (k * len(rows)), 5), "queries": len(rows)}
    out["held_out"] = bool(held_out)
    out.update(index.effective(k))  # the settings in force, given or default
    given = {"nprobe": index.nprobe, "ef_search": index.ef_search}
    if index._vectors is not None:
        given["rerank_factor"] = index.rerank_factor
    out["defaults"] = sorted(name for name in out if name in given and given[name] is None)
    return out


# ---------------------------------------------------------------------------------------------- files
@contextlib.contextmanager
def quiet_faiss() -> Iterator[None]:
    """Silence what faiss's C++ code prints (file descriptors 1 and 2) inside the block.

    Its on-disk lists print each file they resize and each path they rewrite on load ("resizing ...",
    "IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename ...") to standard output, which would corrupt the output
    of a command (``frugalvision search --json``) and is noise to a user of a saved index.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[tuple[int, int]] = []
    try:
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor: nothing to silence
                    continue
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def write_ivf_on_disk(index: Any, folder: Path) -> None:
    """Write an IVF ``index`` to ``folder`` as ``index.faiss`` + its inverted lists in ``index.ivfdata``.

    The lists are copied into a new ``OnDiskInvertedLists`` (merged from the index's own, in memory or on disk),
    which is swapped into ``index`` only while ``index.faiss`` is written; ``index`` is left as it was.
    """
    ivf: Any = faiss.extract_index_ivf(index)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / IVF_DATA_FILE))
    sources = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]  # missing from faiss's stubs
    sources.push_back(ivf.invlists)
    with quiet_faiss():
        on_disk.merge_from_multiple(sources.data(), sources.size(), False)
    own, lists = ivf.own_invlists, ivf.invlists
    ivf.own_invlists = False  # replace_invlists would free the current lists otherwise
    ivf.replace_invlists(on_disk, False)
    try:
        faiss.write_index(index, str(folder / INDEX_FILE))
    finally:
        ivf.replace_invlists(lists, own)
    del on_disk  # unmaps the new file (python owns it)


def write_vectors(path: Path, vectors: np.ndarray) -> None:
    """Copy ``(N, D)`` vectors (possibly memory-mapped) to a float32 ``.npy`` file, about 16 MB at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
    with open(path, "wb") as f:  # plain writes: no mapped pages of either file stay resident
        np.lib.format.write_array_header_1_0(f, {**header, "shape": tuple(int(v) for v in vectors.shape)})
        for chunk in row_chunks(vectors):
            f.write(chunk.astype("<f4", copy=False).tobytes())


def _open_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise StoreError(f"{path} is not a readable numpy array ({err})") from err
    if vectors.dtype != np.float32 or vectors.shape != (count, dim):
        raise StoreError(
            f"{path} must hold ({count}, {dim}) float32 vectors like the index, got {vectors.shape} {vectors.dtype}"
        )
    return vectors


def save_atomically(
    directory: str | os.PathLike[str], fill: Callable[[Path], None], meta: dict[str, Any]
) -> Path:
    """Build an index directory in a temporary sibling (``fill(staging)`` then ``meta.json``) and move it over
    ``directory`` (see :meth:`EmbeddingIndex.save`)."""
    target = Path(directory)
    if target.exists():
        if not target.is_dir():
            raise StoreError(f"cannot save the index to {target}: it exists and is not a directory")
        if any(target.iterdir()) and not (target / META_FILE).is_file():
            raise StoreError(
                f"refusing to overwrite {target}: it is not empty and holds no {META_FILE}, so it does not "
                "look like a saved index; choose another directory"
            )
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging = target.parent / f".{target.name}.tmp-{token}"
    backup = target.parent / f".{target.name}.old-{token}"
    current = target.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target, "tmp")
        staging.mkdir()
        current = target / INDEX_FILE
        fill(staging)
        current = target / META_FILE
        with open(staging / META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        for name in os.listdir(staging):
            fsync(staging / name)
        current = target
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
    except BaseException as err:
        if backup.exists() and not target.exists():
            os.replace(backup, target)
        shutil.rmtree(staging, ignore_errors=True)
        # faiss reports a failed write as RuntimeError ("write error in <file> ... (No space left on device)")
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write error" in str(err)):
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            cause = re.search(r"\(([^()]+)\)\s*$", why)  # faiss ends with the C library's reason
            why = cause[1] if isinstance(err, RuntimeError) and cause else why
            what = f"move {staging} to {target}" if current == target else f"write {current}"
            kept = "; the previous index is unchanged" if (target / META_FILE).is_file() else ""
            raise StoreError(f"cannot {what}: {why}{kept}") from err
        raise
    shutil.rmtree(backup, ignore_errors=True)
    _remove_leftovers(target, "old")
    fsync(target.parent)
    return target


def _json_copy(info: object, name: str) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise TypeError(f"{name} must be a dict, got {type(info).__name__}")
    try:
        return json.loads(json.dumps(info))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be JSON-serialisable: {err}") from err


def _remove_leftovers(target: Path, kind: str) -> None:
    """Remove the ``.<name>.<kind>-<pid>-<hex>`` directories that killed saves left beside ``target``."""
    for entry, _ in list(leftovers(target, (kind,))):
        shutil.rmtree(entry, ignore_errors=True)


_META_FIELDS: dict[str, tuple[type, ...]] = {
    "metric": (str,),
    "kind": (str,),
    "nprobe": (int, type(None)),
    "dim": (int,),
    "count": (int,),
    "paths": (list, type(None)),
    "labels": (list, type(None)),
    "info": (dict,),
    "checksum": (str,),
}
# fields added by format 3, with the value a format-2 index implies
_META_FIELDS_V3: dict[str, tuple[tuple[type, ...], Any]] = {
    "ef_search": ((int, type(None)), LEGACY_EF_SEARCH),
    "params": ((dict,), {}),
    "rerank_factor": ((int, type(None)), LEGACY_RERANK_FACTOR),
    "recall": ((dict, type(None)), None),
    "vectors_checksum": ((str, type(None)), None),
}


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StoreError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise StoreError(f"cannot read {path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{path} is not a frugalvision index description (field 'format' is not {FORMAT!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade frugalvision to read it" if newer else "rebuild the index"
        raise StoreError(
            f"{path} has format_version {version!r}, this frugalvision reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; {hint}"
        )
    fields = {name: types for name, types in _META_FIELDS.items()}
    for name, (types, implied) in _META_FIELDS_V3.items():
        fields[name] = types
        if version == 2:
            meta.setdefault(name, implied)
    for field, types in fields.items():
        if field not in meta:
            raise StoreError(f"{path} lacks the field {field!r}")
        value = meta[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise StoreError(f"{path} field {field!r} has the wrong type {type(value).__name__}")
    if meta["metric"] not in _FAISS_METRIC:
        raise StoreError(f"{path} field 'metric' must be 'ip' or 'l2', got {meta['metric']!r}")
    kinds = KINDS if version >= 3 else ("flat", "ivf")
    if meta["kind"] not in kinds:
        raise StoreError(f"{path} field 'kind' must be one of {', '.join(kinds)}, got {meta['kind']!r}")
    for field in ("nprobe", "ef_search", "rerank_factor"):
        if meta[field] is None and version < 4:
            raise StoreError(f"{path} field {field!r} is null, which format_version {version} does not allow")
        if meta[field] is not None and meta[field] < 1:
            raise StoreError(f"{path} field {field!r} must be >= 1, got {meta[field]}")
    return meta
