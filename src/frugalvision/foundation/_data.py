"""Open "some images" for the foundation-model helpers: any data-set layout, or a plain folder of images."""

from __future__ import annotations

import os
from pathlib import Path

from frugalvision._fs import list_images
from frugalvision.data import IMAGE_EXTENSIONS, ImageDataset, OnCorrupt, Sample, detect_format, open_dataset
from frugalvision.errors import DataError

__all__ = ["open_images"]


def open_images(path: str | os.PathLike[str], *, on_corrupt: OnCorrupt = "skip") -> ImageDataset:
    """Images of ``path`` as an :class:`~frugalvision.data.ImageDataset`, labelled where the layout says so.

    A manifest, COCO file, YOLO folder or class-per-folder tree is read by
    :func:`~frugalvision.data.open_dataset` (labels kept). A folder holding images directly and no
    sub-folders (the usual "unlabeled photos" folder) gives one unlabeled sample per image, sorted by
    file name.

    Raises:
        DataError: ``path`` does not exist, or holds no image.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"images not found: {p}")
    if p.is_dir():
        try:
            detect_format(p)
        except DataError:  # no sub-folders: a flat folder of unlabeled images
            images = list_images(p)
            if not images:
                raise DataError(
                    f"no images found in {p} (looked for {', '.join(IMAGE_EXTENSIONS)})"
                ) from None
            return ImageDataset(
                [Sample(path=q) for q in images], [], on_corrupt=on_corrupt, source=f"folder {p}"
            )
    return open_dataset(p, on_corrupt=on_corrupt)
