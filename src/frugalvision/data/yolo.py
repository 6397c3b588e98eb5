"""Read a YOLO detection data set: ``images/**/<name>.jpg`` with ``labels/**/<name>.txt`` of ``class cx cy w h``."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frugalvision._checks import check_choice
from frugalvision._fs import IMAGE_EXTENSIONS, list_images
from frugalvision.data._common import BOX_TOLERANCE_PX, check_dir, check_file, short_list
from frugalvision.data._image import image_size
from frugalvision.data.dataset import ImageDataset, OnCorrupt, Sample
from frugalvision.errors import CorruptImageError, DataError, ImageFileMissingError

__all__ = ["read_class_names", "read_yolo"]

# Normalised coordinates may exceed [0, 1] by this much (exporters round to 6 digits).
_COORD_TOLERANCE = 1e-3
_FIELDS = ("class", "cx", "cy", "w", "h")
_NAMES_FILES = ("classes.txt", "names.txt")


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Read class names, one per line (line ``k`` names class ``k``); trailing blank lines are ignored.

    Raises:
        DataError: the file is missing or empty, or a name is blank or repeated (names the line).
    """
    path = check_file(path, "class names file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"class names file {path} is empty: expected one class name per line")
    first_line: dict[str, int] = {}
    for n, name in enumerate(lines, start=1):
        if not name:
            raise DataError(f"{path}:{n}: empty class name (line k names class k-1; remove blank lines)")
        if name in first_line:
            raise DataError(f"{path}:{n}: class name {name!r} repeats line {first_line[name]}")
        first_line[name] = n
    return lines


def _default_label_dir(image_dir: Path) -> Path:
    parts = image_dir.parts
    if "images" not in parts:
        raise DataError(
            f"cannot guess the label folder of {image_dir}: it has no 'images' component to replace by "
            "'labels'; pass label_dir"
        )
    k = len(parts) - 1 - parts[::-1].index("images")  # last 'images': dataset/images/train -> labels/train
    return Path(*parts[:k], "labels", *parts[k + 1 :])


def _parse_label_file(label_file: Path, n_classes: int) -> list[tuple[int, list[float], int]]:
    """``[(class, [cx, cy, w, h], line), ...]`` after checking fields, types and ranges."""
    rows = []
    for n, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{n}"
        if len(fields) != 5:
            hint = (
                "; segmentation polygons are not supported"
                if len(fields) > 5 and len(fields) % 2 == 1
                else ""
            )
            raise DataError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}{hint}")
        try:
            cls = int(fields[0])
        except ValueError:
            raise DataError(
                f"{where}: field 'class' must be an integer class id, got {fields[0]!r}"
            ) from None
        if not 0 <= cls < n_classes:
            raise DataError(
                f"{where}: class id {cls} out of range for {n_classes} classes (0..{n_classes - 1})"
            )
        coords = []
        for name, text in zip(_FIELDS[1:], fields[1:], strict=True):
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{where}: field '{name}' must be a number, got {text!r}") from None
            if not math.isfinite(value) or not -_COORD_TOLERANCE <= value <= 1 + _COORD_TOLERANCE:
                raise DataError(
                    f"{where}: field '{name}' = {text} is outside [0, 1]; YOLO coordinates are normalised "
                    "by the image width/height"
                )
            coords.append(value)
        rows.append((cls, coords, n))
    return rows


