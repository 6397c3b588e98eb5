"""Detection metrics: COCO mAP against pycocotools run directly (its own COCO objects, ``loadRes``, ``summarize``),
faster-coco-eval against pycocotools, the confusion matrix on a hand-made case, the plots."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from frugalvision import plots
from frugalvision.errors import DataError
from frugalvision.metrics.detection import box_iou, coco_evaluate, detection_confusion_matrix

CLASSES = ["rbc", "wbc", "platelet", "never-seen"]  # class 3 has no ground truth and a few false positives


def _fixed_case(seed: int = 0, images: int = 30) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Random but fixed ground truth (with crowd boxes, explicit areas and negatives) and noisy detections."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(images):
        n = 0 if i % 7 == 0 else int(rng.integers(1, 8))
        xy = rng.uniform(0, 500, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 200, (n, 2))], axis=1)
        labels = rng.integers(0, 3, n)
        target: dict[str, Any] = {"boxes": boxes, "labels": labels}
        if i % 5 == 1:
            target["iscrowd"] = (rng.random(n) < 0.3).astype(np.int64)
        if i % 4 == 2:
            target["area"] = (
                (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * rng.uniform(0.3, 1.0, n)
            )
        gts.append(target)
        m = int(rng.integers(0, 12))
        src = rng.integers(0, max(n, 1), m)
        base = boxes[src] if n else np.tile([100.0, 100.0, 160.0, 150.0], (m, 1))
        noisy = base + rng.normal(0, 6, (m, 4))
        noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        wrong = rng.random(m) < 0.2
        plabels = np.where(wrong, rng.integers(0, 4, m), labels[src] if n else 0)
        preds.append({"boxes": noisy, "scores": rng.uniform(0, 1, m).round(3), "labels": plabels})
    return preds, gts


def _pycocotools_reference(
    preds: list[dict[str, Any]],
    gts: list[dict[str, Any]],
    tmp_path: Path,
    cat_ids: list[int] | None = None,
    classes: list[str] = CLASSES,
) -> np.ndarray:
    """COCOeval's 12 ``stats``, from a ground-truth JSON file and a result list (``loadRes``) built here."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (p, t) in enumerate(zip(preds, gts, strict=True)):
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 700, "height": 700})
        for j, (x0, y0, x1, y1) in enumerate(np.asarray(t["boxes"], dtype=float).reshape(-1, 4)):
            area = t["area"][j] if "area" in t else (x1 - x0) * (y1 - y0)
            crowd = int(t["iscrowd"][j]) if "iscrowd" in t else 0
            anns.append({"id": 1 + len(anns), "image_id": 100 + i, "category_id": 10 * (int(t["labels"][j]) + 1),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(area), "iscrowd": crowd})  # fmt: skip
        for (x0, y0, x1, y1), s, c in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            results.append({"image_id": 100 + i, "category_id": 10 * (int(c) + 1),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})  # fmt: skip
    categories = [{"id": 10 * (k + 1), "name": name} for k, name in enumerate(classes)]
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats, dtype=np.float64)


def test_coco_evaluate_equals_pycocotools_run_directly(tmp_path: Path) -> None:
    preds, gts = _fixed_case()
    result = coco_evaluate(preds, gts, CLASSES)
    ref = _pycocotools_reference(preds, gts, tmp_path)
    ours = [result.map, result.ap50, result.ap75, result.ap_small, result.ap_medium, result.ap_large,
            result.ar1, result.ar10, result.ar100]  # fmt: skip
    np.testing.assert_allclose(ours, ref[:9], rtol=0, atol=1e-12)
    assert 0.1 < result.map < 0.9  # a case that is neither trivial nor hopeless
    for k in range(3):
        class_ref = _pycocotools_reference(preds, gts, tmp_path, cat_ids=[10 * (k + 1)])
        assert result.per_class_ap[k] == pytest.approx(class_ref[0], abs=1e-12)
        assert result.per_class_ap50[k] == pytest.approx(class_ref[1], abs=1e-12)
    assert np.isnan(result.per_class_ap[3]) and result.num_targets[3] == 0
    crowd = sum(int(np.sum(t.get("iscrowd", 0))) for t in gts)
    assert result.num_targets.sum() == sum(len(t["labels"]) for t in gts) - crowd
    # PR curve at IoU 0.5: its mean over recall is AP50, per class.
    curve = result.pr_curve(0.5)
    assert curve.shape == (4, 101)
    np.testing.assert_allclose(np.nanmean(curve[:3], axis=1), result.per_class_ap50[:3], atol=1e-12)
    assert result.recall_thresholds.shape == (101,) and result.iou_thresholds[0] == pytest.approx(0.5)


