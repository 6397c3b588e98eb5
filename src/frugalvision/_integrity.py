"""Integrity of saved stores and indexes: a checksum tying rows' metadata to their vectors.

Stores and indexes keep their vectors in one file (``vectors.npy``, ``index.faiss``) and the rows' paths and labels
in another (``items.jsonl``, ``meta.json``). Each file can be checked on its own, but a file edited, reordered or
copied from elsewhere can still agree in shape and silently give every vector another image's label. The digest
below is written beside the metadata when saving and compared when loading::

    sha256( utf8(json.dumps([paths, labels], ensure_ascii=False)) || float32_le(vectors row by row) )

Vectors arrive in chunks so that hashing a large index needs memory for one chunk only.

The leftovers of killed saves are found and cleaned by :mod:`frugalvision._fs`.

numpy-only: the torch-free runtime imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["CHUNK_BYTES", "rows_digest"]

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
