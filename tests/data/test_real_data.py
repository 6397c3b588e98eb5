"""Readers on the real data sets in ``../shared/data`` (skipped where that folder is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from frugalvision.data import load_image, open_dataset, read_folder, read_yolo

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# The 80 COCO class names in the order of the YOLO class ids (coco128 ships no names file).
COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()


def need(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available (only in the development checkout)")
    return path


def test_caltech101_dev_folder() -> None:
    ds = read_folder(need("caltech101-dev"))
    assert len(ds) == 5614 and len(ds.classes) == 51
    assert ds.classes[:3] == ["Faces", "Faces_easy", "Leopards"]  # byte order: capitals first
    counts = ds.class_counts()
    assert counts == {c: len(os.listdir(DATA / "caltech101-dev" / c)) for c in ds.classes}  # flat folders
    assert (min(counts.values()), max(counts.values())) == (33, 800)  # (the data README says 31-800)
    assert open_dataset(DATA / "caltech101-dev").samples == ds.samples

    # a few grayscale JPEGs load as RGB
    checked = 0
    for path in ds.paths:
        with open(path, "rb") as f:
            head = f.read(4096)
        if b"\xff\xc0\x00\x0b\x08" not in head and b"\xff\xc2\x00\x0b\x08" not in head:
            continue  # SOF with 1 component (length 11) marks a grayscale JPEG
        img = load_image(path)
        arr = np.asarray(img)
        assert img.mode == "RGB" and arr.shape[2] == 3
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
        checked += 1
        if checked == 3:
            break
    assert checked == 3, "expected grayscale JPEGs in caltech101-dev"


def test_coco128_yolo() -> None:
    root = need("coco128")
    ds = read_yolo(root / "images", classes=COCO80)
    assert len(ds) == 96 and len(ds.classes) == 80
    n_boxes = np.array([0 if s.boxes is None else len(s.boxes) for s in ds.samples])
    assert (n_boxes == 0).sum() == 2  # the two images without a label file
    label_files = list((root / "labels").glob("*.txt"))
    n_lines = sum(1 for p in label_files for line in p.read_text().splitlines() if line.strip())
    assert n_boxes.sum() == n_lines > 0  # every label line became a box
    # boxes lie inside their images (checked against the real decoded size for one image)
    i = int(np.argmax(n_boxes))
    width, height = load_image(ds.paths[i]).size
    boxes = ds.samples[i].boxes
    assert boxes is not None
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert ds.label_matrix().sum(axis=1).max() > 1  # genuinely multi-label
