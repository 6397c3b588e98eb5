"""Torch-free detection at run time: the letterbox equals a torchvision letterbox pixel for pixel, boxes map back
to the original image by the contract's formula, and ``Predictor.detect`` equals PyTorch + ``batched_nms``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms, box_iou
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from det_standin import IMAGENET_MEAN, IMAGENET_STD, export_tiny
from frugalvision.errors import FrugalVisionError, StoreError
from frugalvision.runtime import LetterboxPreprocessor, Predictor, letterbox_geometry, read_deploy_config

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _torchvision_letterbox(image: Image.Image, size: int, fill: int = 114):
    """Reference from the contract, with torchvision: scale = min(S/h, S/w), resize to round(side * scale),
    pad (S - new) // 2 on the left/top and the rest on the right/bottom with ``fill``."""
    w, h = image.size
    scale = min(size / h, size / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    padded = TF.pad(resized, [left, top, size - new_w - left, size - new_h - top], fill=fill)
    x = TF.to_dtype(TF.pil_to_tensor(padded), torch.float32, scale=True)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)), scale, (left, top)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in
           ((480, 640), (640, 480), (37, 415), (416, 416), (20, 30), (1000, 999))]  # fmt: skip
    if (DATA / "bccd" / "JPEGImages").is_dir():  # real photos when the shared data are there
        out += [
            Image.open(p).convert("RGB") for p in sorted((DATA / "bccd" / "JPEGImages").glob("*.jpg"))[:2]
        ]
    return out


def test_letterbox_equals_torchvision_reference() -> None:
    pre = LetterboxPreprocessor(416, IMAGENET_MEAN, IMAGENET_STD)
    for image in _images():
        got, metas = pre.batch_with_meta([image])
        expected, scale, pad = _torchvision_letterbox(image, 416)
        np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-6, rtol=0)
        assert metas[0].scale == pytest.approx(scale, rel=1e-12) and metas[0].pad == pad
        assert metas[0].size == (image.height, image.width)


