"""Checkpoints written atomically and read back with ``torch.load(weights_only=True)``.

A process killed while writing (``kill -9`` included) leaves the previous checkpoint intact: the new one is
written to a temporary file in the same folder, flushed to disk, then renamed over the old one with
``os.replace`` (atomic on POSIX and Windows). Reading uses ``weights_only=True``, so a checkpoint can hold only
tensors and plain Python values (the engine keeps its hyper-parameters JSON-primitive) and loading one never runs
pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "last_checkpoint"]


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
        target = Path(path)
        if not target.is_file():
            raise FileNotFoundError(f"checkpoint not found: {target}")
        loaded: dict[str, Any] = torch.load(target, map_location=map_location, weights_only=True)
        return loaded


def last_checkpoint(out: Path, resume: bool, what: str = "training run") -> Path:
    """``out/checkpoints/last.ckpt``, checked against ``resume``: resuming needs it, a fresh run must not find one
    (it would silently mix two runs). Raises ``ConfigError`` saying which flag to use."""
    from frugalvision.train.config import ConfigError

    last = Path(out) / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: no checkpoint at {last} (start the run without --resume)")
    if not resume and last.is_file():
        raise ConfigError(
            f"{out} already holds a {what} ({last}); pass --resume to continue it, or choose another --out"
        )
    return last
