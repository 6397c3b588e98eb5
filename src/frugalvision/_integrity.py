"""Integrity of saved stores and indexes: a checksum tying rows' metadata to their vectors.

Stores and indexes keep their vectors in one file (``vectors.npy``, ``index.faiss``) and the rows' paths and labels
in another (``items.jsonl``, ``meta.json``). Each file can be checked on its own, but a file edited, reordered or
copied from elsewhere can still agree in shape and silently give every vector another image's label. The digest
below is written beside the metadata when saving and compared when loading::

    sha256( utf8(json.dumps([paths, labels], ensure_ascii=False)) || float32_le(vectors row by row) )

Vectors arrive in chunks so that hashing a large index needs memory for one chunk only. :func:`row_chunks` cuts
an array into such chunks; for a memory-mapped ``.npy`` file (``np.load(..., mmap_mode="r")``) it reads each chunk
with ordinary file reads (:func:`read_rows`), so a pass over a store larger than memory leaves no mapped pages in
the process's resident set (the bytes pass through the page cache, which the kernel reclaims).

The leftovers of killed saves are found and cleaned by :mod:`frugalvision._fs`.

numpy-only: the torch-free runtime imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["CHUNK_BYTES", "read_rows", "row_chunks", "rows_digest", "take_rows"]

#: bytes of vectors hashed per chunk by callers that reconstruct vectors (faiss): about 16 MB.
CHUNK_BYTES = 1 << 24


def rows_digest(paths: Any, labels: Any, vector_chunks: Iterable[np.ndarray]) -> str:
    """``"sha256:<hex>"`` of the rows' metadata and their vectors (see the module docstring).

    Args:
        paths: JSON-serialisable per-row paths (a list of str, or ``None``).
        labels: JSON-serialisable per-row labels (strings, lists of strings, or ``None``).
        vector_chunks: consecutive ``(n_i, D)`` blocks of the vectors, in row order.
    """
    digest = hashlib.sha256(json.dumps([paths, labels], ensure_ascii=False).encode("utf-8"))
    for chunk in vector_chunks:
        digest.update(np.ascontiguousarray(chunk, dtype="<f4").data)  # a view: no copy for float32
    return f"sha256:{digest.hexdigest()}"


def _file_of(array: np.ndarray) -> tuple[str, int] | None:
    """``(path, byte offset of row 0)`` of a top-level C-contiguous :class:`numpy.memmap`, else ``None``.

    A view of a memmap (a slice) is a memmap too but keeps its parent's ``offset``: it is not read from the file.
    """
    filename = getattr(array, "filename", None)
    if not isinstance(array, np.memmap) or filename is None or not array.flags.c_contiguous:
        return None
    if isinstance(array.base, np.memmap) or getattr(array, "offset", None) is None:
        return None
    return str(filename), int(array.offset)


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a 2-D ``array`` as a new C-contiguous float32 array.

    For a :class:`numpy.memmap` of a file (``np.load(path, mmap_mode="r")``), the rows are read with
    ``np.fromfile`` at ``offset + start * row_bytes`` instead of through the mapping: the pages then count in the
    page cache, not in this process's resident memory, whatever the file's size. Other arrays are sliced.
    """
    start, stop = max(0, int(start)), min(int(stop), int(array.shape[0]))
    where = _file_of(array)
    if where is None or stop <= start:
        return np.array(array[start:stop], dtype=np.float32, order="C")
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    rows = np.fromfile(
        where[0],
        dtype=array.dtype,
        count=(stop - start) * width,
        offset=where[1] + start * width * array.dtype.itemsize,
    )
    return np.ascontiguousarray(rows.reshape(stop - start, *array.shape[1:]), dtype=np.float32)


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` as a new float32 array; for a memory-mapped file, one read per row (see :func:`read_rows`).

    Indexing a mapping at scattered rows would fault in the pages around each row too (the kernel maps up to
    16 cached neighbours per fault): a sample of 8 % of a store's rows left all of it resident.
    """
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    where = _file_of(array)
    if where is None:
        return np.array(array[idx], dtype=np.float32, order="C")
    count = int(array.shape[0])
    if idx.size and (idx.min() < -count or idx.max() >= count):
        raise IndexError(f"row index out of range for {count} rows")
    idx = np.where(idx < 0, idx + count, idx)
    out = np.empty((idx.size, *array.shape[1:]), dtype=array.dtype)
    row_bytes = out[:1].nbytes
    flat = out.reshape(-1).view(np.uint8)  # the rows' bytes, written in place
    with open(where[0], "rb", buffering=0) as f:
        for i, row in enumerate(idx.tolist()):
            f.seek(where[1] + row * row_bytes)
            if f.readinto(flat[i * row_bytes : (i + 1) * row_bytes].data) != row_bytes:
                raise OSError(f"{where[0]} ended before row {row}")
    return np.ascontiguousarray(out, dtype=np.float32)


def row_chunks(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Consecutive float32 blocks of a 2-D ``array`` of about ``chunk_bytes`` each, read with :func:`read_rows`."""
    width = int(np.prod(array.shape[1:], dtype=np.int64)) or 1
    step = max(1, chunk_bytes // (4 * width))
    for start in range(0, int(array.shape[0]), step):
        yield read_rows(array, start, start + step)
