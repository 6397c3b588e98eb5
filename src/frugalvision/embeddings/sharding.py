"""Deterministic slices ("shards") of a data set for extraction by N independent workers, and their merge.

Any launcher that can start N processes with an index (a SLURM job array, a Kubernetes indexed job, a shell loop)
runs ``frugalvision embed DATA --shard I/N -o shard-I`` for ``I = 0 .. N-1`` (numbered from 0, like
``SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1`` and ``JOB_COMPLETION_INDEX``). Shard ``I`` holds the data-set rows

* ``contiguous`` (default): ``[floor(I*M/N), floor((I+1)*M/N))`` for a data set of ``M`` images -- each worker reads
  one block of the listing (good for locality: one folder after another);
* ``strided``: ``I, I+N, I+2N, ...`` -- each worker gets a sample of every part of the listing (good when images
  grow in size or cost along the listing, so that workers finish together).

Both cover every row exactly once: the slices of ``I = 0..N-1`` are disjoint and their union is ``0..M-1``.

Each shard is an ordinary :class:`~frugalvision.embeddings.EmbeddingStore`, resumable on its own (its ``parts/``),
whose ``info["shard"]`` records the layout: ``index``, ``count`` (N), ``mode``, ``total`` (M), ``dataset`` (a
digest of the data set's whole path listing, so shards of different listings are not merged) and
``skipped_positions`` (data-set rows of the slice that could not be read). :func:`merge_shards` checks that the
shards belong together -- one layout, one listing, one backbone and preprocessing, every index exactly once -- and
writes the merged store in the data set's order, exactly as one process would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from frugalvision.embeddings.store import EmbeddingStore
from frugalvision.errors import StoreError

__all__ = ["SHARD_MODES", "ShardMode", "dataset_digest", "merge_shards", "parse_shard", "shard_rows"]

ShardMode = Literal["contiguous", "strided"]
SHARD_MODES: tuple[str, ...] = ("contiguous", "strided")
#: the settings that every shard of one merge must share (besides the layout in ``info["shard"]``)
_SAME_SETTINGS = ("backbone", "data_config", "normalized")
_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; raises ``ValueError`` saying what is expected."""
    match = _SHARD_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"--shard must look like I/N (e.g. 0/8), got {text!r}")
    index, count = int(match[1]), int(match[2])
    check_shard(index, count)
    return index, count


def check_shard(index: int, count: int) -> None:
    """Raise ``ValueError`` unless ``0 <= index < count``."""
    if count < 1:
        raise ValueError(f"the number of shards must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(
            f"shard index {index} is out of range for {count} shards: shards are numbered 0..{count - 1} "
            "(like SLURM_ARRAY_TASK_ID with --array=0-N-1)"
        )


