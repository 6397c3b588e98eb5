"""Integrity of saved stores and indexes: a checksum tying rows' metadata to their vectors, and the leftovers of
killed saves.

**Checksum.**

Stores and indexes keep their vectors in one file (``vectors.npy``, ``index.faiss``) and the rows' paths and labels
in another (``items.jsonl``, ``meta.json``). Each file can be checked on its own, but a file edited, reordered or
copied from elsewhere can still agree in shape and silently give every vector another image's label. The digest
below is written beside the metadata when saving and compared when loading::

    sha256( utf8(json.dumps([paths, labels], ensure_ascii=False)) || float32_le(vectors row by row) )

Vectors arrive in chunks so that hashing a large index needs memory for one chunk only.

**Leftovers.** Saves write into ``.<name>.tmp-<pid>[-<suffix>]`` beside the target and may move the previous
folder to ``.<name>.old-<pid>[-<suffix>]``; a killed process leaves them behind. :func:`leftovers` finds those of
processes that are no longer running, and only names of that exact form, so the next save can clean them.

numpy-only: the torch-free runtime imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHUNK_BYTES", "leftovers", "process_running", "rows_digest"]

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


def process_running(pid: int) -> bool:
    """Whether process ``pid`` may still be running; when unsure (not POSIX, another user's) it counts as running,
    so its files are left alone."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def leftovers(target: Path, kinds: tuple[str, ...] = ("tmp", "old")) -> Iterator[tuple[Path, str]]:
    """``(folder, kind)`` for each ``.<target.name>.<kind>-<pid>[-<suffix>]`` folder beside ``target`` whose
    process is no longer running, sorted by name. Files, links and every other name are never returned."""
    if not target.parent.is_dir():
        return
    ours = re.compile(rf"\.{re.escape(target.name)}\.({'|'.join(map(re.escape, kinds))})-(\d+)(?:-\w+)?")
    for entry in sorted(target.parent.iterdir()):
        match = ours.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_running(int(match[2])):
            yield entry, match[1]