def read_yolo(
    image_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | str | os.PathLike[str],
    on_corrupt: OnCorrupt = "skip",
) -> ImageDataset:
    """Read a YOLO-format detection data set.

    Every image under ``image_dir`` (recursive, sorted, hidden files skipped) is paired with the text
    file at the same relative path under ``label_dir`` with suffix ``.txt``; each line of it is
    ``class cx cy w h`` with coordinates normalised to [0, 1] by the upright image's size. A missing or
    empty label file means an image with no objects. Boxes are converted to ``(x0, y0, x1, y1)`` pixels;
    the image size comes from the file header (EXIF rotation applied, no pixel decoding), read only for
    images that have boxes. A box overhanging its image by at most 1 pixel is clipped. Each image's labels
    are the sorted set of its box classes (multi-label).

    Args:
        image_dir: folder of images.
        label_dir: folder of label files. Default: ``image_dir`` with its last ``images`` path component
            replaced by ``labels`` (``data/images`` -> ``data/labels``, ``data/images/train`` ->
            ``data/labels/train``).
        classes: class names in id order, or the path of a file with one name per line.
        on_corrupt: ``"skip"`` or ``"fail"``; see :class:`ImageDataset`. An image with boxes whose header
            cannot be read is dropped with a warning (``"skip"``) or raises (``"fail"``).

    Raises:
        DataError: a folder is missing, no image is found, or a label line is malformed (wrong number of
            fields, not a number, class id out of range, coordinates outside [0, 1], box outside the
            image); the message names the file and line.
        CorruptImageError: with ``on_corrupt="fail"``, an image's header cannot be read.

    Example:
        >>> ds = read_yolo("coco128/images", classes="coco128/classes.txt")  # doctest: +SKIP
    """
    check_choice(on_corrupt, ("skip", "fail"), "on_corrupt")
    if isinstance(classes, (str, os.PathLike)):
        names = read_class_names(classes)
    elif all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes) and classes:
        names = list(classes)
    else:
        raise ValueError(f"classes must be unique class-name strings or a names file, got {classes!r:.200}")
    image_root = check_dir(image_dir, "YOLO image folder")
    label_root = check_dir(
        label_dir if label_dir is not None else _default_label_dir(image_root), "YOLO label folder"
    )
    images = list_images(image_root)
    if not images:
        raise DataError(f"no images found in {image_root} (looked for {', '.join(IMAGE_EXTENSIONS)})")

    samples: list[Sample] = []
    unreadable: list[str] = []
    expected: set[Path] = set()
    for img in images:
        label_file = label_root / img.relative_to(image_root).with_suffix(".txt")
        expected.add(label_file)
        rows = _parse_label_file(label_file, len(names)) if label_file.is_file() else []
        boxes = np.zeros((len(rows), 4), dtype=np.float32)
        if rows:
            try:
                width, height = image_size(img)
            except (CorruptImageError, ImageFileMissingError) as exc:
                if on_corrupt == "fail":
                    raise
                unreadable.append(str(exc))
                continue
            tol_x, tol_y = BOX_TOLERANCE_PX / width, BOX_TOLERANCE_PX / height
            for k, (_, (cx, cy, w, h), n) in enumerate(rows):
                w, h = max(w, 0.0), max(h, 0.0)  # -1e-3 < w < 0 passed the tolerance check
                x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                if x0 < -tol_x or y0 < -tol_y or x1 > 1 + tol_x or y1 > 1 + tol_y:
                    raise DataError(
                        f"{label_file}:{n}: box cx={cx:g} cy={cy:g} w={w:g} h={h:g} extends outside the "
                        f"image {img.name} ({width} x {height})"
                    )
                boxes[k] = np.clip([x0 * width, y0 * height, x1 * width, y1 * height], 0, [width, height] * 2)
        box_labels = np.array([cls for cls, _, _ in rows], dtype=np.int64)
        samples.append(
            Sample(
                path=img, labels=tuple(sorted(set(box_labels.tolist()))), boxes=boxes, box_labels=box_labels
            )
        )

    if unreadable:
        warnings.warn(
            f"{len(unreadable)} image(s) with boxes in {image_root} have unreadable headers and were left "
            f"out: {short_list(unreadable, 5)}",
            UserWarning,
            stacklevel=2,
        )
    orphans = [
        p.relative_to(label_root).as_posix()
        for p in sorted(label_root.rglob("*.txt"))
        if p not in expected
        and not p.name.startswith(".")
        and not (p.parent == label_root and p.name in _NAMES_FILES)
    ]
    if orphans:
        warnings.warn(
            f"{len(orphans)} label file(s) in {label_root} match no image in {image_root} and are ignored: "
            f"{short_list(orphans, 5)}",
            UserWarning,
            stacklevel=2,
        )
    if not samples:
        raise DataError(f"no readable images in {image_root}")
    return ImageDataset(samples, names, on_corrupt=on_corrupt, multilabel=True, source=f"YOLO {image_root}")
