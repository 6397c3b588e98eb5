"""Files and folders, the package-wide way: which files are images, atomic writes, and the leftovers of killed saves.

**Images in a folder.** :data:`IMAGE_EXTENSIONS` is the one list of extensions read as images (compared
case-insensitively); :func:`list_images` walks a folder recursively, skipping hidden files and folders.

**Atomic writes.** A file is written to ``.<name>.tmp-<pid>`` beside it and renamed over it
(:func:`write_text_atomic`); a folder is built in ``.<name>.tmp-<pid>-<suffix>`` and moved over the old one, which
is first renamed to ``.<name>.old-<pid>`` (:func:`atomic_replace_dir`). ``os.replace`` is atomic on POSIX and
Windows, so a reader sees the old version or the new one, never half of one.

**Leftovers.** A killed process leaves ``.<name>.tmp-<pid>[-<suffix>]`` and ``.<name>.old-<pid>[-<suffix>]``
behind. :func:`leftovers` finds those of processes that are no longer running, and only names of that exact form,
so the next save can clean them (:func:`recover_interrupted_save`).

**Reading.** :func:`read_json` reads the JSON file of a saved folder (a bundle's ``config.json``, a store's
``info.json``...) and names the file when it is not valid JSON.

Standard library only (and :mod:`frugalvision.errors`): the torch-free runtime imports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frugalvision.errors import StoreError

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_replace_dir",
    "fsync",
    "is_image_file",
    "leftovers",
    "list_images",
    "normalize_extensions",
    "process_running",
    "read_json",
    "recover_interrupted_save",
    "replacing_dir",
    "write_text_atomic",
]

#: File extensions read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------- images in a folder
def normalize_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """Return ``extensions`` lower-cased with a leading dot (``"JPG"`` and ``".jpg"`` both give ``".jpg"``)."""
    if isinstance(extensions, str):
        raise TypeError(
            f"extensions must be a sequence of strings such as ('.jpg', '.png'), got {extensions!r}"
        )
    out = set()
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip(".").strip():
            raise ValueError(f"extensions must be non-empty strings such as '.jpg', got {ext!r}")
        out.add("." + ext.strip().lstrip(".").lower())
    if not out:
        raise ValueError("extensions must name at least one file extension, got an empty sequence")
    return frozenset(out)


def is_image_file(path: Path, extensions: frozenset[str]) -> bool:
    """True if ``path`` is a visible regular file whose extension (any case) is in ``extensions``."""
    return not path.name.startswith(".") and path.suffix.lower() in extensions and path.is_file()


def list_images(folder: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path; hidden files and folders skipped.

    Symbolic links to files are followed; links to folders are not descended (no cycles).
    """
    folder = Path(folder)
    exts = normalize_extensions(extensions)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            path = base / name
            if path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


# ------------------------------------------------------------------------------------------------------ reading
def read_json(path: str | os.PathLike[str], error: type[Exception] = StoreError) -> Any:
    """The JSON value of the UTF-8 file ``path`` (a saved folder's record: ``config.json``, ``info.json``...).

    Raises:
        FileNotFoundError: ``path`` does not exist (callers check what a complete folder holds first).
        StoreError: (or ``error``) the file is not valid UTF-8 JSON: ``"<path> is not valid JSON: <reason>"``.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from e


# ------------------------------------------------------------------------------------------------ atomic writes
def fsync(path: Path) -> None:
    """Flush ``path`` (a file or directory) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``.<name>.tmp-<pid>`` renamed into place; parent folders are
    created. A failed write (a full disk) leaves the previous file as it was and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_replace_dir(tmp: Path, target: Path) -> None:
    """Move the complete folder ``tmp`` to ``target``, replacing an old ``target`` only at the very end.

    The old ``target`` is first renamed to ``.<name>.old-<pid>`` beside it; if the final rename fails it is put
    back, and if the process is killed between the two renames :func:`recover_interrupted_save` puts it back.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replacing_dir(target: Path) -> Iterator[Path]:
    """Build the folder that replaces ``target``: yields a new empty folder ``.<name>.tmp-<pid>-<suffix>`` beside
    ``target`` (parents created); when the block ends without an error it is moved over ``target``
    (:func:`atomic_replace_dir`), else it is removed with all that was written in it and ``target`` is untouched.
    What killed saves of ``target`` left beside it is cleaned first (:func:`recover_interrupted_save`).

    Example::

        with replacing_dir(Path("runs/x/model")) as tmp:
            (tmp / "config.json").write_text(...)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -------------------------------------------------------------------------------------------------- leftovers
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


def recover_interrupted_save(directory: str | os.PathLike[str]) -> bool:
    """Clean what a killed atomic folder save left beside ``directory``; returns whether the previous folder was
    put back.

    Only our own names are touched, and only those of processes that are no longer running:
    ``.<name>.tmp-<pid>-<suffix>`` (a folder being written: removed) and ``.<name>.old-<pid>`` (the previous
    folder, moved aside for the final rename: put back if ``directory`` is missing, else removed).
    """
    target = Path(directory)
    restored = False
    for entry, kind in list(leftovers(target)):
        if kind == "old" and not target.exists():
            os.replace(entry, target)
            restored = True
        else:
            shutil.rmtree(entry, ignore_errors=True)
    return restored