def test_letterbox_call_batch_and_batch_with_meta_give_the_reference_pixels() -> None:
    """The three ways in (one image, a batch, a batch with metas) and the input size all follow the contract."""
    pre = LetterboxPreprocessor(320, IMAGENET_MEAN, IMAGENET_STD, fill=0)
    images = _images()[:3]
    expected = np.stack([_torchvision_letterbox(image, 320, fill=0)[0].numpy() for image in images])
    batch, metas = pre.batch_with_meta(images)
    assert batch.shape == (3, *pre.input_size) == (3, 3, 320, 320) and (pre.height, pre.width) == (320, 320)
    np.testing.assert_allclose(batch, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(pre.batch(images), batch)
    np.testing.assert_array_equal(pre(images[1]), batch[1])
    assert [m.size for m in metas] == [(im.height, im.width) for im in images]
    assert pre.batch([]).shape == (0, 3, 320, 320)
    with pytest.raises(TypeError, match="sequence of images"):
        pre.batch("cat.jpg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpolation must be one of"):
        LetterboxPreprocessor(320, IMAGENET_MEAN, IMAGENET_STD, interpolation="cubic")


def test_letterbox_matches_a_tensor_letterbox_within_one_grey_level() -> None:
    """Training letterboxes uint8 tensors (torchvision's antialiased tensor resize, not Pillow's): the runtime's
    Pillow resize differs from it by at most one grey level, on a tiny share of the pixels."""
    pre = LetterboxPreprocessor(416, (0.0,) * 3, (1.0,) * 3)
    differing, total = 0, 0
    for image in _images():
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        meta = letterbox_geometry(image.height, image.width, 416)
        (new_h, new_w), (left, top) = meta.resized, meta.pad
        resized = TF.resize(tensor, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        ref = (
            TF.pad(resized, [left, top, 416 - new_w - left, 416 - new_h - top], fill=114)
            .permute(1, 2, 0)
            .numpy()
        )
        mine, _ = pre.letterbox(image)
        diff = np.abs(mine.astype(np.int16) - ref.astype(np.int16))
        assert diff.max() <= 1
        differing, total = differing + int((diff > 0).sum()), total + diff.size
    assert differing / total < 0.01


def test_box_mapping_is_the_contract_formula() -> None:
    # float64 from the contract: box_orig = (box_input - [px, py, px, py]) / scale, clipped to the image
    meta = letterbox_geometry(480, 640, 416)
    assert meta.scale == pytest.approx(0.65) and meta.pad == (0, 52) and meta.resized == (312, 416)
    boxes_orig = np.array([[10.0, 20.0, 300.5, 400.25], [0.0, 0.0, 640.0, 480.0]])
    boxes_input = boxes_orig * meta.scale + np.array([0, 52, 0, 52])
    np.testing.assert_allclose(meta.to_original(boxes_input), boxes_orig, atol=1e-4)
    outside = np.array([[-30.0, 10.0, 500.0, 470.0]])  # beyond the letterbox: clipped to the image
    np.testing.assert_allclose(meta.to_original(outside), [[0.0, 0.0, 640.0, 480.0]], atol=1e-4)
    tall = letterbox_geometry(1000, 10, 416)  # an extreme aspect still gets >= 1 pixel
    assert tall.resized == (416, 4) and tall.pad == (206, 0)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("rt") / "det-onnx"
    model, _ = export_tiny(folder, score_threshold=0.3, iou_threshold=0.6, max_detections=40)
    return model, folder


def test_detect_equals_torch_pipeline_in_original_pixels(detector) -> None:
    model, folder = detector
    predictor = Predictor(folder, threads=1)
    images = _images()[:4]
    found = predictor.detect(images)
    assert len(found) == len(images)
    total = 0
    for image, det in zip(images, found, strict=True):
        x, scale, (left, top) = _torchvision_letterbox(image, 64)
        with torch.inference_mode():
            boxes, scores = model(x[None])
        box_i, cls = torch.nonzero(scores[0] > 0.3, as_tuple=True)
        val = scores[0][box_i, cls]
        keep = batched_nms(boxes[0][box_i], val, cls, 0.6)[:40]
        ref = (boxes[0][box_i][keep].double() - torch.tensor([left, top, left, top])) / scale
        ref[:, 0::2] = ref[:, 0::2].clamp(0, image.width)
        ref[:, 1::2] = ref[:, 1::2].clamp(0, image.height)
        inside = (ref[:, 2] > ref[:, 0]) & (ref[:, 3] > ref[:, 1])  # boxes wholly in the border are dropped
        ref, ref_scores, ref_labels = ref[inside], val[keep][inside], cls[keep][inside]
        assert len(det) == len(ref)
        total += len(det)
        if len(det):
            assert float(box_iou(torch.from_numpy(det.boxes).double(), ref).diagonal().min()) >= 0.99
            np.testing.assert_allclose(det.boxes, ref.numpy(), atol=1e-3 / scale, rtol=0)
            np.testing.assert_allclose(det.scores, ref_scores.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_array_equal(det.labels, ref_labels.numpy())
            assert det.names == tuple("abc"[i] for i in det.labels)
            assert (np.diff(det.scores) <= 0).all()
    assert total > 0
    # a higher score threshold at run time keeps a subset
    strict = predictor.detect(images, score_threshold=0.6)
    assert all((d.scores >= 0.6).all() and len(d) <= len(f) for d, f in zip(strict, found, strict=True))
    assert predictor.run(predictor.preprocess(images)).shape == (4, 40, 6)
    assert predictor.detect([]) == []


def test_detection_model_refuses_embed_and_predict_and_others_refuse_detect(detector, tiny_bundle) -> None:
    predictor = Predictor(detector[1])
    with pytest.raises(FrugalVisionError, match="use detect"):
        predictor.predict(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(FrugalVisionError, match="use detect"):
        predictor.embed(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(FrugalVisionError, match="needs a detection model"):
        Predictor(tiny_bundle[0]).detect(np.zeros((40, 40, 3), np.uint8))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["detection"]["nms"].update(iou_threshold=1.5), "detection.nms.iou_threshold"),
        (lambda d: d["detection"]["nms"].pop("max_detections"), "detection.nms.max_detections"),
        (lambda d: d["detection"]["letterbox"].update(fill=300), "detection.letterbox.fill"),
        (lambda d: d.pop("detection"), "field 'detection' is required"),
        (lambda d: d["data_config"].update(input_size=[3, 64, 48]), "data_config.input_size"),
    ],
)
def test_bad_detection_record_names_the_field(detector, tmp_path: Path, edit, message: str) -> None:
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(detector[1], folder)
    record = json.loads((folder / "deploy.json").read_text())
    edit(record)
    (folder / "deploy.json").write_text(json.dumps(record))
    with pytest.raises(StoreError, match=message):
        read_deploy_config(folder)
