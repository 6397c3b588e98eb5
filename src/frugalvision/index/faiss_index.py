"""A faiss index of embedding vectors plus their metadata (paths, labels, free-form info), saved atomically.

Two index kinds (Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs", 2017,
https://arxiv.org/abs/1702.08734):

* ``"flat"``: exact search (``IndexFlatIP`` / ``IndexFlatL2``), every query compared with every vector.
* ``"ivf"``: ``IndexIVFFlat``: k-means splits the vectors into ``nlist`` lists; a query scans only the
  ``nprobe`` lists with the nearest centroids. Approximate, much faster on large collections.

On disk an index is a directory holding ``index.faiss`` (faiss's own format) and ``meta.json``. ``meta.json``
records a ``checksum`` of every row's path, label and vector (:func:`frugalvision._integrity.rows_digest`), checked
at load, so metadata edited, reordered or paired with another ``index.faiss`` is refused instead of giving hits
with wrong labels. A save that fails (a full disk) raises :class:`~frugalvision.errors.StoreError` naming the file
and keeps the previous index; what a killed save left beside the directory is removed by the next save.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np

from frugalvision._checks import check_choice
from frugalvision._fs import fsync, leftovers
from frugalvision._integrity import CHUNK_BYTES, rows_digest
from frugalvision.errors import StoreError

if TYPE_CHECKING:  # torch tensors are accepted, but torch is never imported here (the runtime has none)
    import torch

FORMAT = "frugalvision-embedding-index"
FORMAT_VERSION = 2  # 2: meta.json holds the rows' checksum
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
AUTO_IVF_MIN_COUNT = 100_000  # kind="auto" builds IVF from this many vectors on
MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below 39 training points per centroid
DEFAULT_NPROBE = 16

IndexMetric = Literal["ip", "l2"]
IndexKind = Literal["auto", "flat", "ivf"]
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


class EmbeddingIndex:
    """Vectors in a faiss index, with optional per-vector paths and labels and a free-form ``info`` dict.

    Build with :meth:`build`, query with :meth:`search` / :meth:`search_by_id`, persist with :meth:`save`
    and :meth:`load`. Row ``i`` of the built vectors has id ``i``.

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
        kind: Literal["flat", "ivf"],
        nprobe: int,
        paths: list[str] | None,
        labels: list[str] | None,
        info: dict[str, Any],
    ) -> None:
        """Wrap an existing faiss index; use :meth:`build` or :meth:`load` rather than calling this."""
        self._index: Any = index  # faiss.IndexFlat or faiss.IndexIVFFlat (faiss's stubs lack IVF attributes)
        self._metric = metric
        self._kind = kind
        self._paths = paths
        self._labels = labels
        self._info = info
        self.nprobe = nprobe

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
        nprobe: int = DEFAULT_NPROBE,
        info: dict[str, Any] | None = None,
    ) -> EmbeddingIndex:
        """Index ``vectors``.

        Args:
            vectors: ``(N, D)`` vectors, stored as float32; row ``i`` gets id ``i``.
            paths: ``N`` strings (e.g. image paths) returned with the hits.
            labels: ``N`` strings (e.g. class names) returned with the hits.
            metric: ``"ip"`` (inner product; cosine for unit-norm vectors) or ``"l2"`` (squared Euclidean).
            kind: ``"flat"`` (exact), ``"ivf"`` (approximate, k-means lists trained on ``vectors``) or
                ``"auto"`` (flat below 100,000 vectors, IVF from there on).
            nlist: IVF lists; default ``round(4 sqrt(N))`` capped at ``N // 39`` (see :func:`default_nlist`).
                Must be ``<= N``; fewer than 39 vectors per list triggers a warning (poor k-means).
            nprobe: lists scanned per IVF query (saved with the index; can be changed later via the
                ``nprobe`` attribute). Higher is slower and more accurate; ``nprobe = nlist`` is exact.
            info: JSON-serialisable dict saved with the index (e.g. backbone and preprocessing).

        Raises:
            TypeError / ValueError: bad shapes, NaN values, empty ``vectors``, length mismatches, unknown
                ``metric``/``kind``, bad ``nlist``/``nprobe``, ``info`` not JSON-serialisable.
        """
        check_choice(metric, tuple(_FAISS_METRIC), "metric")
        check_choice(kind, ("auto", "flat", "ivf"), "kind")
        x = _as_vectors(vectors, "vectors")
        count, dim = x.shape
        if count == 0:
            raise ValueError("cannot build an index from 0 vectors")
        paths_list = _as_strings(paths, "paths", count)
        labels_list = _as_strings(labels, "labels", count)
        info_dict = _json_copy(info if info is not None else {}, "info")
        resolved = kind if kind != "auto" else ("ivf" if count >= AUTO_IVF_MIN_COUNT else "flat")
        if resolved == "flat":
            if kind == "flat" and nlist is not None:
                raise ValueError("nlist applies to kind='ivf' only; leave it out for a flat index")
            index: Any = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        else:
            index = _train_ivf(x, metric, nlist)
        index.add(x)
        if resolved == "ivf":
            index.make_direct_map()  # lets search_by_id / reconstruct fetch stored vectors
        return cls(
            index,
            metric=metric,
            kind=resolved,
            nprobe=nprobe,
            paths=paths_list,
            labels=labels_list,
            info=info_dict,
        )

    # -- properties -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self._kind == "ivf" else ""
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
        return int(self._index.nlist) if self._kind == "ivf" else None

    @property
    def nprobe(self) -> int:
        """IVF lists scanned per query (ignored by a flat index)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"nprobe must be a positive int, got {value!r}")
        self._nprobe = int(value)
        if self._kind == "ivf":
            self._index.nprobe = min(self._nprobe, int(self._index.nlist))

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
        scores, ids = self._index.search(x, k + int(exclude is not None))
        if exclude is not None:
            is_self = (ids == exclude[:, None]) & (exclude[:, None] >= 0)  # -1 also pads missing hits
            is_self[~is_self.any(1), -1] = True
            scores = scores[~is_self].reshape(x.shape[0], k)
            ids = ids[~is_self].reshape(x.shape[0], k)
        scores[ids < 0] = -np.inf if self._metric == "ip" else np.inf
        return SearchResult(scores=scores, ids=ids, _paths=self._paths, _labels=self._labels)

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
        """The stored ``(len(ids), D)`` float32 vectors of ``ids``."""
        id_arr = _as_ids(ids, "ids", len(self))
        if id_arr.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(id_arr)

    def _vector_chunks(self) -> Iterator[np.ndarray]:
        """The stored vectors in row order, about 16 MB at a time."""
        step = max(1, CHUNK_BYTES // (4 * self.dim))
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            if self._kind == "flat":
                yield self._index.reconstruct_n(start, stop - start)
            else:  # IVF: by id through the direct map (reconstruct_n would scan every list per chunk)
                yield self._index.reconstruct_batch(np.arange(start, stop, dtype=np.int64))

    def checksum(self) -> str:
        """``"sha256:..."`` of the rows: paths, labels and vectors (saved in ``meta.json``, checked at load).

        Hashes every stored vector, in chunks (bounded memory), at SHA-256's speed: 0.3-2 GB/s depending on the
        CPU (1.8 s for 100,000 x 1280 vectors, 488 MiB, on a busy 2-core machine; faiss read them in 1.75 s).
        """
        return rows_digest(self._paths, self._labels, self._vector_chunks())

    # -- persistence ------------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metric": self._metric,
            "kind": self._kind,
            "nlist": self.nlist,
            "nprobe": self._nprobe,
            "dim": self.dim,
            "count": len(self),
            "paths": self._paths,
            "labels": self._labels,
            "info": self._info,
            "checksum": self.checksum(),
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` and ``meta.json`` into ``directory``, atomically; returns the directory.

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
        target = Path(directory)
        if target.exists():
            if not target.is_dir():
                raise StoreError(f"cannot save the index to {target}: it exists and is not a directory")
            if any(target.iterdir()) and not (target / META_FILE).is_file():
                raise StoreError(
                    f"refusing to overwrite {target}: it is not empty and holds no {META_FILE}, so it does not "
                    "look like a saved index; choose another directory"
                )
        meta = self._meta()  # the checksum reads every vector: before anything is written
        token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging = target.parent / f".{target.name}.tmp-{token}"
        backup = target.parent / f".{target.name}.old-{token}"
        current = target.parent
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(target, "tmp")
            staging.mkdir()
            current = target / INDEX_FILE
            faiss.write_index(self._index, str(staging / INDEX_FILE))
            current = target / META_FILE
            with open(staging / META_FILE, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            for name in (INDEX_FILE, META_FILE):
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

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EmbeddingIndex:
        """Read an index written by :meth:`save`, checking that its files agree.

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
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise StoreError(f"{index_path} is not a readable faiss index: {err}") from err

        def fail(problem: str) -> StoreError:
            return StoreError(f"{root} is inconsistent: {problem}; rebuild or re-save the index")

        count, dim, metric, kind = meta["count"], meta["dim"], meta["metric"], meta["kind"]
        if int(index.ntotal) != count:
            raise fail(f"{META_FILE} says count={count} but {INDEX_FILE} holds {index.ntotal} vectors")
        if int(index.d) != dim:
            raise fail(f"{META_FILE} says dim={dim} but {INDEX_FILE} has dimension {index.d}")
        if index.metric_type != _FAISS_METRIC[metric]:
            raise fail(f"{META_FILE} says metric={metric!r} but {INDEX_FILE} uses another metric")
        expected_type: type = faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexFlat
        if not isinstance(index, expected_type):
            raise fail(f"{META_FILE} says kind={kind!r} but {INDEX_FILE} is a {type(index).__name__}")
        for field in ("paths", "labels"):
            values = meta[field]
            if values is not None and len(values) != count:
                raise fail(f"{META_FILE} field {field!r} has {len(values)} entries, expected {count}")
            if values is not None and not all(isinstance(v, str) for v in values):
                raise fail(f"{META_FILE} field {field!r} must hold strings only")
        ivf: Any = index
        if kind == "ivf" and ivf.direct_map.type == _NO_DIRECT_MAP:
            ivf.make_direct_map()  # indexes saved by faiss without it
        loaded = cls(
            index,
            metric=metric,
            kind=kind,
            nprobe=meta["nprobe"],
            paths=meta["paths"],
            labels=meta["labels"],
            info=meta["info"],
        )
        if loaded.checksum() != meta["checksum"]:
            raise fail(
                f"the checksum of paths, labels and vectors differs from the one in {META_FILE}, so {META_FILE} "
                f"and {INDEX_FILE} do not belong together (edited, reordered or copied from another index)"
            )
        return loaded


