"""MaskCut over a folder or a detection data set: which images, their ground truth, and the loop.

:func:`open_discovery_set` recognises a plain folder of images (no ground truth), a YOLO folder
(``images/`` + ``labels/``), a PASCAL-VOC folder (``JPEGImages/`` + ``Annotations/``) or a COCO JSON file;
:func:`discover_images` runs :func:`~frugalvision.discover.maskcut` on each image with a progress bar,
skipping (or failing on) unreadable and too-small images; :func:`evaluate_discoveries` scores what it found
against ground truth beside the centred-box baseline on the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from frugalvision._fs import list_images
from frugalvision.data import IMAGE_EXTENSIONS, ImageDataset, read_class_names, read_coco, read_yolo
from frugalvision.discover.maskcut import Discovery, ImageTooSmallError, maskcut
from frugalvision.discover.metrics import centre_box_baseline, evaluate_boxes
from frugalvision.discover.voc import read_voc
from frugalvision.errors import CorruptImageError, DataError, ImageFileMissingError
from frugalvision.models import Backbone

__all__ = ["DiscoverySet", "discover_images", "evaluate_discoveries", "open_discovery_set"]

_NAMES_FILES = ("classes.txt", "names.txt")


@dataclass(frozen=True)
class DiscoverySet:
    """Images to run discovery on, with ground-truth boxes when the layout has them.

    Attributes:
        root: folder the ``file_name`` of each image is written relative to.
        paths: image files.
        boxes: per image ``(G, 4)`` ``(x0, y0, x1, y1)`` ground-truth boxes, or ``None`` (plain folder).
        format: ``"folder"``, ``"yolo"``, ``"voc"`` or ``"coco"``.
    """

    root: Path
    paths: list[Path]
    boxes: list[np.ndarray] | None
    format: str

    def file_name(self, path: Path) -> str:
        """``path`` relative to :attr:`root` (POSIX separators), as stored in the COCO output."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def head(self, n: int | None) -> DiscoverySet:
        """The first ``n`` images (all when ``n`` is ``None``)."""
        if n is None:
            return self
        boxes = None if self.boxes is None else self.boxes[:n]
        return DiscoverySet(self.root, self.paths[:n], boxes, self.format)


def _yolo_classes(root: Path) -> list[str]:
    for folder in (root, root / "labels"):
        for name in _NAMES_FILES:
            if (folder / name).is_file():
                return read_class_names(folder / name)
    # class identity does not matter for class-agnostic evaluation: number the classes seen
    top = -1
    for label_file in (root / "labels").rglob("*.txt"):
        for line in label_file.read_text(encoding="utf-8-sig").splitlines():
            first = line.split()[:1]
            if first and first[0].lstrip("-").isdigit():
                top = max(top, int(first[0]))
    return [str(i) for i in range(max(top + 1, 1))]


def _from_dataset(ds: ImageDataset, root: Path, fmt: str) -> DiscoverySet:
    boxes = [np.zeros((0, 4)) if s.boxes is None else np.asarray(s.boxes, np.float64) for s in ds.samples]
    return DiscoverySet(root, list(ds.paths), boxes, fmt)


