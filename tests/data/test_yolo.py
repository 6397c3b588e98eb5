"""read_yolo: YOLO txt labels; read_class_names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frugalvision.data import read_class_names, read_yolo
from frugalvision.errors import CorruptImageError, DataError

CLASSES = ["person", "car", "dog"]


@pytest.fixture
def yolo(tmp_path: Path, write_image) -> Path:
    """``tmp_path/ds/{images,labels}``: a.jpg (100 x 50) with 2 boxes, b.png with none (no label file),
    c.jpg with an empty label file."""
    ds = tmp_path / "ds"
    write_image(ds / "images/a.jpg", size=(100, 50))
    write_image(ds / "images/b.png", size=(10, 10))
    write_image(ds / "images/c.jpg", size=(10, 10))
    (ds / "labels").mkdir()
    (ds / "labels/a.txt").write_text("2 0.5 0.5 0.2 0.4\n\n0 0.1 0.9 0.2 0.2\n")
    (ds / "labels/c.txt").write_text("")
    return ds


def test_happy_path(yolo: Path) -> None:
    ds = read_yolo(yolo / "images", classes=CLASSES)  # labels/ beside images/ by default
    assert ds.classes == CLASSES and ds.multilabel
    assert [p.name for p in ds.paths] == ["a.jpg", "b.png", "c.jpg"]
    a, b, c = ds.samples
    # cx=0.5, w=0.2 of 100 px -> x in [40, 60]; cy=0.5, h=0.4 of 50 px -> y in [15, 35]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 40, 20, 50]], atol=1e-4)
    np.testing.assert_array_equal(a.box_labels, [2, 0])
    assert a.labels == (0, 2)
    for s in (b, c):
        assert s.labels == () and s.boxes is not None and s.boxes.shape == (0, 4)
    assert "YOLO" in repr(ds)


def test_names_file_and_nested_split(tmp_path: Path, write_image) -> None:
    names = tmp_path / "names.txt"
    names.write_text("person\ncar\n\n")
    write_image(tmp_path / "data/images/train/x.jpg", size=(20, 20))
    (tmp_path / "data/labels/train").mkdir(parents=True)
    (tmp_path / "data/labels/train/x.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    ds = read_yolo(tmp_path / "data/images/train", classes=names)  # images/train -> labels/train
    assert ds.classes == ["person", "car"]
    np.testing.assert_allclose(ds.samples[0].boxes, [[0, 0, 20, 20]])


def test_box_within_one_pixel_is_clipped(yolo: Path) -> None:
    (yolo / "labels/a.txt").write_text("0 0.505 0.5 1.0 0.5\n")  # x in [0.5, 100.5] px on a 100 px image
    np.testing.assert_allclose(
        read_yolo(yolo / "images", classes=CLASSES).samples[0].boxes, [[0.5, 12.5, 100, 37.5]]
    )


def test_exif_rotated_image_uses_upright_size(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 40))
    exif = img.getexif()
    exif[0x0112] = 6  # displayed 40 x 60
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img.save(tmp_path / "images/r.jpg", exif=exif)
    (tmp_path / "labels/r.txt").write_text("0 0.5 0.5 1 1\n")
    np.testing.assert_allclose(
        read_yolo(tmp_path / "images", classes=["x"]).samples[0].boxes, [[0, 0, 40, 60]]
    )


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("2 0.5 0.5 0.2", r"a\.txt:2: expected 5 fields 'class cx cy w h', got 4"),
        ("2 0.1 0.1 0.2 0.1 0.2 0.2", r"a\.txt:2: expected 5 fields .*segmentation polygons"),
        ("dog 0.5 0.5 0.2 0.2", r"a\.txt:2: field 'class' must be an integer class id, got 'dog'"),
        ("2 0.5 abc 0.2 0.2", r"a\.txt:2: field 'cy' must be a number, got 'abc'"),
        ("3 0.5 0.5 0.2 0.2", r"a\.txt:2: class id 3 out of range for 3 classes"),
        ("-1 0.5 0.5 0.2 0.2", r"a\.txt:2: class id -1 out of range"),
        ("0 50 25 20 10", r"a\.txt:2: field 'cx' = 50 is outside \[0, 1\]"),
        ("0 0.5 0.5 nan 0.2", r"a\.txt:2: field 'w' = nan is outside"),
        ("0 0.95 0.5 0.2 0.2", r"a\.txt:2: box cx=0.95 .*outside the image a\.jpg \(100 x 50\)"),
    ],
)
def test_bad_label_lines(yolo: Path, line: str, match: str) -> None:
    (yolo / "labels/a.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DataError, match=match):
        read_yolo(yolo / "images", classes=CLASSES)


def test_folder_and_classes_errors(tmp_path: Path, yolo: Path) -> None:
    with pytest.raises(DataError, match="cannot guess the label folder"):
        read_yolo(yolo / "labels", classes=CLASSES)  # no 'images' component
    with pytest.raises(DataError, match=r"YOLO label folder not found: .*nolabels"):
        read_yolo(yolo / "images", tmp_path / "nolabels", classes=CLASSES)
    with pytest.raises(DataError, match="YOLO image folder not found"):
        read_yolo(tmp_path / "images", classes=CLASSES)
    (tmp_path / "void/images").mkdir(parents=True)
    (tmp_path / "void/labels").mkdir()
    with pytest.raises(DataError, match="no images found"):
        read_yolo(tmp_path / "void/images", classes=CLASSES)
    with pytest.raises(ValueError, match="unique"):
        read_yolo(yolo / "images", classes=["a", "a", "b"])
    with pytest.raises(DataError, match="class names file not found"):
        read_yolo(yolo / "images", classes=str(tmp_path / "names.txt"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"n\.txt is empty"),
        ("a\n\nb\n", r"n\.txt:2: empty class name"),
        ("a\nb\na\n", r"n\.txt:3: class name 'a' repeats line 1"),
    ],
)
def test_bad_names_file(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "n.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_class_names(tmp_path / "n.txt")


def test_orphan_label_files_warn(yolo: Path) -> None:
    (yolo / "labels/zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (yolo / "labels/classes.txt").write_text("person\ncar\ndog\n")  # a names file is not an orphan
    with pytest.warns(UserWarning, match=r"1 label file\(s\) .* match no image .*zzz\.txt"):
        read_yolo(yolo / "images", classes=yolo / "labels/classes.txt")


def test_unreadable_image_with_boxes(yolo: Path) -> None:
    (yolo / "images/a.jpg").write_text("not a jpeg")
    with pytest.warns(UserWarning, match=r"1 image\(s\) with boxes .*unreadable headers.*a\.jpg"):
        ds = read_yolo(yolo / "images", classes=CLASSES)
    assert [p.name for p in ds.paths] == ["b.png", "c.jpg"]
    with pytest.raises(CorruptImageError, match=r"a\.jpg"):
        read_yolo(yolo / "images", classes=CLASSES, on_corrupt="fail")
