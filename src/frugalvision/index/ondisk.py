"""Build an ``"ivfpq"`` index larger than memory: trained on a sample, filled shard by shard, lists merged on disk.

The steps of faiss's ``contrib/ondisk.py`` recipe (``merge_ondisk``), inside the atomic save of
:class:`~frugalvision.index.EmbeddingIndex`:

1. train the coarse quantiser and the product quantiser on a random sample of the rows;
2. for each shard of ``shard_rows`` rows: read it (from a memory-mapped ``.npy`` with plain file reads, so only
   this shard is in memory), encode it into an empty copy of the trained index and write that to a shard file;
3. merge the shards' inverted lists into one ``index.ivfdata`` (``OnDiskInvertedLists``: read with ``mmap``,
   written sequentially), delete the shard files;
4. optionally copy the exact vectors to ``vectors.npy`` for re-ranking; measure recall@10 against exact search
   (a chunked brute-force scan); write ``meta.json``; move the folder into place.

Resident memory is the training sample (``train_size`` rows; pass a smaller one for a very wide store), one shard
(:data:`SHARD_BYTES` by default) and its codes, ``8 N`` bytes of id map and the rows' paths and labels, whatever
``N``; the vectors and the lists live in the page cache. Temporary space on disk: the shard files (about the size of the final lists).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from frugalvision._integrity import read_rows, take_rows
from frugalvision.errors import StoreError
from frugalvision.index.faiss_index import (
    INDEX_FILE,
    IVF_DATA_FILE,
    VECTORS_FILE,
    EmbeddingIndex,
    _as_strings,
    _check_nlist,
    _json_copy,
    _positive_int,
    measure_recall,
    quiet_faiss,
    save_atomically,
    train_ivf,
    training_rows,
    write_vectors,
)

__all__ = ["SHARD_BYTES", "build_on_disk"]

SHARD_BYTES = 1 << 26  # float32 bytes of vectors encoded per shard by default: 64 MiB (faiss adds a copy)
#: keywords of :meth:`EmbeddingIndex.build` that do not apply here (the kind is "ivfpq"; the others are for graphs)
_HNSW_ONLY = ("hnsw_m", "ef_construction", "ef_search")
_NOT_ON_DISK = ("vectors", "kind", *_HNSW_ONLY)


def _ivfpq_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the defaults of :meth:`EmbeddingIndex.build` (their one home)."""
    signature = inspect.signature(EmbeddingIndex.build)
    for name in options:
        if name in _HNSW_ONLY:
            raise ValueError(f"{name} applies to kind='hnsw' only; leave it out for kind='ivfpq'")
        if name not in signature.parameters or name in _NOT_ON_DISK:
            allowed = ", ".join(p for p in signature.parameters if p not in _NOT_ON_DISK)
            raise TypeError(f"build_on_disk() got an unexpected keyword argument {name!r}; use {allowed}")
    bound = signature.bind_partial(**options)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in _NOT_ON_DISK}


def _shard(vectors: Any, start: int, stop: int) -> np.ndarray:
    x = read_rows(vectors, start, stop)
    bad = ~np.isfinite(x)
    if bad.any():
        row = start + int(np.nonzero(bad.any(1))[0][0])
        raise ValueError(f"vectors row {row} contains NaN or infinite values")
    return x


