"""Checkpoints written atomically and read back with ``torch.load(weights_only=True)``.

A process killed while writing (``kill -9`` included) leaves the previous checkpoint intact: the new one is
written to a temporary file in the same folder, flushed to disk, then renamed over the old one with
``os.replace`` (atomic on POSIX and Windows). Reading uses ``weights_only=True``, so a checkpoint can hold only
tensors and plain Python values (the engine keeps its hyper-parameters JSON-primitive) and loading one never runs
pickled code. A file that cannot be read that way (truncated, corrupt, or asking to run code: untrusted) raises
:class:`~frugalvision.errors.CheckpointError` naming it; it is never retried with ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from frugalvision.errors import CheckpointError

__all__ = ["AtomicCheckpointIO", "check_resumable", "last_checkpoint", "read_checkpoint"]

_START_OVER = "delete it and start the run again without --resume, or resume another run folder (--out)"


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read so raises :class:`CheckpointError`.

    ``mmap=True`` maps the tensors instead of reading them (a cheap check of the whole archive and its pickle).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated or corrupt file, or one holding pickled objects other than tensors and plain
            values (untrusted: loading it would run code); the message names the file.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"checkpoint not found: {target}")
    if not zipfile.is_zipfile(target):  # torch.save writes a zip archive; its directory is at the end
        raise CheckpointError(
            f"checkpoint {target} is corrupt or truncated (not a complete PyTorch archive); {_START_OVER}"
        )
    try:
        return torch.load(target, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        asks = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it asks for {asks.group(1)})" if asks else ""
        raise CheckpointError(
            f"checkpoint {target} holds objects other than tensors and plain values{what}: it is corrupt or "
            f"untrusted, and frugalvision never loads such a file; {_START_OVER}"
        ) from None  # torch's message advises weights_only=False, which would run the file's code
    except Exception as e:  # zip, storage and unpickling errors of a damaged file have many types
        reason = next((line for line in str(e).splitlines() if line.strip()), "")[:200]
        raise CheckpointError(
            f"checkpoint {target} is corrupt or truncated ({type(e).__name__}: {reason}); {_START_OVER}"
        ) from e


def check_resumable(path: Path) -> None:
    """Read ``path`` (memory-mapped) and check it is a Lightning checkpoint, before a run spends time on its data.

    Raises:
        CheckpointError: see :func:`read_checkpoint`, or a file without the ``state_dict`` and ``epoch`` entries.
    """
    state = read_checkpoint(path, mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not a training checkpoint (no 'state_dict' and 'epoch' entries); {_START_OVER}"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: temp file + fsync + ``os.replace`` on save; ``weights_only=True`` on load."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self,
        path: Any,
        map_location: Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        loaded: dict[str, Any] = read_checkpoint(path, map_location)
        return loaded


def last_checkpoint(out: Path, resume: bool, what: str = "training run") -> Path:
    """``out/checkpoints/last.ckpt``, checked against ``resume``: resuming needs it, a fresh run must not find one
    (it would silently mix two runs). Raises ``ConfigError`` saying which flag to use, or ``CheckpointError`` for a
    checkpoint that cannot be read safely (see :func:`check_resumable`)."""
    from frugalvision.train.config import ConfigError

    last = Path(out) / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: no checkpoint at {last} (start the run without --resume)")
    if resume:
        check_resumable(last)
    if not resume and last.is_file():
        raise ConfigError(
            f"{out} already holds a {what} ({last}); pass --resume to continue it, or choose another --out"
        )
    return last
