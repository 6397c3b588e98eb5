"""Detection samples: the letterbox and its inverse, mosaic / affine / flip moving boxes with their pixels (coloured
rectangles drawn at known places), negatives, degenerate boxes, corrupt images, epochs and class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frugalvision.data import ImageDataset, Sample, read_yolo
from frugalvision.data.detection import (
    PAD_VALUE,
    DetectionAugment,
    DetectionDataset,
    boxes_to_input,
    boxes_to_original,
    check_class_names,
    collate_detection,
    letterbox,
    resize_batch,
)
from frugalvision.errors import CorruptImageError, DataError

# One pure colour per class; the background is grey 200, the letterbox pad grey 114.
COLOURS = np.array(
    [
        [255, 0, 0],
        [0, 200, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [0, 0, 0],
        [255, 128, 0],
    ],
    dtype=np.int64,
)
RAW = {
    "mean": (0.0, 0.0, 0.0),
    "std": (1 / 255, 1 / 255, 1 / 255),
}  # the network input equals the pixel values

# (width, height) and two rectangles (x0, y0, x1, y1, class) per image.
LAYOUT = [
    ((400, 300), [(40, 30, 200, 150, 0), (250, 160, 380, 280, 1)]),
    ((320, 480), [(20, 40, 160, 200, 2), (120, 260, 300, 460, 3)]),
    ((256, 256), [(10, 10, 120, 90, 4), (140, 120, 250, 250, 5)]),
    ((500, 200), [(30, 20, 230, 180, 6), (300, 50, 480, 150, 7)]),
]


def _draw(root: Path) -> ImageDataset:
    samples = []
    for k, ((w, h), rects) in enumerate(LAYOUT):
        pixels = np.full((h, w, 3), 200, dtype=np.uint8)
        for x0, y0, x1, y1, c in rects:
            pixels[y0:y1, x0:x1] = COLOURS[c]
        path = root / f"img{k}.png"
        Image.fromarray(pixels).save(path)
        boxes = [r[:4] for r in rects]
        samples.append(Sample(path, labels=(rects[0][4],), boxes=boxes, box_labels=[r[4] for r in rects]))
    return ImageDataset(samples, [f"c{c}" for c in range(len(COLOURS))], on_corrupt="fail")


@pytest.fixture
def drawn(tmp_path: Path) -> ImageDataset:
    return _draw(tmp_path)


def _pixels(image: torch.Tensor) -> np.ndarray:
    """The network input back to ``(H, W, 3)`` pixel values (RAW normalisation)."""
    return image.permute(1, 2, 0).numpy().astype(np.float64)


def _near(pixels: np.ndarray, colour: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(pixels - colour).max(axis=-1) <= tol


def _check_boxes_cover_their_colour(
    image: torch.Tensor, target: dict[str, torch.Tensor], interior: bool
) -> int:
    """Every box's interior shows its class colour (``interior``), and every pixel of a class colour lies in a box of
    that class. Returns the number of boxes checked."""
    pixels = _pixels(image)
    boxes, labels = target["boxes"].numpy(), target["labels"].numpy()
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and boxes.shape == (len(labels), 4)
    side = image.shape[-1]
    assert (boxes >= 0).all() and (boxes <= side).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for (x0, y0, x1, y1), c in zip(boxes, labels, strict=True):
        if interior and x1 - x0 >= 6 and y1 - y0 >= 6:
            inner = pixels[int(np.ceil(y0)) + 2 : int(y1) - 2, int(np.ceil(x0)) + 2 : int(x1) - 2]
            share = _near(inner, COLOURS[c], 40).mean()
            assert share > 0.97, (
                f"box {(x0, y0, x1, y1)} of class {c}: only {share:.2%} of its pixels have its colour"
            )
    for c, colour in enumerate(COLOURS):
        mask = _near(pixels, colour, 8)
        ys, xs = np.nonzero(mask)
        inside = np.zeros(len(xs), dtype=bool)
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            if label == c:
                inside |= (xs >= x0 - 1.5) & (xs < x1 + 1.5) & (ys >= y0 - 1.5) & (ys < y1 + 1.5)
        assert inside.all(), f"{(~inside).sum()} pixels of class {c}'s colour lie outside its boxes"
    return len(boxes)


def test_letterbox_round_trip_of_boxes() -> None:
    rng = np.random.default_rng(0)
    for h, w in [(300, 400), (480, 320), (37, 1000), (416, 416), (1000, 999)]:
        image = torch.zeros((3, h, w), dtype=torch.uint8)
        canvas, scale, pad = letterbox(image, 416)
        assert canvas.shape == (3, 416, 416)
        assert scale == pytest.approx(416 / max(h, w))
        xy = rng.uniform(0, [w, h], size=(20, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, [w, h], size=(20, 2))], axis=1)
        boxes = np.minimum(boxes, [w, h, w, h]).astype(np.float32)
        back = boxes_to_original(boxes_to_input(boxes, scale, pad), scale, pad, (h, w))
        np.testing.assert_allclose(back, boxes, atol=1e-3)
        back_t = boxes_to_original(boxes_to_input(torch.from_numpy(boxes), scale, pad), scale, pad, (h, w))
        torch.testing.assert_close(back_t, torch.from_numpy(boxes), atol=1e-3, rtol=0)
    # Boxes beyond the image in input pixels (the padding) are clipped on the way back.
    clipped = boxes_to_original(np.array([[-50.0, -50.0, 500.0, 500.0]]), 1.04, (0, 52), (300, 400))
    np.testing.assert_allclose(clipped, [[0, 0, 400, 300]])


def test_letterbox_puts_each_box_on_its_pixels(drawn: ImageDataset) -> None:
    ds = DetectionDataset(drawn, 416, **RAW)
    for i in range(len(ds)):
        image, target, meta = ds[i]
        assert image is not None and target is not None
        assert image.shape == (3, 416, 416) and image.dtype == torch.float32
        (w, h), rects = LAYOUT[i]
        assert meta["orig_size"] == (h, w) and meta["mosaic"] is False
        assert _check_boxes_cover_their_colour(image, target, interior=True) == 2
        assert target["labels"].tolist() == [r[4] for r in rects]
        # The pad is grey 114 and the boxes map back to the drawn rectangles.
        pad_x, pad_y = meta["pad"]
        pixels = _pixels(image)
        if pad_y:
            assert np.all(pixels[: pad_y - 1] == PAD_VALUE)
        if pad_x:
            assert np.all(pixels[:, : pad_x - 1] == PAD_VALUE)
        back = boxes_to_original(target["boxes"], meta["scale"], meta["pad"], meta["orig_size"])
        torch.testing.assert_close(
            back, torch.tensor([r[:4] for r in rects], dtype=torch.float32), atol=1e-3, rtol=0
        )


@pytest.mark.parametrize(
    "augment",
    [
        pytest.param(
            DetectionAugment(mosaic=1.0, translate=0.0, scale=(1.0, 1.0), hsv=(0, 0, 0), flip=0.0),
            id="mosaic",
        ),
        pytest.param(
            DetectionAugment(mosaic=1.0, translate=0.25, scale=(0.4, 1.6), hsv=(0, 0, 0)), id="mosaic+affine"
        ),
        pytest.param(
            DetectionAugment(mosaic=0.0, translate=0.3, scale=(0.3, 1.8), hsv=(0, 0, 0)), id="affine+flip"
        ),
    ],
)
def test_mosaic_and_affine_move_boxes_with_their_pixels(
    drawn: ImageDataset, augment: DetectionAugment
) -> None:
    augment = DetectionAugment(**{**augment.__dict__, "min_area_ratio": 0.0, "min_box_size": 1.0})
    ds = DetectionDataset(drawn, 256, train=True, augment=augment, **RAW)
    checked = mosaics = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, target, meta = ds[i]
            assert image is not None and target is not None
            assert image.shape == (3, 256, 256)
            checked += _check_boxes_cover_their_colour(image, target, interior=True)
            mosaics += meta["mosaic"]
    assert checked >= 16
    assert mosaics == (16 if augment.mosaic else 0)


def test_rotation_and_shear_keep_every_pixel_of_an_object_inside_its_box(drawn: ImageDataset) -> None:
    augment = DetectionAugment(degrees=30, shear=10, hsv=(0, 0, 0), min_area_ratio=0.0, min_box_size=1.0)
    ds = DetectionDataset(drawn, 256, train=True, augment=augment, **RAW)
    for i in range(len(ds)):
        image, target, _ = ds[i]
        assert image is not None and target is not None
        _check_boxes_cover_their_colour(image, target, interior=False)


def test_boxes_mostly_cut_off_are_dropped(drawn: ImageDataset) -> None:
    """With the default ``min_area_ratio`` a box keeps at least 10 % of its scaled area, and at least 2 px a side."""
    ds = DetectionDataset(drawn, 256, train=True, augment=DetectionAugment(hsv=(0, 0, 0)), **RAW)
    loose = DetectionDataset(
        drawn,
        256,
        train=True,
        augment=DetectionAugment(hsv=(0, 0, 0), min_area_ratio=0.0, min_box_size=1.0),
        **RAW,
    )
    kept = total = 0
    for i in range(len(ds)):
        _, target, _ = ds[i]
        _, loose_target, _ = loose[i]
        assert target is not None and loose_target is not None
        sides = target["boxes"][:, 2:] - target["boxes"][:, :2]
        assert (sides >= 2).all()
        kept, total = kept + len(target["boxes"]), total + len(loose_target["boxes"])
    assert kept < total  # some slivers at the crop's edge went


def test_mixup_joins_the_boxes_of_two_images(drawn: ImageDataset) -> None:
    plain = DetectionDataset(
        drawn, 256, train=True, augment=DetectionAugment(mosaic=0.0, hsv=(0, 0, 0)), **RAW
    )
    mixed = DetectionDataset(
        drawn, 256, train=True, augment=DetectionAugment(mosaic=0.0, mixup=1.0, hsv=(0, 0, 0)), **RAW
    )
    more = 0
    for i in range(len(plain)):
        image, target, _ = mixed[i]
        _, plain_target, _ = plain[i]
        assert image is not None and target is not None and plain_target is not None
        more += len(target["boxes"]) > len(plain_target["boxes"])
        # Blended pixels: no pure class colour survives a 50/50 blend with another image except where both agree.
        assert image.min() >= 0 and image.max() <= 255
    assert more >= 3


def test_items_depend_only_on_seed_epoch_and_index(drawn: ImageDataset) -> None:
    ds = DetectionDataset(drawn, 256, train=True, augment=DetectionAugment(mixup=0.5), seed=3)
    first = ds[1]
    again = ds[1]
    assert first[0] is not None and again[0] is not None
    torch.testing.assert_close(first[0], again[0])
    torch.testing.assert_close(first[1], again[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first[0])  # type: ignore[arg-type]


def test_mosaic_switches_off_at_close_epoch(drawn: ImageDataset) -> None:
    ds = DetectionDataset(
        drawn, 256, train=True, augment=DetectionAugment(mosaic=1.0, mixup=1.0, close_mosaic_epoch=2)
    )
    ds.set_epoch(1)
    assert ds.mosaic_enabled and all(ds[i][2]["mosaic"] for i in range(len(ds)))
    ds.set_epoch(2)
    assert not ds.mosaic_enabled and not any(ds[i][2]["mosaic"] for i in range(len(ds)))
    assert not DetectionDataset(drawn, 256).mosaic_enabled  # evaluation never mosaics


def test_negatives_and_degenerate_boxes(tmp_path: Path, write_image) -> None:  # type: ignore[no-untyped-def]
    empty = write_image(tmp_path / "empty.png", size=(64, 48))
    bad = write_image(tmp_path / "bad.png", size=(64, 48))
    samples = [
        Sample(empty, boxes=np.zeros((0, 4)), box_labels=[]),
        # zero width, zero height, wholly outside the 64 x 48 image, and one good box
        Sample(
            bad,
            boxes=[[10, 10, 10, 30], [5, 20, 30, 20], [70, 50, 90, 60], [8, 8, 40, 40]],
            box_labels=[0, 0, 1, 1],
        ),
        Sample(empty),  # no annotation at all: a negative too
    ]
    data = ImageDataset(samples, ["a", "b"])
    for train in (False, True):
        augment = DetectionAugment(mosaic=0.0, translate=0.0, scale=(1.0, 1.0), flip=0.0) if train else None
        ds = DetectionDataset(data, 64, train=train, augment=augment)
        for i in (0, 2):
            _, target, _ = ds[i]
            assert target is not None
            assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        _, target, meta = ds[1]
        assert target is not None
        assert target["labels"].tolist() == [1]
        expected = boxes_to_input(np.array([[8.0, 8, 40, 40]]), meta["scale"], meta["pad"])
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-4)
    batch = collate_detection([DetectionDataset(data, 64)[i] for i in range(3)])
    assert batch.images is not None and batch.images.shape == (3, 3, 64, 64)
    assert [len(t["boxes"]) for t in batch.targets] == [0, 1, 0] and batch.skipped == []


def test_corrupt_and_oversized_images(tmp_path: Path, write_image) -> None:  # type: ignore[no-untyped-def]
    good = write_image(tmp_path / "good.png", size=(64, 48))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    thin = write_image(tmp_path / "thin.png", size=(1, 200))  # 200:1, over the 50:1 limit
    samples = [Sample(p, boxes=[[0, 0, 1, 10]], box_labels=[0]) for p in (good, broken, thin)]
    ds = DetectionDataset(ImageDataset(samples, ["a"], on_corrupt="skip"), 64)
    batch = collate_detection([ds[i] for i in range(3)])
    assert batch.images is not None and batch.images.shape[0] == 1
    assert [i for i, _ in batch.skipped] == [1, 2]
    assert "broken.png" in batch.skipped[0][1] and "aspect ratio" in batch.skipped[1][1]
    # A corrupt mosaic partner becomes an empty tile, named in the meta.
    train = DetectionDataset(ds.dataset, 64, train=True)
    partners = []
    for epoch in range(3):
        train.set_epoch(epoch)
        image, _, meta = train[0]
        assert image is not None and image.shape == (3, 64, 64)
        partners += meta.get("skipped_partners", [])
    assert partners and all("broken.png" in s or "thin.png" in s for s in partners)
    strict = DetectionDataset(ImageDataset(samples, ["a"], on_corrupt="fail"), 64)
    with pytest.raises(CorruptImageError, match=r"broken\.png"):
        strict[1]


def test_class_agnostic_and_bad_settings(drawn: ImageDataset) -> None:
    ds = DetectionDataset(drawn, 128, class_agnostic=True)
    assert ds.classes == ["object"] and ds.num_classes == 1
    _, target, _ = ds[0]
    assert target is not None and target["labels"].tolist() == [0, 0]
    with pytest.raises(DataError, match="multiple of 32"):
        DetectionDataset(drawn, 100)
    no_boxes = ImageDataset([Sample(s.path, labels=s.labels) for s in drawn.samples], drawn.classes)
    with pytest.raises(DataError, match="no sample carries boxes"):
        DetectionDataset(no_boxes)
    with pytest.raises(ValueError, match="mosaic"):
        DetectionAugment(mosaic=1.5)
    with pytest.raises(ValueError, match="scale"):
        DetectionAugment(scale=(2.0, 1.0))


def test_check_class_names() -> None:
    check_class_names(["a", "b"], ["a", "b"], "val.json")
    with pytest.raises(DataError, match=r"val.json: .*lacks b; adds c"):
        check_class_names(["a", "c"], ["a", "b"], "val.json")
    with pytest.raises(DataError, match=r"another order \(class 0 is 'b'"):
        check_class_names(["b", "a"], ["a", "b"], "val.json")


def test_data_loader_batches(drawn: ImageDataset) -> None:
    ds = DetectionDataset(drawn, 128, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    images, targets, metas, skipped = next(iter(loader))
    assert images.shape == (3, 3, 128, 128) and len(targets) == len(metas) == 3 and skipped == []


@pytest.mark.parametrize("side", [160, 224, 352, 384])
def test_resized_batch_keeps_boxes_on_their_pixels(drawn: ImageDataset, side: int) -> None:
    """Multi-scale training's batch resize: the letterboxed and the mosaic / affine batches at 256, resized to
    ``side``, still have every box on its coloured rectangle and every coloured pixel in a box of its class."""
    plain = DetectionDataset(drawn, 256, **RAW)
    augment = DetectionAugment(
        mosaic=1.0, translate=0.2, scale=(0.6, 1.4), hsv=(0, 0, 0), min_area_ratio=0.0, min_box_size=1.0
    )
    mosaic = DetectionDataset(drawn, 256, train=True, augment=augment, **RAW)
    checked = 0
    for ds in (plain, mosaic):
        batch = collate_detection([ds[i] for i in range(len(ds))])
        assert batch.images is not None
        images, targets = resize_batch(batch.images, batch.targets, side)
        assert images.shape == (len(ds), 3, side, side) and len(targets) == len(ds)
        for image, target, before in zip(images, targets, batch.targets, strict=True):
            assert torch.equal(target["labels"], before["labels"])
            checked += _check_boxes_cover_their_colour(image, target, interior=True)
    assert checked >= 12
    # the letterbox's own size is left as it is (the same tensors)
    batch = collate_detection([plain[i] for i in range(2)])
    assert batch.images is not None
    images, targets = resize_batch(batch.images, batch.targets, 256)
    assert images is batch.images and all(a is b for a, b in zip(targets, batch.targets, strict=True))


COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"


@pytest.mark.skipif(not COCO128.is_dir(), reason="real data ../shared/data/coco128 is absent")
def test_real_coco128_boxes_stay_valid() -> None:
    names = [f"class{k}" for k in range(80)]
    data = read_yolo(COCO128 / "images", COCO128 / "labels", classes=names).subset(range(8))
    for train in (False, True):
        ds = DetectionDataset(data, 320, train=train)
        for i in range(len(ds)):
            image, target, meta = ds[i]
            assert image is not None and target is not None and torch.isfinite(image).all()
            boxes = target["boxes"]
            assert (boxes >= 0).all() and (boxes <= 320).all() and (boxes[:, 2:] > boxes[:, :2]).all()
            if not train:
                n = len(data.samples[i].boxes)  # type: ignore[arg-type]
                assert len(boxes) == n
                back = boxes_to_original(boxes, meta["scale"], meta["pad"], meta["orig_size"])
                torch.testing.assert_close(
                    back, torch.from_numpy(np.array(data.samples[i].boxes)), atol=1e-2, rtol=0
                )


BCCD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "bccd"


@pytest.mark.skipif(not BCCD.is_dir(), reason="real data ../shared/data/bccd is absent")
def test_real_bccd_voc_through_the_dataset() -> None:
    from frugalvision.discover.voc import read_voc

    data = read_voc(BCCD, "val").subset(range(6))
    ds = DetectionDataset(data, 416, **RAW)
    train = DetectionDataset(data, 416, train=True, augment=DetectionAugment(mixup=0.5))
    for i in range(len(ds)):
        image, target, meta = ds[i]
        assert image is not None and target is not None
        assert meta["orig_size"] == (480, 640) and meta["pad"] == (0, 52)
        back = boxes_to_original(target["boxes"], meta["scale"], meta["pad"], meta["orig_size"])
        torch.testing.assert_close(back, torch.from_numpy(np.array(data.samples[i].boxes)), atol=1e-3, rtol=0)
        image, target, _ = train[i]
        assert image is not None and target is not None and image.shape == (3, 416, 416)
        assert len(target["boxes"]) > 0 and (target["boxes"][:, 2:] - target["boxes"][:, :2] >= 2).all()
