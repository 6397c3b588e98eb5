"""Helpers shared by the readers: directory walking, path checks and error-message formatting."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from frugalvision.errors import DataError

#: Boxes may overhang their image by this many pixels (rounding in annotation tools); they are clipped.
BOX_TOLERANCE_PX = 1.0

__all__ = ["BOX_TOLERANCE_PX", "check_dir", "check_file", "raise_missing", "short_list"]


def short_list(items: Sequence[object], limit: int = 10) -> str:
    """``"a, b, c"``, or the first ``limit`` items followed by ``"... (N more)"``."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _existing(path: str | os.PathLike[str], what: str, kind: str, other: str) -> Path:
    """``path`` as a ``Path``; :class:`DataError` if it is missing or not a ``kind`` (``"directory"`` or
    ``"file"``; ``other`` names the one it is instead)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not (path.is_dir() if kind == "directory" else path.is_file()):
        raise DataError(f"{what} must be a {kind}, got a {other}: {path}")
    return path


def check_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DataError` if it is missing or not a directory."""
    return _existing(path, what, "directory", "file")


def check_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DataError` if it is missing or not a regular file."""
    return _existing(path, what, "file", "directory")


def raise_missing(missing: Sequence[str], source: Path) -> None:
    """Raise one :class:`DataError` listing every image file referenced by ``source`` that does not exist."""
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) referenced in {source} do not exist: {short_list(missing)}"
        )