def _train_ivf(x: np.ndarray, metric: str, nlist: int | None) -> Any:
    count, dim = x.shape
    if nlist is None:
        nlist = default_nlist(count)
    elif isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= count:
        raise ValueError(f"nlist must be an int in [1, {count}] (the number of vectors), got {nlist!r}")
    elif count < MIN_POINTS_PER_LIST * nlist:
        warnings.warn(
            f"nlist={nlist} gives fewer than {MIN_POINTS_PER_LIST} training vectors per list ({count} vectors); "
            f"k-means will be poor. Use nlist <= {max(1, count // MIN_POINTS_PER_LIST)} or a flat index",
            UserWarning,
            stacklevel=3,
        )
    quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, int(nlist), _FAISS_METRIC[metric])
    index.cp.min_points_per_centroid = 1  # we warn ourselves (above) instead of faiss printing to stderr
    index.train(x)
    return index


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
    "nprobe": (int,),
    "dim": (int,),
    "count": (int,),
    "paths": (list, type(None)),
    "labels": (list, type(None)),
    "info": (dict,),
    "checksum": (str,),
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
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade frugalvision to read it" if newer else "rebuild the index"
        raise StoreError(
            f"{path} has format_version {version!r}, this frugalvision reads version {FORMAT_VERSION}; {hint}"
        )
    for field, types in _META_FIELDS.items():
        if field not in meta:
            raise StoreError(f"{path} lacks the field {field!r}")
        value = meta[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise StoreError(f"{path} field {field!r} has the wrong type {type(value).__name__}")
    if meta["metric"] not in _FAISS_METRIC:
        raise StoreError(f"{path} field 'metric' must be 'ip' or 'l2', got {meta['metric']!r}")
    if meta["kind"] not in ("flat", "ivf"):
        raise StoreError(f"{path} field 'kind' must be 'flat' or 'ivf', got {meta['kind']!r}")
    if meta["nprobe"] < 1:
        raise StoreError(f"{path} field 'nprobe' must be >= 1, got {meta['nprobe']}")
    return meta