def shard_rows(total: int, index: int, count: int, mode: str = "contiguous") -> np.ndarray:
    """Data-set rows of shard ``index`` of ``count`` for a data set of ``total`` images, ascending, ``(n,)`` int64.

    ``contiguous``: ``[floor(index*total/count), floor((index+1)*total/count))`` (sizes differ by at most one);
    ``strided``: ``index, index+count, ...``. Shards may be empty when ``count > total``.
    """
    check_shard(index, count)
    if mode not in SHARD_MODES:
        raise ValueError(f"shard mode must be one of {', '.join(SHARD_MODES)}, got {mode!r}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if mode == "strided":
        return np.arange(index, total, count, dtype=np.int64)
    return np.arange(index * total // count, (index + 1) * total // count, dtype=np.int64)


def dataset_digest(paths: Sequence[str]) -> str:
    """``"sha256:..."`` of a data set's whole path listing, in order: shards of one listing share it."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
    return f"sha256:{digest.hexdigest()}"


def shard_layout(paths: Sequence[str], index: int, count: int, mode: str) -> dict[str, Any]:
    """The ``info["shard"]`` settings of a shard (without ``skipped_positions``), checked at resume and merge."""
    check_shard(index, count)
    if mode not in SHARD_MODES:
        raise ValueError(f"shard mode must be one of {', '.join(SHARD_MODES)}, got {mode!r}")
    return {
        "index": index,
        "count": count,
        "mode": mode,
        "total": len(paths),
        "dataset": dataset_digest(paths),
    }


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value))


def merge_shards(
    shards: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None
) -> EmbeddingStore:
    """Join the shard stores made by ``extract_embeddings(..., shard=(I, N))`` into one store in the data set's order.

    Args:
        shards: the N shard store folders, in any order.
        out: where to write the merged store (atomically); ``None``: only return it.

    Returns:
        The merged store: the same paths, labels, vectors and classes, in the same order, as one process that
        embedded the whole data set (``info["skipped"]`` joined; no ``info["shard"]``).

    Raises:
        StoreError naming the shard at fault: a folder that is no shard store; shards of different layouts (N,
        mode), of different data-set listings, made with another backbone, preprocessing or normalisation;
        an index given twice (overlap) or missing (gap); a shard whose rows do not fill its slice.
    """
    if not shards:
        raise StoreError("nothing to merge: give the shard store folders")
    loaded: list[tuple[Path, EmbeddingStore, dict[str, Any]]] = []
    for folder in map(Path, shards):
        store = EmbeddingStore.load(folder)
        layout = store.info.get("shard")
        if not isinstance(layout, dict) or not {"index", "count", "mode", "total", "dataset"} <= set(layout):
            raise StoreError(
                f"{folder} is not a shard store (its info.json has no shard layout); "
                "make shards with `frugalvision embed DATA --shard I/N`"
            )
        loaded.append((folder, store, layout))

    first_dir, first, first_layout = loaded[0]
    by_index: dict[int, Path] = {}
    for folder, store, layout in loaded:
        for key in ("count", "mode", "total", "dataset"):
            if layout[key] != first_layout[key]:
                what = "data-set listing" if key in ("total", "dataset") else "shard layout"
                raise StoreError(
                    f"shard {folder} does not belong with {first_dir}: different {what} "
                    f"({key}: {layout[key]!r} vs {first_layout[key]!r})"
                )
        for key in _SAME_SETTINGS:
            if _canonical(store.info.get(key)) != _canonical(first.info.get(key)):
                raise StoreError(
                    f"shard {folder} was made with other settings than {first_dir} "
                    f"({key}: {store.info.get(key)} vs {first.info.get(key)}); embed it again with the same model"
                )
        if store.classes != first.classes:
            raise StoreError(f"shard {folder} lists other classes than {first_dir}")
        if layout["index"] in by_index:
            raise StoreError(
                f"shards overlap: {folder} and {by_index[layout['index']]} are both shard "
                f"{layout['index']}/{layout['count']}"
            )
        by_index[int(layout["index"])] = folder

    count, total, mode = int(first_layout["count"]), int(first_layout["total"]), str(first_layout["mode"])
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        shown = ", ".join(f"{i}/{count}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise StoreError(f"shards missing (a gap): {shown}; got {len(by_index)} of {count}")

    # data-set row of every stored row, then one stable sort puts all rows in the data set's order
    positions: list[np.ndarray] = []
    for folder, store, layout in loaded:
        rows = shard_rows(total, int(layout["index"]), count, mode)
        skipped = np.asarray(layout.get("skipped_positions", []), dtype=np.int64)
        kept = rows[~np.isin(rows, skipped)]
        if len(kept) != len(store):
            raise StoreError(
                f"shard {folder} holds {len(store)} rows but its slice has {len(rows)} images, "
                f"{len(skipped)} of them skipped: it is unfinished or was edited; run its `embed --shard` again"
            )
        positions.append(kept)
    order = np.argsort(np.concatenate(positions), kind="stable")
    dim = first.dim
    vectors = np.concatenate([s.vectors.reshape(-1, dim) for _, s, _ in loaded])[order]
    paths = [p for _, s, _ in loaded for p in s.paths]
    labels = [lab for _, s, _ in loaded for lab in s.labels]
    dupes = len(paths) - len(set(paths))
    if dupes:
        raise StoreError(f"the shards overlap: {dupes} image path(s) appear in more than one shard")
    info = {k: v for k, v in first.info.items() if k not in ("shard", "skipped")}
    info["skipped"] = [item for _, s, _ in loaded for item in s.info.get("skipped", [])]
    merged = EmbeddingStore(
        vectors=vectors,
        paths=[paths[i] for i in order],
        labels=[labels[i] for i in order],
        classes=list(first.classes),
        info=info,
    )
    if out is not None:
        merged.save(out)
    return merged
