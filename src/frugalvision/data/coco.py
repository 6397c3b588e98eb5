"""Read a COCO detection annotation file (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from frugalvision._checks import check_choice
from frugalvision.data._common import BOX_TOLERANCE_PX, check_dir, check_file, raise_missing, short_list
from frugalvision.data.dataset import ImageDataset, OnCorrupt, Sample
from frugalvision.errors import DataError

__all__ = ["read_coco"]


def _get(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing key '{key}'")
    return obj[key]


def _id(value: Any, where: str, key: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: '{key}' must be an integer or a string, got {value!r}")
    return value


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _clip(value: float, size: float) -> float:
    return min(max(value, 0.0), size)


def _list_of_dicts(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = _get(data, key, str(path))
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{path}: '{key}' must be a list of objects")
    return value


def read_coco(
    annotation_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
    *,
    on_corrupt: OnCorrupt = "skip",
) -> ImageDataset:
    """Read a COCO-format detection data set.

    Classes are the category names in category-id order (ids need not be contiguous; label ``k`` is the
    ``k``-th smallest id). Each image's labels are the sorted set of its boxes' classes (the data set is
    multi-label; an image without annotations has no labels and a ``(0, 4)`` box array). Boxes are
    converted from ``[x, y, w, h]`` to ``(x0, y0, x1, y1)`` pixels; a box overhanging the image by at most
    1 pixel (rounding in annotation tools) is clipped to it. Crowd annotations (``iscrowd=1``) are kept as boxes.
    Samples follow the order of the ``images`` list.

    Args:
        annotation_file: the COCO JSON file.
        image_dir: folder that ``file_name`` is relative to. Default: the ``images/`` folder beside the
            JSON file if there is one, else the JSON file's folder.
        on_corrupt: ``"skip"`` or ``"fail"``; see :class:`ImageDataset`.

    Raises:
        DataError: malformed JSON, missing keys, repeated ids, an annotation whose ``image_id`` or
            ``category_id`` is unknown, a negative width/height, a box outside its image, or missing image
            files. Messages name the file and the image or annotation id.

    Example:
        >>> ds = read_coco("instances_val.json", "val2017/")  # doctest: +SKIP
    """
    check_choice(on_corrupt, ("skip", "fail"), "on_corrupt")
    path = check_file(annotation_file, "COCO annotation file")
    if image_dir is None:
        image_root = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    else:
        image_root = check_dir(image_dir, "COCO image folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    categories = _list_of_dicts(data, "categories", path)
    images = _list_of_dicts(data, "images", path)
    annotations = _list_of_dicts(data, "annotations", path)

    cat_ids: dict[int, str] = {}
    for i, cat in enumerate(categories):
        where = f"{path}: categories[{i}]"
        cid = _get(cat, "id", where)
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{where}: category 'id' must be an integer, got {cid!r}")
        name = _get(cat, "name", where)
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        if cid in cat_ids:
            raise DataError(f"{where}: category id {cid!r} is repeated")
        if name in cat_ids.values():
            raise DataError(f"{where}: category name {name!r} is repeated (category id {cid!r})")
        cat_ids[cid] = name
    order = sorted(cat_ids)
    classes = [cat_ids[c] for c in order]
    cat_index = {c: k for k, c in enumerate(order)}

    image_info: dict[int | str, tuple[Path, float, float]] = {}
    seen_files: dict[str, int | str] = {}
    for i, img in enumerate(images):
        where = f"{path}: images[{i}]"
        iid = _id(_get(img, "id", where), where, "id")
        where = f"{path}: image id {iid!r} (images[{i}])"
        file_name = _get(img, "file_name", where)
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
        width = _number(_get(img, "width", where), where, "width")
        height = _number(_get(img, "height", where), where, "height")
        if width <= 0 or height <= 0:
            raise DataError(f"{where}: width and height must be positive, got {width} x {height}")
        if iid in image_info:
            raise DataError(f"{where}: image id {iid!r} is repeated")
        if file_name in seen_files:
            raise DataError(
                f"{where}: file_name {file_name!r} is repeated (also image id {seen_files[file_name]!r})"
            )
        seen_files[file_name] = iid
        image_info[iid] = (image_root / file_name, width, height)

    boxes: dict[int | str, list[list[float]]] = {iid: [] for iid in image_info}
    box_labels: dict[int | str, list[int]] = {iid: [] for iid in image_info}
    for j, ann in enumerate(annotations):
        where = (
            f"{path}: annotation id {ann['id']!r} (annotations[{j}])"
            if "id" in ann
            else f"{path}: annotations[{j}]"
        )
        iid = _get(ann, "image_id", where)
        cid = _get(ann, "category_id", where)
        bbox = _get(ann, "bbox", where)
        if not isinstance(iid, (int, str)) or isinstance(iid, bool) or iid not in image_info:
            raise DataError(f"{where}: unknown image_id {iid!r} (not in 'images')")
        if not isinstance(cid, int) or isinstance(cid, bool) or cid not in cat_index:
            raise DataError(
                f"{where}: unknown category_id {cid!r}; known category ids: {short_list(order, 20)}"
            )
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_number(v, where, "bbox") for v in bbox)
        if w < 0 or h < 0:
            raise DataError(f"{where}: bbox has negative width or height: {bbox!r} (expected [x, y, w, h])")
        _, img_w, img_h = image_info[iid]
        x0, y0, x1, y1 = x, y, x + w, y + h
        tol = BOX_TOLERANCE_PX
        if x0 < -tol or y0 < -tol or x1 > img_w + tol or y1 > img_h + tol:
            raise DataError(
                f"{where}: bbox {bbox!r} (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) lies outside image id "
                f"{iid!r} of size {img_w:g} x {img_h:g}"
            )
        boxes[iid].append([_clip(x0, img_w), _clip(y0, img_h), _clip(x1, img_w), _clip(y1, img_h)])
        box_labels[iid].append(cat_index[cid])

    samples: list[Sample] = []
    missing: list[str] = []
    for iid, (file, _, _) in image_info.items():
        if not file.is_file():
            missing.append(f"image id {iid!r}: {file}")
        samples.append(
            Sample(
                path=file,
                labels=tuple(sorted(set(box_labels[iid]))),
                boxes=np.array(boxes[iid], dtype=np.float32).reshape(-1, 4),
                box_labels=np.array(box_labels[iid], dtype=np.int64),
            )
        )
    raise_missing(missing, path)
    return ImageDataset(samples, classes, on_corrupt=on_corrupt, multilabel=True, source=f"COCO {path}")
