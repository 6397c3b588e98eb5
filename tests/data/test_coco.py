"""read_coco: COCO detection JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frugalvision.data import read_coco
from frugalvision.errors import DataError


def coco_dict() -> dict[str, Any]:
    return {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "sub/b.jpg", "width": 20, "height": 10},
            {"id": 9, "file_name": "c.jpg", "width": 40, "height": 30},
        ],
        "categories": [  # non-contiguous ids given out of order
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
        "annotations": [
            {"id": 100, "image_id": 7, "category_id": 18, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 101, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30]},
            {"id": 102, "image_id": 7, "category_id": 18, "bbox": [5.5, 6.25, 2, 3]},
            {
                "id": 103,
                "image_id": 3,
                "category_id": 3,
                "bbox": [-0.4, 0, 20.8, 10.3],
            },  # within 1 px: clipped
        ],
    }


@pytest.fixture
def coco_dir(tmp_path: Path, write_image) -> Path:
    for name, size in [("a.jpg", (40, 30)), ("sub/b.jpg", (20, 10)), ("c.jpg", (40, 30))]:
        write_image(tmp_path / "images" / name, size=size)
    return tmp_path


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_happy_path(coco_dir: Path) -> None:
    ds = read_coco(write(coco_dir / "ann.json", coco_dict()))  # images/ beside the JSON by default
    assert ds.classes == ["person", "car", "dog"]  # category-id order 1, 3, 18
    assert ds.multilabel and ds.has_boxes
    assert ds.paths == [coco_dir / "images/a.jpg", coco_dir / "images/sub/b.jpg", coco_dir / "images/c.jpg"]
    a, b, c = ds.samples
    assert a.labels == (0, 2)  # sorted set of the box classes
    np.testing.assert_array_equal(
        a.boxes, np.array([[1, 2, 11, 7], [0, 0, 40, 30], [5.5, 6.25, 7.5, 9.25]], np.float32)
    )
    np.testing.assert_array_equal(a.box_labels, [2, 0, 2])
    np.testing.assert_allclose(b.boxes, [[0, 0, 20, 10]])  # [-0.4, 20.4] x [0, 10.3] clipped to the image
    assert c.labels == () and c.boxes is not None and c.boxes.shape == (0, 4) and c.box_labels.shape == (0,)
    assert ds.label_names(0) == ("person", "dog")


def test_image_dir_argument_and_fallback(tmp_path: Path, write_image) -> None:
    data = coco_dict()
    data["images"] = data["images"][:1]
    data["annotations"] = data["annotations"][:3]
    write_image(tmp_path / "pics/a.jpg", size=(40, 30))
    ann = write(tmp_path / "ann.json", data)
    assert read_coco(ann, tmp_path / "pics").paths == [tmp_path / "pics/a.jpg"]
    write_image(tmp_path / "a.jpg", size=(40, 30))
    assert read_coco(ann).paths == [tmp_path / "a.jpg"]  # no images/ folder: the JSON's own folder


def edit(fn) -> dict[str, Any]:
    data = copy.deepcopy(coco_dict())
    fn(data)
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            edit(lambda d: d["annotations"][2].update(category_id=99)),
            r"annotation id 102 \(annotations\[2\]\): unknown category_id 99",
        ),
        (edit(lambda d: d["annotations"][1].update(image_id=5)), r"annotation id 101 .*unknown image_id 5"),
        (
            edit(lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
            r"annotation id 100 .*negative width or height",
        ),
        (
            edit(lambda d: d["annotations"][0].update(bbox=[35, 2, 10, 4])),
            r"annotation id 100 .*outside image id 7 of size 40 x 30",
        ),
        (
            edit(lambda d: d["annotations"][3].update(bbox=[0, -1.5, 5, 5])),
            r"annotation id 103 .*outside image id 3",
        ),
        (
            edit(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
            r"annotation id 100 .*\[x, y, width, height\]",
        ),
        (
            edit(lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4])),
            r"annotation id 100 .*finite number",
        ),
        (
            edit(lambda d: d["annotations"][0].pop("bbox")),
            r"annotation id 100 \(annotations\[0\]\): missing key 'bbox'",
        ),
        (
            edit(lambda d: d["annotations"][0].pop("id") and d["annotations"][0].pop("image_id")),
            r"annotations\[0\]: missing key 'image_id'",
        ),
        (edit(lambda d: d["images"][1].pop("width")), r"image id 3 \(images\[1\]\): missing key 'width'"),
        (edit(lambda d: d["images"][1].update(height=0)), r"image id 3 .*must be positive"),
        (edit(lambda d: d["images"][2].update(id=7)), r"image id 7 \(images\[2\]\).*repeated"),
        (edit(lambda d: d["images"][2].update(file_name="a.jpg")), r"file_name 'a\.jpg' is repeated"),
        (edit(lambda d: d["images"][0].pop("file_name")), r"image id 7 .*missing key 'file_name'"),
        (edit(lambda d: d["categories"][1].update(id=18)), r"categories\[1\]: category id 18 is repeated"),
        (edit(lambda d: d["categories"][1].update(name="dog")), r"category name 'dog' is repeated"),
        (
            edit(lambda d: d["categories"][0].update(id="18")),
            r"categories\[0\]: category 'id' must be an integer",
        ),
        (edit(lambda d: d.pop("annotations")), r"ann\.json: missing key 'annotations'"),
        (edit(lambda d: d.update(images={})), r"'images' must be a list of objects"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_bad_annotations(coco_dir: Path, data: Any, match: str) -> None:
    ann = write(coco_dir / "ann.json", data)
    with pytest.raises(DataError, match=match) as info:
        read_coco(ann)
    assert str(ann) in str(info.value)


def test_malformed_json_names_line(coco_dir: Path) -> None:
    ann = coco_dir / "ann.json"
    ann.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"malformed JSON in .*ann\.json at line 3"):
        read_coco(ann)


def test_missing_image_files_are_listed(coco_dir: Path) -> None:
    (coco_dir / "images/sub/b.jpg").unlink()
    (coco_dir / "images/c.jpg").unlink()
    ann = write(coco_dir / "ann.json", coco_dict())
    with pytest.raises(
        DataError,
        match=r"2 image file\(s\) referenced in .*ann\.json do not exist: image id 3: .*b\.jpg, image id 9",
    ):
        read_coco(ann)
    with pytest.raises(DataError, match="COCO annotation file not found"):
        read_coco(coco_dir / "nope.json")
    with pytest.raises(DataError, match="COCO image folder not found"):
        read_coco(ann, coco_dir / "nowhere")
