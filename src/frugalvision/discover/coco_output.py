"""MaskCut results as a COCO JSON file: images, class-agnostic annotations with boxes, scores and RLE masks.

The layout is COCO's instance format (https://cocodataset.org/#format-data) with one category, ``object``;
each annotation also carries the detection ``score`` so the file doubles as a results file for
``pycocotools.COCOeval`` (``coco.loadRes(json["annotations"])``). Masks are run-length encoded with
``pycocotools.mask.encode`` (column-major RLE, ``counts`` as an ASCII string).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frugalvision._fs import write_text_atomic
from frugalvision._lazy import optional_import
from frugalvision.discover.maskcut import Discovery, masks_to_boxes
from frugalvision.errors import DataError

__all__ = ["CATEGORY", "decode_rle", "encode_rle", "load_discoveries", "save_coco_json", "to_coco"]

#: The single class-agnostic category.
CATEGORY: dict[str, Any] = {"id": 1, "name": "object", "supercategory": "object"}


def _mask_api() -> Any:
    return optional_import(
        "pycocotools.mask", "COCO RLE masks need pycocotools: pip install pycocotools (or frugalvision[full])"
    )


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a ``(H, W)`` bool mask: ``{"size": [H, W], "counts": "<ascii>"}`` (JSON-ready)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rle = _mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle`: ``(H, W)`` bool mask."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts', got {rle!r:.120}")
    counts = rle["counts"]
    compressed = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    with warnings.catch_warnings():
        # pycocotools 2.0.x trips NumPy 2's copy-keyword deprecation inside decode; harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = _mask_api().decode(compressed)
    return np.asarray(decoded, dtype=bool)


def to_coco(
    results: Sequence[tuple[str, Discovery]],
    *,
    description: str = "frugalvision MaskCut pseudo-labels",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the COCO dictionary for ``[(file_name, discovery), ...]``.

    Image ids and annotation ids count from 1 in the given order; ``bbox`` is ``[x, y, w, h]`` pixels,
    ``area`` the mask's pixel count, ``segmentation`` its RLE, ``score`` the cut's confidence.

    Args:
        results: file name (stored as given, e.g. relative to the image folder) and discovery per image.
        description: ``info.description``.
        extra: merged into ``info`` (e.g. the model and settings used).
    """
    images, annotations = [], []
    ann_id = 1
    for image_id, (file_name, found) in enumerate(results, start=1):
        if not isinstance(found, Discovery):
            raise TypeError(f"results[{image_id - 1}] must hold a Discovery, got {type(found).__name__}")
        width, height = found.image_size
        images.append(
            {"id": image_id, "file_name": str(file_name), "width": int(width), "height": int(height)}
        )
        for mask, box, score in zip(found.masks, found.boxes, found.scores, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": CATEGORY["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "segmentation": encode_rle(mask),
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    info = {"description": description, **(extra or {})}
    return {"info": info, "images": images, "annotations": annotations, "categories": [dict(CATEGORY)]}


def save_coco_json(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as JSON atomically (temporary file, then rename); folders are created."""
    return write_text_atomic(path, json.dumps(data))


def load_discoveries(path: str | os.PathLike[str]) -> list[tuple[str, Discovery]]:
    """Read a file written by :func:`save_coco_json` back into ``[(file_name, Discovery), ...]``.

    Masks are decoded from their RLE; boxes are recomputed from the masks (and checked against ``bbox``);
    ``patch_masks`` are not stored and come back empty ``(K, 0, 0)``.

    Raises:
        DataError: the file is not valid JSON or lacks COCO's keys; names the file and annotation id.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        for ann in data["annotations"]:
            per_image[int(ann["image_id"])].append(ann)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a COCO discovery file: {exc!r}") from exc
    out = []
    for image_id, im in images.items():
        anns = sorted(per_image[image_id], key=lambda a: int(a["id"]))
        width, height = int(im["width"]), int(im["height"])
        masks = np.zeros((len(anns), height, width), dtype=bool)
        for k, ann in enumerate(anns):
            masks[k] = decode_rle(ann["segmentation"])
        boxes = masks_to_boxes(masks)
        for ann, box in zip(anns, boxes, strict=True):
            x, y, w, h = ann["bbox"]
            if not np.allclose(box, [x, y, x + w, y + h], atol=1e-3):
                raise DataError(
                    f"{path}: annotation {ann['id']} has bbox {ann['bbox']} but its mask spans {box}"
                )
        scores = np.asarray([float(a.get("score", 1.0)) for a in anns], dtype=np.float32)
        found = Discovery(masks, boxes, scores, np.zeros((len(anns), 0, 0), dtype=bool), (width, height))
        out.append((str(im["file_name"]), found))
    return out
