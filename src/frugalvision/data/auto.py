"""Open a data set of any supported layout, recognised from the path: :func:`open_dataset`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from frugalvision._checks import check_choice
from frugalvision.data.coco import read_coco
from frugalvision.data.dataset import ImageDataset
from frugalvision.data.folder import read_folder
from frugalvision.data.manifest import read_manifest
from frugalvision.data.yolo import read_yolo
from frugalvision.errors import DataError

__all__ = ["FORMATS", "detect_format", "open_dataset"]

#: Values accepted by ``open_dataset(format=...)``.
FORMATS: tuple[str, ...] = ("auto", "folder", "manifest", "coco", "yolo")
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_NAMES_FILES = ("classes.txt", "names.txt")
_LOOKED_FOR = (
    "a manifest file (.csv, .jsonl, .ndjson), a COCO annotation file (.json), a YOLO folder (with "
    "'images/' and 'labels/' sub-folders), or a class-per-folder tree (visible sub-folders holding images)"
)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return ``"manifest"``, ``"coco"``, ``"yolo"`` or ``"folder"`` for ``path``, judged from its layout.

    Rules, in order: a ``.csv``/``.jsonl``/``.ndjson`` file is a manifest; a ``.json`` file is COCO; a
    folder with both ``images/`` and ``labels/`` sub-folders is YOLO; a folder with visible sub-folders
    is a class-per-folder tree.

    Raises:
        DataError: ``path`` is missing or matches none of the rules (the message lists what was looked for).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data set not found: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in _MANIFEST_SUFFIXES:
            return "manifest"
        if suffix == ".json":
            return "coco"
        raise DataError(f"cannot recognise the data set format of file {path}: looked for {_LOOKED_FOR}")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "folder"
    raise DataError(
        f"cannot recognise the data set format of folder {path}: it has no sub-folders; looked for {_LOOKED_FOR}"
    )


def _find_names_file(folders: list[Path]) -> Path:
    for folder in folders:
        for name in _NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    looked = ", ".join(str(f / n) for f in folders for n in _NAMES_FILES)
    raise DataError(f"YOLO data set needs class names: pass classes=[...] or create one of {looked}")


def open_dataset(path: str | os.PathLike[str], *, format: str = "auto", **kwargs: Any) -> ImageDataset:
    """Open a data set, recognising its format from ``path`` (see :func:`detect_format`).

    - ``"manifest"`` -> ``read_manifest(path, **kwargs)``.
    - ``"coco"`` -> ``read_coco(path, **kwargs)``; the image folder is
      ``image_dir=`` if given, else ``images/`` beside the JSON file, else the JSON file's folder.
    - ``"yolo"`` -> ``read_yolo(path/"images", path/"labels", **kwargs)``
      (or ``path`` itself as the image folder if it has no ``images/``); unless ``classes=`` is given,
      class names come from ``classes.txt`` or ``names.txt`` in ``path`` or in its ``labels/`` folder.
    - ``"folder"`` -> ``read_folder(path, **kwargs)``.

    Args:
        path: manifest file, COCO JSON file, or folder.
        format: one of :data:`FORMATS`; ``"auto"`` detects it.
        kwargs: passed on to the reader (e.g. ``on_corrupt``, ``classes``, ``root``).

    Raises:
        DataError: the format cannot be recognised (the message lists what was looked for), or the reader's
            own errors.
    """
    check_choice(format, FORMATS, "format")
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "manifest":
        return read_manifest(path, **kwargs)
    if fmt == "coco":
        return read_coco(path, **kwargs)
    if fmt == "yolo":
        has_images = (path / "images").is_dir()
        image_dir = path / "images" if has_images else path
        label_dir = kwargs.pop("label_dir", path / "labels" if has_images else None)
        classes = kwargs.pop("classes", None)
        if classes is None:
            folders = [path] + ([Path(label_dir)] if label_dir is not None else [])
            classes = _find_names_file(folders)
        return read_yolo(image_dir, label_dir, classes=classes, **kwargs)
    return read_folder(path, **kwargs)