def build_on_disk(
    vectors: np.ndarray,
    directory: str | os.PathLike[str],
    *,
    shard_rows: int | None = None,
    **options: Any,
) -> EmbeddingIndex:
    """Build and save an ``"ivfpq"`` index of ``vectors`` in ``directory`` without holding them in memory.

    Args:
        vectors: ``(N, D)`` float array, typically ``np.load(..., mmap_mode="r")`` (read one shard at a time with
            plain file reads) or ``np.memmap``. Row ``i`` gets id ``i``.
        directory: the index folder, replaced atomically as by :meth:`EmbeddingIndex.save`.
        shard_rows: rows encoded per shard (memory: ``shard_rows x D x 4`` bytes); default :data:`SHARD_BYTES`
            worth of rows.
        options: the keywords of :meth:`EmbeddingIndex.build` for ``kind="ivfpq"``, with the same defaults:
            ``paths``, ``labels``, ``metric``, ``nlist``, ``nprobe``, ``pq_m``, ``pq_nbits``, ``train_size``,
            ``rerank`` (copy the exact vectors to ``vectors.npy``, memory-mapped at search time, and re-rank
            with them), ``rerank_factor``, ``recall_queries``, ``seed``, ``info``.

    Returns:
        The saved index, loaded from ``directory`` (lists and exact vectors memory-mapped).

    Raises:
        ValueError / TypeError: as :meth:`EmbeddingIndex.build`; a row with NaN (named); an unknown keyword.
        StoreError: ``directory`` cannot be written (the previous index there is kept).
    """
    opts = _ivfpq_options(options)
    if not hasattr(vectors, "shape") or len(vectors.shape) != 2:
        raise ValueError(f"vectors must be a 2-D (N, D) array, got {type(vectors).__name__}")
    count, dim = (int(v) for v in vectors.shape)
    if count == 0 or dim == 0:
        raise ValueError(f"cannot build an index from vectors of shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise TypeError(f"vectors must hold floats, got dtype {vectors.dtype}")
    shard_rows = (
        max(1, SHARD_BYTES // (4 * dim)) if shard_rows is None else _positive_int(shard_rows, "shard_rows")
    )
    paths_list = _as_strings(opts["paths"], "paths", count)
    labels_list = _as_strings(opts["labels"], "labels", count)
    info_dict = _json_copy(opts["info"] if opts["info"] is not None else {}, "info")
    nlist = _check_nlist(opts["nlist"], count)
    rng = np.random.default_rng(opts["seed"])
    pq_nbits = opts["pq_nbits"]
    train_rows = training_rows(count, nlist, opts["train_size"], pq_nbits, rng)
    sample = take_rows(vectors, train_rows)  # one read per row: no pages mapped around them
    if not np.isfinite(sample).all():
        _shard(sample, 0, len(sample))  # names the row (of the sample) with NaN
    trained = train_ivf(sample, opts["metric"], nlist, "ivfpq", pq_m=opts["pq_m"], pq_nbits=pq_nbits)
    del sample

    def fill(staging: Path) -> None:
        shard_files = []
        for number, start in enumerate(range(0, count, shard_rows)):
            stop = min(start + shard_rows, count)
            part = faiss.clone_index(trained)
            part.add_with_ids(_shard(vectors, start, stop), np.arange(start, stop, dtype=np.int64))
            shard_files.append(str(staging / f"shard-{number:05d}.faiss"))
            faiss.write_index(part, shard_files[-1])
            del part
        from faiss.contrib.ondisk import merge_ondisk

        index: Any = faiss.clone_index(trained)
        with quiet_faiss():
            merge_ondisk(index, shard_files, str(staging / IVF_DATA_FILE))
        for name in shard_files:
            os.remove(name)
        index.make_direct_map()
        if opts["rerank"]:
            write_vectors(staging / VECTORS_FILE, vectors)
        built = EmbeddingIndex(
            index,
            metric=opts["metric"],
            kind="ivfpq",
            nprobe=opts["nprobe"],
            paths=paths_list,
            labels=labels_list,
            info=info_dict,
            vectors=np.load(staging / VECTORS_FILE, mmap_mode="r") if opts["rerank"] else None,
            rerank_factor=opts["rerank_factor"],
        )
        built._recall = measure_recall(
            built, vectors, opts["recall_queries"], exclude_rows=train_rows, rng=rng
        )
        faiss.write_index(index, str(staging / INDEX_FILE))
        meta.update(built._meta())

    meta: dict[str, Any] = {}
    target = save_atomically(directory, fill, meta)
    try:
        return EmbeddingIndex.load(target)
    except StoreError as err:  # pragma: no cover - a file changed under us
        raise StoreError(f"the index just built in {target} does not load: {err}") from err
