"""open_dataset / detect_format: dispatch on the layout of the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frugalvision.data import detect_format, open_dataset
from frugalvision.errors import DataError


def test_manifest_files(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\n")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": "dog"}\n')
    assert detect_format(tmp_path / "m.csv") == "manifest"
    assert open_dataset(tmp_path / "m.csv").classes == ["cat"]
    assert open_dataset(tmp_path / "m.jsonl", classes=["cat", "dog"]).primary_labels().tolist() == [1]


def test_coco_file_with_default_and_given_image_dir(tmp_path: Path, write_image) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 3]}],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    write_image(tmp_path / "images/a.png")
    write_image(tmp_path / "other/a.png")
    assert detect_format(tmp_path / "ann.json") == "coco"
    assert open_dataset(tmp_path / "ann.json").paths == [tmp_path / "images/a.png"]
    assert open_dataset(tmp_path / "ann.json", image_dir=tmp_path / "other").paths == [
        tmp_path / "other/a.png"
    ]


def test_yolo_folder_finds_names_file(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "images/a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    assert detect_format(tmp_path) == "yolo"
    with pytest.raises(DataError, match=r"needs class names.*classes\.txt.*names\.txt"):
        open_dataset(tmp_path)
    (tmp_path / "labels/names.txt").write_text("cat\ndog\n")
    assert open_dataset(tmp_path).classes == ["cat", "dog"]
    (tmp_path / "classes.txt").write_text("x\ny\n")  # the data set folder is searched first
    assert open_dataset(tmp_path).classes == ["x", "y"]
    assert open_dataset(tmp_path, classes=["p", "q"]).label_names(0) == ("q",)


def test_class_folder_tree(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "cat/a.png")
    write_image(tmp_path / "dog/b.png")
    assert detect_format(tmp_path) == "folder"
    ds = open_dataset(tmp_path, on_corrupt="fail")
    assert ds.classes == ["cat", "dog"] and ds.on_corrupt == "fail"
    # a forced format overrides detection
    with pytest.raises(DataError, match="YOLO label folder not found"):
        open_dataset(tmp_path, format="yolo", classes=["x"], label_dir=tmp_path / "nope")


def test_unrecognised_layouts_list_what_was_looked_for(tmp_path: Path, write_image) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"notes\.txt: looked for a manifest file .*COCO.*YOLO.*class-per-folder"
    ):
        open_dataset(tmp_path / "notes.txt")
    write_image(tmp_path / "flat/a.png")
    with pytest.raises(DataError, match=r"folder .*flat: it has no sub-folders; looked for"):
        open_dataset(tmp_path / "flat")
    with pytest.raises(DataError, match=r"data set not found: .*absent"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="format must be one of"):
        open_dataset(tmp_path, format="voc")
