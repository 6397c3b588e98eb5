"""CorLoc and class-agnostic AP on cases with known answers, and against pycocotools and torchmetrics."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.discover import (
    average_precision,
    box_iou,
    centre_box,
    centre_box_baseline,
    corloc,
    evaluate_boxes,
)


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 5, 5]])
    expected = np.array([[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    with pytest.raises(ValueError, match="x1 < x0"):
        box_iou(np.array([[2, 0, 1, 1]]), b)


def test_corloc_known_answer() -> None:
    gt = [
        np.array([[0, 0, 10, 10]]),
        np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
        np.zeros((0, 4)),
        np.array([[0, 0, 4, 4]]),
    ]
    pred = [
        np.array([[0, 0, 10, 9]]),  # IoU 0.9: hit
        np.array([[50, 50, 60, 60], [21, 21, 30, 30]]),  # second box hits the second object
        np.array([[0, 0, 5, 5]]),  # no ground truth: not counted
        np.zeros((0, 4)),  # nothing predicted: a miss
    ]
    assert corloc(pred, gt) == pytest.approx(2 / 3)
    assert corloc(pred, gt, top_k=1) == pytest.approx(1 / 3)
    assert corloc(pred, gt, iou_threshold=0.95) == 0.0
    assert np.isnan(corloc([np.zeros((0, 4))], [np.zeros((0, 4))]))
    with pytest.raises(ValueError, match="same images"):
        corloc(pred, gt[:2])


def test_ap_known_answer() -> None:
    # ranked: 0.9 TP (image 0), 0.8 FP (image 1), 0.7 TP (image 1); 2 objects in all.
    # precision after monotone smoothing: 1 up to recall 0.5, then 2/3 up to recall 1, read at 101 points.
    gt = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])]
    pred = [np.array([[0, 0, 10, 10]]), np.array([[40, 40, 50, 50], [0, 0, 10, 10]])]
    scores = [np.array([0.9]), np.array([0.8, 0.7])]
    ap = average_precision(pred, scores, gt)
    np.testing.assert_allclose(ap, (51 * 1.0 + 50 * (2 / 3)) / 101)
    perfect = average_precision(gt, [np.ones(1), np.ones(1)], gt)
    np.testing.assert_allclose(perfect, 1.0)
    assert np.isnan(average_precision([np.zeros((0, 4))], [np.zeros(0)], [np.zeros((0, 4))])).all()
    assert (average_precision([np.zeros((0, 4))], [np.zeros(0)], [gt[0]]) == 0).all()


def _random_case(
    seed: int, n_images: int = 12
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    preds, scores, gts = [], [], []
    for _ in range(n_images):
        g = rng.integers(0, 4)
        xy = rng.uniform(0, 80, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 40, (g, 2))], axis=1)
        # predictions: jittered copies of some objects plus random boxes
        keep = rng.random(g) < 0.7
        jitter = gt[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        n_rand = rng.integers(0, 3)
        rxy = rng.uniform(0, 80, (n_rand, 2))
        rand = np.concatenate([rxy, rxy + rng.uniform(5, 40, (n_rand, 2))], axis=1)
        p = np.concatenate([jitter.reshape(-1, 4), rand], axis=0)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        preds.append(p)
        scores.append(rng.random(len(p)))
        gts.append(gt)
    return preds, scores, gts


def _pycocotools_ap(preds, scores, gts) -> np.ndarray:
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    images = [{"id": i + 1, "width": 200, "height": 200} for i in range(len(gts))]
    anns, dets = [], []
    for i, (g, p, s) in enumerate(zip(gts, preds, scores, strict=True)):
        for b in g:
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, sc in zip(p, s, strict=True):
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": float(sc),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = coco_mod.COCO()
        gt_api.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        gt_api.createIndex()
        dt_api = gt_api.loadRes(dets) if dets else coco_mod.COCO()
        ev = cocoeval.COCOeval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: (T, R, K, A, M); category 0, area "all", maxDets 100
    return ev.eval["precision"][:, :, 0, 0, 2].mean(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_equals_pycocotools_cocoeval(seed: int) -> None:
    preds, scores, gts = _random_case(seed)
    np.testing.assert_allclose(
        average_precision(preds, scores, gts), _pycocotools_ap(preds, scores, gts), atol=1e-12
    )


@pytest.mark.slow  # importing torchmetrics alone takes ~4 s of CPU; pycocotools is checked in the default run
def test_ap_equals_torchmetrics_class_agnostic_map() -> None:
    detection = pytest.importorskip("torchmetrics.detection")
    preds, scores, gts = _random_case(7, n_images=10)
    metric = detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update(
        [
            {
                "boxes": torch.tensor(p, dtype=torch.float64),
                "scores": torch.tensor(s),
                "labels": torch.zeros(len(p), dtype=torch.long),
            }
            for p, s in zip(preds, scores, strict=True)
        ],
        [
            {"boxes": torch.tensor(g, dtype=torch.float64), "labels": torch.zeros(len(g), dtype=torch.long)}
            for g in gts
        ],
    )
    ref = metric.compute()
    ours = evaluate_boxes(preds, scores, gts)
    assert ours["ap"] == pytest.approx(float(ref["map"]), abs=1e-6)
    assert ours["ap50"] == pytest.approx(float(ref["map_50"]), abs=1e-6)
    assert ours["ap75"] == pytest.approx(float(ref["map_75"]), abs=1e-6)


def test_evaluate_boxes_counts() -> None:
    preds, scores, gts = _random_case(3)
    out = evaluate_boxes(preds, scores, gts)
    assert out["images"] == sum(len(g) > 0 for g in gts)
    assert out["gt_boxes"] == sum(len(g) for g in gts) and out["pred_boxes"] == sum(len(p) for p in preds)
    assert out["corloc_any"] >= out["corloc"]


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _hand_centre_corloc(sizes: list[tuple[int, int]], gts: list[np.ndarray]) -> tuple[float, int]:
    """CorLoc of the centred half-area box from the definition, IoU by torchvision.ops.box_iou."""
    from torchvision.ops import box_iou as tv_box_iou

    hits = counted = 0
    for (w, h), gt in zip(sizes, gts, strict=True):
        if not len(gt):
            continue
        s = math.sqrt(0.5)  # sides W/√2 x H/√2: half the area
        box = torch.tensor([[w / 2 - w * s / 2, h / 2 - h * s / 2, w / 2 + w * s / 2, h / 2 + h * s / 2]])
        counted += 1
        hits += bool((tv_box_iou(box.double(), torch.as_tensor(gt).double()) >= 0.5).any())
    return hits / counted, counted


def test_centre_box_is_centred_and_covers_half_the_area() -> None:
    box = centre_box(300, 200)[0]
    assert box.shape == (4,)
    assert (box[2] - box[0]) * (box[3] - box[1]) == pytest.approx(0.5 * 300 * 200)
    assert ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) == pytest.approx((150, 100))
    assert (box[2] - box[0]) / (box[3] - box[1]) == pytest.approx(1.5)  # the image's aspect ratio
    with pytest.raises(ValueError, match="area_fraction"):
        centre_box(10, 10, 0.0)
    with pytest.raises(ValueError, match="width and height"):
        centre_box(0, 10)


def test_centre_box_baseline_known_answer() -> None:
    sizes = [(100, 100), (100, 100), (200, 100), (50, 80)]
    gts = [
        np.array([[20, 20, 80, 80]]),  # IoU with (14.6, 14.6, 85.4, 85.4) = 3600 / 5000 = 0.72: hit
        np.array([[0, 0, 30, 30]]),  # a corner object: miss
        np.zeros((0, 4)),  # no ground truth: not counted
        np.array([[0, 0, 5, 5], [5, 5, 45, 75]]),  # the second holds the box: IoU 2000 / 2800, a hit
    ]
    got = centre_box_baseline(sizes, gts)
    assert got["corloc"] == pytest.approx(2 / 3) == _hand_centre_corloc(sizes, gts)[0]
    assert got["images"] == 3 and got["pred_boxes"] == 4
    with pytest.raises(ValueError, match="same images"):
        centre_box_baseline(sizes[:2], gts)


def test_centre_box_baseline_on_coco128_equals_a_hand_computation() -> None:
    root = SHARED / "coco128"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (../shared/data, see its README)")
    from frugalvision.data import image_size, read_yolo

    ds = read_yolo(root / "images", root / "labels", classes=[str(i) for i in range(80)])
    sizes = [image_size(p) for p in ds.paths]
    gts = [np.zeros((0, 4)) if s.boxes is None else np.asarray(s.boxes, np.float64) for s in ds.samples]
    expected, counted = _hand_centre_corloc(sizes, gts)
    got = centre_box_baseline(sizes, gts)
    assert got["images"] == counted == 94
    assert got["corloc"] == pytest.approx(expected, abs=1e-12)
    assert 0.1 < got["corloc"] < 0.9
