"""benchmarks/detection_sets.py: the digits-on-CIFAR confirmation set for detection.

The box test uses a hand-made glyph and background (no data needed); the round trip through ``read_voc`` reads
``../shared/data`` and skips when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frugalvision.discover import read_voc
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


sets = load_benchmark("detection_sets.py")


def test_solid_glyphs_change_exactly_their_boxes():
    """A solid glyph resizes to alpha 1 everywhere, so the pixels that changed are exactly the union of the boxes
    (colours differ by >= 200 summed over RGB from what lies under them); placed boxes overlap by IoU <= 0.1."""
    background = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    plain = np.asarray(background.resize((128, 128), Image.Resampling.BICUBIC), np.float32)
    solid = np.full((28, 28), 255, np.uint8)
    for seed in range(5):
        image, placed = sets.compose(background, [solid] * 4, np.random.default_rng(seed), 128, 16, 48)
        assert placed and placed[0][0] == 0
        inside = np.zeros((128, 128), bool)
        for _, box in placed:
            x0, y0, x1, y1 = box.astype(int)
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            inside[y0:y1, x0:x1] = True
        change = np.abs(image.astype(np.float32) - plain).sum(-1)
        np.testing.assert_array_equal(change > 50, inside)
        for i, (_, a) in enumerate(placed):
            for _, b in placed[:i]:
                assert sets._iou(a, b) <= 0.1


def test_boxes_are_tight_around_the_ink():
    """Each box edge touches clearly painted pixels (alpha >= 0.5 changes a pixel by >= 100 summed over RGB)."""
    background = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    plain = np.asarray(background.resize((128, 128), Image.Resampling.BICUBIC), np.float32)
    glyph = np.zeros((28, 28), np.uint8)
    glyph[6:22, 9:17] = 255
    for seed in range(5):
        image, placed = sets.compose(background, [glyph] * 3, np.random.default_rng(seed), 128, 24, 60)
        change = np.abs(image.astype(np.float32) - plain).sum(-1)
        for _, box in placed:
            x0, y0, x1, y1 = box.astype(int)
            region = change[y0:y1, x0:x1] >= 100
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def test_voc_annotation_round_trip(tmp_path):
    """A box written by ``_voc_xml`` (1-based inclusive VOC) reads back through ``read_voc`` unchanged."""
    box = np.array([3.0, 5.0, 40.0, 22.0])
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations" / "a.xml").write_text(sets._voc_xml("a.jpg", 64, [("digit7", box)]))
    ds = read_voc(tmp_path)
    assert list(ds.classes) == ["digit7"]
    assert np.array_equal(np.asarray(ds.samples[0].boxes), box[None])


@pytest.mark.skipif(not (DATA / "mnist-test").is_dir(), reason="../shared/data (MNIST, CIFAR-10) not found")
def test_written_set_reads_back_with_the_same_boxes(tmp_path):
    out = sets.digit_scenes(tmp_path / "scenes", counts=(3, 2, 2), size=96, seed=1)
    train, test = read_voc(out, "train"), read_voc(out, "test")
    assert len(train) == 3 and len(test) == 2
    assert set(train.classes) <= set(sets.CLASSES)
    sample = train.samples[0]
    assert sample.boxes is not None and len(sample.boxes) >= 1
    assert Image.open(sample.path).size == (96, 96)
    boxes = np.asarray(sample.boxes)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
    assert np.array_equal(boxes, np.round(boxes))  # integer pixel edges survive the VOC round trip
    # cached: a second call with the same parameters writes nothing
    stamp = (out / "JPEGImages" / "train_0000.jpg").stat().st_mtime_ns
    sets.digit_scenes(tmp_path / "scenes", counts=(3, 2, 2), size=96, seed=1)
    assert (out / "JPEGImages" / "train_0000.jpg").stat().st_mtime_ns == stamp
