"""COCO JSON with RLE masks: round trips, and pycocotools reads what we write."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from frugalvision.discover import (
    Discovery,
    decode_rle,
    encode_rle,
    load_discoveries,
    masks_to_boxes,
    save_coco_json,
    to_coco,
)
from frugalvision.errors import DataError

mask_api = pytest.importorskip("pycocotools.mask")


def _discovery(seed: int, size: tuple[int, int] = (37, 23), k: int = 2) -> Discovery:
    rng = np.random.default_rng(seed)
    w, h = size
    masks = np.zeros((k, h, w), dtype=bool)
    for i in range(k):
        x0, y0 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        masks[i, y0 : y0 + rng.integers(2, 6), x0 : x0 + rng.integers(2, 6)] = True
        masks[i] |= rng.random((h, w)) < 0.05  # scattered pixels: a non-trivial RLE
    return Discovery(
        masks, masks_to_boxes(masks), rng.random(k).astype(np.float32), np.zeros((k, 3, 3), bool), size
    )


@pytest.mark.parametrize("fill", ["random", "empty", "full"])
def test_rle_round_trip(fill: str) -> None:
    rng = np.random.default_rng(0)
    mask = {
        "random": rng.random((19, 31)) < 0.3,
        "empty": np.zeros((19, 31), bool),
        "full": np.ones((19, 31), bool),
    }[fill]
    rle = encode_rle(mask)
    assert rle["size"] == [19, 31] and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-ready
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert int(mask_api.area({"size": rle["size"], "counts": rle["counts"].encode()})) == mask.sum()


def test_coco_file_round_trip(tmp_path: Path) -> None:
    items = [
        ("a/one.jpg", _discovery(0)),
        ("two.png", _discovery(1, size=(20, 30), k=1)),
        ("empty.jpg", _discovery(2, k=0)),
    ]
    data = to_coco(items, extra={"settings": {"tau": 0.15}})
    path = save_coco_json(data, tmp_path / "out" / "results.json")
    assert [im["file_name"] for im in data["images"]] == ["a/one.jpg", "two.png", "empty.jpg"]
    assert len(data["annotations"]) == 3 and data["info"]["settings"] == {"tau": 0.15}
    back = load_discoveries(path)
    assert [name for name, _ in back] == ["a/one.jpg", "two.png", "empty.jpg"]
    for (_, original), (_, loaded) in zip(items, back, strict=True):
        np.testing.assert_array_equal(loaded.masks, original.masks)
        np.testing.assert_array_equal(loaded.boxes, original.boxes)
        np.testing.assert_allclose(loaded.scores, original.scores)
        assert loaded.image_size == original.image_size


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
def test_pycocotools_reads_the_file(tmp_path: Path) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    found = _discovery(3, k=3)
    path = save_coco_json(to_coco([("x.jpg", found)]), tmp_path / "r.json")
    with contextlib.redirect_stdout(io.StringIO()):
        api = coco_mod.COCO(str(path))
    anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    for ann, mask, box in zip(anns, found.masks, found.boxes, strict=True):
        np.testing.assert_array_equal(api.annToMask(ann).astype(bool), mask)
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        np.testing.assert_allclose(mask_api.toBbox(rle), ann["bbox"])  # pycocotools' box of the mask
        np.testing.assert_allclose(ann["bbox"], [box[0], box[1], box[2] - box[0], box[3] - box[1]])
        assert ann["area"] == int(mask_api.area(rle)) and ann["category_id"] == 1


def test_load_rejects_a_file_that_is_not_coco(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1}]}')
    with pytest.raises(DataError, match=r"bad\.json"):
        load_discoveries(bad)
    with pytest.raises(ValueError, match="size"):
        decode_rle({"counts": "abc"})