def open_discovery_set(path: str | os.PathLike[str], *, split: str | None = None) -> DiscoverySet:
    """Recognise the images (and ground-truth boxes) under ``path``.

    Rules, in order: a ``.json`` file is COCO (images beside it or in ``images/``); a folder with
    ``JPEGImages/`` and ``Annotations/`` is PASCAL-VOC (``split`` picks ``ImageSets/Main/<split>.txt``); a
    folder with ``images/`` and ``labels/`` is YOLO (class names from ``classes.txt``/``names.txt`` if there,
    else numbered; they do not matter for class-agnostic metrics); any other folder is searched
    recursively for images (extensions :data:`~frugalvision.data.IMAGE_EXTENSIONS`), without ground truth.

    Raises:
        DataError: ``path`` does not exist, holds no image, or its annotations are malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image folder not found: {path}")
    if split is not None and not (path / "JPEGImages").is_dir():
        raise DataError(
            f"split={split!r} applies to PASCAL-VOC folders (with JPEGImages/); {path} is not one"
        )
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"expected a folder of images or a COCO .json file, got the file {path}")
        ds = read_coco(path)
        return _from_dataset(
            ds, path.parent / "images" if (path.parent / "images").is_dir() else path.parent, "coco"
        )
    if (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir():
        return _from_dataset(read_voc(path, split=split), path / "JPEGImages", "voc")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        ds = read_yolo(path / "images", path / "labels", classes=_yolo_classes(path))
        return _from_dataset(ds, path / "images", "yolo")
    paths = list_images(path)
    if not paths:
        raise DataError(f"no images found in {path} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return DiscoverySet(path, paths, None, "folder")


def discover_images(
    paths: Sequence[str | os.PathLike[str]],
    backbone: Backbone,
    *,
    on_corrupt: str = "skip",
    progress: bool = True,
    callback: Callable[[int, Path, Discovery], None] | None = None,
    **maskcut_kwargs: Any,
) -> tuple[list[tuple[Path, Discovery]], list[tuple[Path, str]]]:
    """Run :func:`~frugalvision.discover.maskcut` on each image.

    Args:
        paths: image files.
        backbone: feature extractor.
        on_corrupt: ``"skip"`` (record unreadable or too-small images and go on) or ``"fail"`` (raise).
        progress: show a tqdm progress bar.
        callback: called as ``callback(index, path, discovery)`` after each image (e.g. to draw overlays).
        **maskcut_kwargs: ``num_objects``, ``tau``, ``image_size``... passed to ``maskcut``.

    Returns:
        ``(results, skipped)``: ``[(path, Discovery), ...]`` in input order and ``[(path, reason), ...]``.
    """
    if on_corrupt not in ("skip", "fail"):
        raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
    results: list[tuple[Path, Discovery]] = []
    skipped: list[tuple[Path, str]] = []
    for i, p in enumerate(tqdm(list(paths), desc="maskcut", unit="img", disable=not progress)):
        path = Path(p)
        try:
            found = maskcut(path, backbone, **maskcut_kwargs)
        except (CorruptImageError, ImageFileMissingError, ImageTooSmallError) as exc:
            if on_corrupt == "fail":
                raise
            skipped.append((path, str(exc)))
            continue
        results.append((path, found))
        if callback is not None:
            callback(i, path, found)
    return results, skipped


def evaluate_discoveries(
    discoveries: Sequence[Discovery], ground_truth: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Discovered boxes against ground truth, with the centred-box baseline on the same images.

    Args:
        discoveries: per image, what :func:`~frugalvision.discover.maskcut` found (boxes in found order,
            scores, image size).
        ground_truth: per image, ``(G, 4)`` ``(x0, y0, x1, y1)`` boxes in the same pixels.

    Returns:
        :func:`~frugalvision.discover.evaluate_boxes`'s keys (``corloc``, ``corloc_any``, ``ap``, ``ap50``,
        ``ap75``, ``images``, ``gt_boxes``, ``pred_boxes``) and ``centre_box``: the same keys for one box per
        image, centred and covering half its area (:func:`~frugalvision.discover.centre_box_baseline`). A
        ``corloc`` at or below ``centre_box["corloc"]`` means the features did not find the objects.
    """
    if len(discoveries) != len(ground_truth):
        raise ValueError(
            f"discoveries and ground_truth must list the same images: {len(discoveries)} and {len(ground_truth)}"
        )
    metrics: dict[str, Any] = evaluate_boxes(
        [d.boxes for d in discoveries], [d.scores for d in discoveries], ground_truth
    )
    metrics["centre_box"] = centre_box_baseline([d.image_size for d in discoveries], ground_truth)
    return metrics
