"""Which images and ground truth a path holds (folder, YOLO, VOC), the loop over them, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from frugalvision.discover import (
    Discovery,
    discover_images,
    evaluate_discoveries,
    open_discovery_set,
    read_voc,
)
from frugalvision.errors import CorruptImageError, DataError, ImageTooLargeError

_VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
{objects}</annotation>"""
_VOC_OBJECT = "<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def _voc(root: Path, boxes: dict[str, list[tuple[str, tuple[int, int, int, int]]]]) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, objects in boxes.items():
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{name}.jpg")
        body = "".join(_VOC_OBJECT.format(cls=c, b=b) for c, b in objects)
        (root / "Annotations" / f"{name}.xml").write_text(_VOC_XML.format(name=name, objects=body))
    return root


def test_voc_reader_converts_boxes_and_reads_splits(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", {"a": [("RBC", (1, 1, 10, 20)), ("WBC", (30, 5, 41, 30))], "b": []})
    (root / "ImageSets" / "Main" / "test.txt").write_text("b\n")
    ds = read_voc(root)
    assert ds.classes == ["RBC", "WBC"] and len(ds) == 2
    # 1-based inclusive -> continuous (xmin - 1, ymin - 1, xmax, ymax), clipped to the 40x30 image
    np.testing.assert_array_equal(ds.samples[0].boxes, [[0, 0, 10, 20], [29, 4, 40, 30]])
    np.testing.assert_array_equal(ds.samples[0].box_labels, [0, 1])
    assert [p.name for p in read_voc(root, split="test").paths] == ["b.jpg"]
    with pytest.raises(DataError, match=r"val\.txt"):
        read_voc(root, split="val")


def test_voc_reader_names_malformed_files(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", {"a": [("RBC", (1, 1, 10, 20))]})
    (root / "Annotations" / "a.xml").write_text("<annotation><object><name>RBC</name></object></annotation>")
    with pytest.raises(DataError, match=r"a\.xml <object> #1: missing <bndbox>"):
        read_voc(root)
    (root / "Annotations" / "a.xml").write_text("<annotation>")
    with pytest.raises(DataError, match=r"a\.xml: malformed XML"):
        read_voc(root)


def test_open_discovery_set_recognises_layouts(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(plain / "sub" / "x.png")
    (plain / "readme.txt").write_text("not an image, ignored")
    found = open_discovery_set(plain)
    assert (
        found.format == "folder"
        and found.boxes is None
        and [found.file_name(p) for p in found.paths] == ["sub/x.png"]
    )

    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    Image.new("RGB", (100, 50)).save(yolo / "images" / "y.jpg")
    (yolo / "labels" / "y.txt").write_text("7 0.5 0.5 0.2 0.4\n")  # no names file: classes are numbered
    ds = open_discovery_set(yolo)
    assert ds.format == "yolo"
    np.testing.assert_allclose(ds.boxes[0], [[40, 15, 60, 35]])

    voc = _voc(tmp_path / "voc", {"a": [("RBC", (1, 1, 10, 20))]})
    assert open_discovery_set(voc).format == "voc"

    coco_dir = tmp_path / "coco"
    (coco_dir / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(coco_dir / "images" / "c.jpg")
    ann = {
        "images": [{"id": 3, "file_name": "c.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [4, 6, 20, 10], "iscrowd": 0}],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (coco_dir / "ann.json").write_text(json.dumps(ann))
    coco = open_discovery_set(coco_dir / "ann.json").head(1)
    assert coco.format == "coco" and coco.file_name(coco.paths[0]) == "c.jpg"
    np.testing.assert_allclose(coco.boxes[0], [[4, 6, 24, 16]])


def test_open_discovery_set_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image folder not found: .*missing"):
        open_discovery_set(tmp_path / "missing")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no images found in .*texts"):
        open_discovery_set(tmp_path / "texts")
    with pytest.raises(DataError, match="PASCAL-VOC"):
        open_discovery_set(tmp_path / "texts", split="test")


def test_discover_images_skips_or_fails_on_bad_files(effnet, tmp_path: Path) -> None:
    good, broken, tiny = tmp_path / "good.png", tmp_path / "broken.jpg", tmp_path / "tiny.png"
    Image.new("RGB", (64, 48), (120, 40, 40)).save(good)
    broken.write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (8, 8)).save(tiny)
    results, skipped = discover_images([good, broken, tiny], effnet, progress=False, image_size=64)
    assert [p for p, _ in results] == [good]
    assert [p for p, _ in skipped] == [broken, tiny]
    assert "broken.jpg" in skipped[0][1] and "tiny.png" in skipped[1][1]
    with pytest.raises(CorruptImageError, match=r"broken\.jpg"):
        discover_images([broken], effnet, progress=False, on_corrupt="fail")


def test_discover_images_skips_or_fails_on_long_images(effnet, tmp_path: Path) -> None:
    """An image over the 50:1 aspect-ratio limit is refused by the shared decoder check (issue 12, item 1)."""
    good, long = tmp_path / "good.png", tmp_path / "long.png"
    Image.new("RGB", (64, 48), (120, 40, 40)).save(good)
    Image.new("RGB", (32, 2000), (40, 40, 120)).save(long)  # 62.5:1
    results, skipped = discover_images([long, good], effnet, progress=False, image_size=64)
    assert [p for p, _ in results] == [good]
    assert skipped == [(long, f"{long}: 32x2000 pixels has an aspect ratio of 62.5:1, over the limit of 50:1 "
                              "(preprocessing would scale its shorter side up to the model's input size)")]  # fmt: skip
    with pytest.raises(ImageTooLargeError, match=r"long\.png: 32x2000 pixels"):
        discover_images([long], effnet, progress=False, on_corrupt="fail", image_size=64)


def _cli():
    from frugalvision.cli import discover  # noqa: F401  (registers the command)
    from frugalvision.cli.main import cli

    return cli


def test_every_cli_option_has_help() -> None:
    command = _cli().commands["discover"]
    options = [p for p in command.params if p.param_type_name == "option"]
    assert len(options) >= 10
    assert all(getattr(p, "help", None) for p in options), [p.name for p in options if not p.help]


def test_cli_writes_coco_overlays_and_metrics(photo, tmp_path: Path) -> None:
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    image = photo("coffee").resize((300, 200))
    image.save(data / "images" / "coffee.jpg")
    # the cup on its saucer, hand-set (75, 15, 480, 390) on the 600x400 original, in YOLO's normalised form
    (data / "labels" / "coffee.txt").write_text("0 0.4625 0.50625 0.675 0.9375\n")
    Image.new("RGB", (8, 8)).save(data / "images" / "speck.png")
    out, overlays = tmp_path / "r.json", tmp_path / "ov"
    args = ["discover", str(data), "--out", str(out), "--overlay-dir", str(overlays), "--objects", "2",
            "--image-size", "256", "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "speck.png" in result.output
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["coffee.jpg"]
    assert 1 <= len(coco["annotations"]) <= 2 and coco["info"]["settings"]["objects"] == 2
    metrics = json.loads(result.output[result.output.index("{") :])
    assert metrics["images"] == 1 and metrics["corloc"] == 1.0  # the cup is found
    # ... and so is it by the centred half-area box (43.9, 29.3, 256.1, 170.7) on the 300x200 image
    assert metrics["centre_box"]["images"] == 1 and metrics["centre_box"]["corloc"] == 1.0
    assert (overlays / "coffee.png").is_file()
    table = CliRunner().invoke(
        _cli(), [a for a in args if a not in ("--json", "--overlay-dir", str(overlays))]
    )
    assert table.exit_code == 0, table.output
    assert "centre box (half the area)" in table.output
    assert "CorLoc (first box)     1.0000" in table.output
    assert "does no better than a fixed centred box" in table.output  # 1.0 is not above the baseline's 1.0


def test_evaluate_discoveries_puts_the_centre_box_beside_the_result() -> None:
    def found(boxes: list[list[float]], size: tuple[int, int]) -> Discovery:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        empty = np.zeros((len(b), 1, 1), bool)
        return Discovery(empty, b, np.linspace(1, 0.5, len(b)).astype(np.float32), empty, size)

    # image 0: the object in a corner, found; image 1: a centred object, missed by the first box
    gts = [np.array([[0, 0, 30, 30]]), np.array([[20, 20, 80, 80]])]
    discoveries = [found([[0, 0, 30, 29]], (100, 100)), found([[0, 0, 10, 10], [20, 20, 80, 80]], (100, 100))]
    got = evaluate_discoveries(discoveries, gts)
    assert got["corloc"] == 0.5 and got["corloc_any"] == 1.0
    assert got["centre_box"]["corloc"] == 0.5  # misses the corner object, hits the centred one (IoU 0.72)
    assert got["centre_box"]["pred_boxes"] == 2 and got["centre_box"]["images"] == 2
    with pytest.raises(ValueError, match="same images"):
        evaluate_discoveries(discoveries[:1], gts)


def test_cli_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    from frugalvision.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["discover", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")])
    assert info.value.code == 1