def test_faster_coco_eval_equals_pycocotools() -> None:
    pytest.importorskip("faster_coco_eval")
    for seed in range(3):
        preds, gts = _fixed_case(seed)
        for agnostic in (False, True):
            ref = coco_evaluate(preds, gts, CLASSES, class_agnostic=agnostic)
            fast = coco_evaluate(preds, gts, CLASSES, backend="faster-coco-eval", class_agnostic=agnostic)
            assert fast.backend == "faster-coco-eval"
            ref_values, fast_values = ref.summary(), fast.summary()
            for key, value in ref_values.items():
                assert fast_values[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
            np.testing.assert_allclose(fast.per_class_ap, ref.per_class_ap, atol=1e-6)
            np.testing.assert_allclose(fast.precision, ref.precision, atol=1e-6)


def test_class_agnostic_merges_classes(tmp_path: Path) -> None:
    preds, gts = _fixed_case(1)
    agnostic = coco_evaluate(preds, gts, CLASSES, class_agnostic=True)
    merged_p = [{**p, "labels": np.zeros_like(p["labels"])} for p in preds]
    merged_g = [{**g, "labels": np.zeros_like(g["labels"])} for g in gts]
    assert agnostic.class_names == ("object",)
    assert agnostic.map == coco_evaluate(merged_p, merged_g, ["object"]).map
    assert agnostic.map != coco_evaluate(preds, gts, CLASSES).map


def test_perfect_empty_and_torch_inputs() -> None:
    gts = [
        {"boxes": torch.tensor([[10.0, 10, 60, 80], [100, 100, 300, 250]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    perfect = [
        {"boxes": g["boxes"], "scores": torch.ones(len(g["boxes"])), "labels": g["labels"]} for g in gts
    ]
    result = coco_evaluate(perfect, gts, ["a", "b"])
    assert result.map == pytest.approx(1.0) and result.ap50 == pytest.approx(1.0)
    nothing = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=int)}] * 2
    assert coco_evaluate(nothing, gts, ["a", "b"]).map == 0.0
    md = result.to_markdown()
    assert "| a | 1 | 1.000 | 1.000 |" in md and "| **all** | 2 |" in md


def test_bad_input_names_the_image_and_field() -> None:
    good = {"boxes": [[0, 0, 5, 5]], "labels": [0]}
    pred = {"boxes": [[0, 0, 5, 5]], "scores": [0.5], "labels": [0]}
    with pytest.raises(DataError, match="one entry per image: 1 and 2"):
        coco_evaluate([pred], [good, good], ["a"])
    with pytest.raises(DataError, match=r"predictions\[0\] lacks the key 'scores'"):
        coco_evaluate([{"boxes": [[0, 0, 5, 5]], "labels": [0]}], [good], ["a"])
    with pytest.raises(DataError, match=r"targets\[0\]\['boxes'\]\[0\] .* is not xyxy"):
        coco_evaluate([pred], [{"boxes": [[5, 0, 0, 5]], "labels": [0]}], ["a"])
    with pytest.raises(DataError, match=r"targets\[0\]\['labels'\]\[0\] = 3 is outside \[0, 1\)"):
        coco_evaluate([pred], [{"boxes": [[0, 0, 5, 5]], "labels": [3]}], ["a"])
    with pytest.raises(DataError, match=r"predictions\[0\]\['boxes'\] must have shape \(n, 4\)"):
        coco_evaluate([{**pred, "boxes": [0, 0, 5, 5, 1]}], [good], ["a"])
    with pytest.raises(DataError, match="non-finite"):
        coco_evaluate([{**pred, "scores": [float("nan")]}], [good], ["a"])
    with pytest.raises(ValueError, match="backend"):
        coco_evaluate([pred], [good], ["a"], backend="fast")  # type: ignore[arg-type]


def test_box_iou_equals_torchvision() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (2, 9, 2))
    a = np.concatenate([xy[0], xy[0] + rng.uniform(0, 50, (9, 2))], axis=1)
    b = np.concatenate([xy[1], xy[1] + rng.uniform(0, 50, (9, 2))], axis=1)
    expected = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-12)


