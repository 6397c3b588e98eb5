"""Read a class-per-folder tree (``root/<class>/**/<image>``), the layout of ImageNet and torchvision's ImageFolder."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from frugalvision._checks import check_choice
from frugalvision._fs import IMAGE_EXTENSIONS, is_image_file, list_images, normalize_extensions
from frugalvision.data._common import check_dir, short_list
from frugalvision.data.dataset import ImageDataset, OnCorrupt, Sample
from frugalvision.errors import DataError

__all__ = ["read_folder"]


def read_folder(
    root: str | os.PathLike[str],
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    on_corrupt: OnCorrupt = "skip",
) -> ImageDataset:
    """Read a data set laid out as one sub-folder per class.

    Classes are the sorted names of the visible sub-folders of ``root``; every image inside a class
    folder, at any depth, gets that class. Samples are ordered by class, then by relative path, so two
    calls give the same order on any machine. Hidden files and folders (``.name``) are ignored, as are
    files directly under ``root`` (a warning says how many). A class folder without images is kept as a
    class with no samples, so label indices stay aligned between, say, a train and a val tree, and a
    warning lists those folders.

    Args:
        root: the folder holding the class folders.
        extensions: file extensions read as images, any case.
        on_corrupt: ``"skip"`` or ``"fail"``; see :class:`ImageDataset`.

    Returns:
        A single-label :class:`ImageDataset`.

    Raises:
        DataError: ``root`` is missing or not a folder, has no class folders, or holds no image at all.

    Example:
        >>> ds = read_folder("flowers/train")  # doctest: +SKIP
        >>> ds.classes[:2], len(ds)
        (['daisy', 'rose'], 1340)
    """
    check_choice(on_corrupt, ("skip", "fail"), "on_corrupt")
    exts = normalize_extensions(extensions)
    root = check_dir(root, "data set folder")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    class_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    loose = [p.name for p in entries if is_image_file(p, exts)]
    if not class_dirs:
        hint = (
            f"; it holds {len(loose)} image(s) directly, which have no class: move them into one folder per "
            "class, or list them in a CSV manifest (read_manifest)"
            if loose
            else ""
        )
        raise DataError(f"no class folders found in {root}: expected root/<class name>/<images>{hint}")
    if loose:
        warnings.warn(
            f"{len(loose)} image(s) directly under {root} belong to no class folder and are ignored: "
            f"{short_list(loose, 5)}",
            UserWarning,
            stacklevel=2,
        )

    samples: list[Sample] = []
    empty: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        images = list_images(class_dir, exts)
        if not images:
            empty.append(class_dir.name)
        samples.extend(Sample(path=p, labels=(label,)) for p in images)
    if not samples:
        raise DataError(
            f"no images found in the {len(class_dirs)} class folder(s) of {root} "
            f"(looked for extensions {', '.join(sorted(exts))})"
        )
    if empty:
        warnings.warn(
            f"{len(empty)} class folder(s) in {root} contain no images and are kept as classes with zero "
            f"samples: {short_list(empty)}",
            UserWarning,
            stacklevel=2,
        )
    return ImageDataset(
        samples,
        [d.name for d in class_dirs],
        on_corrupt=on_corrupt,
        multilabel=False,
        source=f"folder {root}",
    )
