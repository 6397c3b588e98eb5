"""Read a PASCAL-VOC detection layout (``JPEGImages/``, ``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``).

Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010. Each XML file holds
``<size>`` and ``<object>`` elements with ``<name>`` and ``<bndbox>`` (``xmin ymin xmax ymax``, 1-based
inclusive pixel indices). Boxes become continuous ``(x0, y0, x1, y1)`` = ``(xmin - 1, ymin - 1, xmax, ymax)``
pixels, the convention of torchvision and detectron2.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from frugalvision.data import IMAGE_EXTENSIONS, ImageDataset, Sample
from frugalvision.errors import DataError

__all__ = ["read_voc"]


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> must be a number, got {text!r}") from None


def _parse(xml_file: Path) -> tuple[str | None, tuple[float, float] | None, list[tuple[str, list[float]]]]:
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml_file}: malformed XML ({exc})") from exc
    filename = root.findtext("filename")
    size_node = root.find("size")
    size = None
    if size_node is not None and size_node.find("width") is not None:
        size = (
            _number(size_node, "width", f"{xml_file} <size>"),
            _number(size_node, "height", f"{xml_file} <size>"),
        )
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_file} <object> #{k + 1}"
        name = _text(obj, "name", where)
        box_node = obj.find("bndbox")
        if box_node is None:
            raise DataError(f"{where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box_node, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DataError(f"{where}: box has xmax < xmin or ymax < ymin: {(xmin, ymin, xmax, ymax)}")
        objects.append((name, [xmin - 1.0, ymin - 1.0, xmax, ymax]))
    return (filename.strip() if filename else None), size, objects


def read_voc(root: str | os.PathLike[str], split: str | None = None) -> ImageDataset:
    """Read a PASCAL-VOC folder as an :class:`~frugalvision.data.ImageDataset` with boxes.

    Args:
        root: folder holding ``JPEGImages/`` and ``Annotations/``.
        split: name of a list in ``ImageSets/Main/`` (``"test"``, ``"trainval"``...); ``None`` reads every
            XML file in ``Annotations/``.

    Returns:
        A multi-label data set; classes are the object names, sorted. Boxes are clipped to the ``<size>``
        of the image when it is given (VOC exports often overhang by a pixel).

    Raises:
        DataError: a folder, split file, XML file or image is missing, or an XML file is malformed (names
            the file and object).
    """
    root = Path(root)
    images_dir, ann_dir = root / "JPEGImages", root / "Annotations"
    for folder in (images_dir, ann_dir):
        if not folder.is_dir():
            raise DataError(f"PASCAL-VOC folder {root} has no {folder.name}/ sub-folder")
    if split is None:
        xml_files = sorted(ann_dir.glob("*.xml"))
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"split file not found: {split_file}")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        xml_files = [ann_dir / f"{i}.xml" for i in ids]
    if not xml_files:
        raise DataError(f"no annotation files found in {ann_dir}")
    parsed = []
    for xml_file in xml_files:
        if not xml_file.is_file():
            raise DataError(f"annotation file not found: {xml_file}")
        filename, size, objects = _parse(xml_file)
        candidates = [images_dir / filename] if filename else []
        candidates += [images_dir / (xml_file.stem + ext) for ext in IMAGE_EXTENSIONS]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DataError(f"{xml_file}: image not found in {images_dir} (looked for {candidates[0].name})")
        parsed.append((image, size, objects))
    classes = sorted({name for _, _, objects in parsed for name, _ in objects})
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for image, size, objects in parsed:
        boxes = np.asarray([b for _, b in objects], dtype=np.float64).reshape(-1, 4)
        if size is not None:
            boxes = np.clip(boxes, 0.0, [size[0], size[1], size[0], size[1]])
        box_labels = np.asarray([index[n] for n, _ in objects], dtype=np.int64)
        samples.append(
            Sample(
                path=image, labels=tuple(sorted(set(box_labels.tolist()))), boxes=boxes, box_labels=box_labels
            )
        )
    return ImageDataset(samples, classes, multilabel=True, source=str(root))