def test_confusion_matrix_hand_case() -> None:
    def pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, Any]:
        return {"boxes": np.array(boxes).reshape(-1, 4), "scores": scores, "labels": labels}

    targets = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], "labels": [0, 1, 1]},
        {"boxes": np.zeros((0, 4)), "labels": []},
        {"boxes": [[0, 0, 50, 50], [60, 60, 70, 70]], "labels": [0, 0], "iscrowd": [1, 0]},
        {"boxes": [[0, 0, 10, 10]], "labels": [0]},
    ]
    predictions = [
        # hit a; b predicted as a; a false b; a detection under the threshold; a duplicate of a
        pred(
            [[0, 0, 10, 10], [20, 20, 30, 31], [100, 100, 110, 110], [0, 0, 10, 10], [1, 0, 10, 10]],
            [0.9, 0.8, 0.7, 0.1, 0.6],
            [0, 0, 1, 0, 0],
        ),
        pred([[5, 5, 20, 20]], [0.5], [1]),  # a negative image: false b
        pred([[0, 0, 50, 49]], [0.9], [0]),  # on the crowd box: ignored; the other a is missed
        # the higher IoU wins over the higher score: a matches a, the b detection becomes a false b
        pred([[0, 0, 10, 12], [0, 0, 10, 10]], [0.9, 0.5], [1, 0]),
    ]
    matrix = detection_confusion_matrix(predictions, targets, 2)
    expected = np.array(
        [
            [2, 0, 1],  # a: 2 hits, 1 missed
            [1, 0, 1],  # b: 1 taken for a, 1 missed
            [1, 3, 0],  # background: 1 false a (the duplicate), 3 false b
        ]
    )
    np.testing.assert_array_equal(matrix, expected)
    agnostic = detection_confusion_matrix(predictions, targets, 2, class_agnostic=True)
    np.testing.assert_array_equal(agnostic, [[expected[:2, :2].sum(), 2], [4, 0]])
    loose = detection_confusion_matrix(predictions, targets, 2, score_threshold=0.0)
    assert loose[2, 0] == 2  # the low-scored duplicate now counts


def test_detection_plots(tmp_path: Path) -> None:
    preds, gts = _fixed_case()
    result = coco_evaluate(preds, gts, CLASSES)
    pr = plots.save_pr_curves(result.recall_thresholds, result.pr_curve(0.5), CLASSES, tmp_path / "pr.png")
    matrix = detection_confusion_matrix(preds, gts, len(CLASSES))
    cm = plots.save_detection_confusion_matrix(matrix, CLASSES, tmp_path / "cm.png")
    for path in (pr, cm):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300
    with pytest.raises(ValueError, match="shape"):
        plots.save_detection_confusion_matrix(matrix[:-1], CLASSES, tmp_path / "bad.png")
    photo = Image.new("RGB", (120, 90), (255, 255, 255))
    drawn = plots.draw_detections(
        photo, [[20, 30, 80, 70]], [2], CLASSES, scores=[0.87], out=tmp_path / "drawn.png", width=2
    )
    pixels = np.asarray(drawn)
    colour = pixels[50, 20]  # on the left edge of the box
    assert tuple(colour) != (255, 255, 255) and tuple(pixels[50, 50]) == (
        255,
        255,
        255,
    )  # edge drawn, inside kept
    assert tuple(pixels[70, 50]) == tuple(colour)  # the bottom edge too, in the class colour
    assert np.asarray(photo).min() == 255  # the input is left untouched
    assert (tmp_path / "drawn.png").is_file()


BCCD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "bccd"


@pytest.mark.skipif(not BCCD.is_dir(), reason="real data ../shared/data/bccd is absent")
def test_real_bccd_boxes_both_backends(tmp_path: Path) -> None:
    """BCCD's validation boxes (87 images, real crowding of overlapping cells), detections = the boxes jittered, some
    dropped, some labels swapped, plus false positives: both backends equal pycocotools run directly."""
    pytest.importorskip("faster_coco_eval")
    from frugalvision.discover.voc import read_voc

    data = read_voc(BCCD, "val")
    assert data.classes == ["Platelets", "RBC", "WBC"]
    rng = np.random.default_rng(7)
    gts, preds = [], []
    for s in data.samples:
        assert s.boxes is not None and s.box_labels is not None
        boxes, labels = np.asarray(s.boxes, dtype=np.float64), np.asarray(s.box_labels)
        gts.append({"boxes": boxes, "labels": labels})
        keep = rng.random(len(boxes)) < 0.85
        noisy = boxes[keep] + rng.normal(0, 5, (int(keep.sum()), 4))
        noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        swapped = np.where(rng.random(len(noisy)) < 0.1, rng.integers(0, 3, len(noisy)), labels[keep])
        false = rng.uniform(0, 560, (3, 2))
        noisy = np.concatenate([noisy, np.concatenate([false, false + 60], axis=1)])
        preds.append(
            {
                "boxes": noisy,
                "scores": rng.uniform(0, 1, len(noisy)),
                "labels": np.r_[swapped, rng.integers(0, 3, 3)],
            }
        )
    ours = coco_evaluate(preds, gts, data.classes)
    fast = coco_evaluate(preds, gts, data.classes, backend="faster-coco-eval")
    ref = _pycocotools_reference(preds, gts, tmp_path, classes=data.classes)
    np.testing.assert_allclose(list(ours.summary().values()), ref[:9], atol=1e-12)
    np.testing.assert_allclose(list(fast.summary().values()), ref[:9], atol=1e-6)
    assert 0.1 < ours.map < 0.9, ours  # neither trivial nor hopeless
