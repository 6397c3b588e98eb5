"""Detection through the command line (issue 14): train -> evaluate -> predict -> export -> ONNX Runtime -> /detect,
on a tiny synthetic COCO set of red and blue rectangles with a tiny random backbone.

References that do not call the code under test: pycocotools' ``COCOeval`` run directly on ``predict``'s boxes
(``evaluate``'s numbers), a letterbox built with numpy and torchvision's ``batched_nms`` (``predict``'s boxes in
original pixels), and the torch predictions themselves (ONNX Runtime's and ``/detect``'s boxes).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frugalvision.cli.main import cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]

COLOURS = [(220, 40, 40), (40, 40, 220)]
SIDE = 64  # the detector's input side; every image's longer side is 64, so the letterbox only pads (scale 1)
# Low enough for the undertrained detector to keep boxes; at S = 64, N * C = 84 * 2 = 168 pairs < 300: no top-K cut.
THRESHOLD = 0.02
#: int8 against fp32 (test_int8_export_keeps_the_fp32_boxes): of the detections scoring at least INT8_MIN_SCORE
#: whose sides are at least INT8_MIN_SIDE px, a share of at least INT8_MIN_SHARE has a twin of its class with IoU >=
#: INT8_MIN_IOU and a score within INT8_SCORE_TOL (absolute), both ways. int8 is not bit-exact and this detector is
#: barely trained (its scores sit near 0.02-0.25, where a small shift moves boxes across NMS): with one thread every
#: one of 17 detections had a close twin (worst IoU 0.945, score difference 0.0011); with two threads (the model
#: trains differently) 23 of 34 had a twin within IoU 0.85 / 0.04, the others were slivers and corner boxes. So the
#: bounds are loose; a broken quantisation (wrong scales, a lost NMS) loses most twins.
INT8_MIN_SCORE = 0.04
INT8_MIN_SIDE = 2.0
INT8_MIN_IOU = 0.5
INT8_SCORE_TOL = 0.1
INT8_MIN_SHARE = 0.6


def write_coco(root: Path, n: int = 12, seed: int = 0, names: tuple[str, str] = ("red", "blue")) -> Path:
    """``n`` images (48x64 and 64x48) of 1-2 red / blue rectangles, the last one empty, and their COCO JSON."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        w, h = (64, 48) if i % 2 else (48, 64)
        pixels = np.full((h, w, 3), 128, np.uint8)
        for _ in range(0 if i == n - 1 else int(rng.integers(1, 3))):
            bw, bh = int(rng.integers(14, 24)), int(rng.integers(14, 24))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            c = int(rng.integers(0, 2))
            pixels[y : y + bh, x : x + bw] = COLOURS[c]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        Image.fromarray(pixels).save(root / "images" / f"{i:02d}.png")
        images.append({"id": i + 1, "file_name": f"{i:02d}.png", "width": w, "height": h})
    path = root / "data.json"
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def predictions(lines: str) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for line in lines.splitlines():
        r = json.loads(line)
        out[Path(r["path"]).name] = {
            "boxes": np.array(r["boxes"], np.float64).reshape(-1, 4),
            "scores": np.array(r["scores"], np.float64),
            "labels": np.array(r["labels"], np.int64),
        }
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("det-e2e")
    data = write_coco(root / "data")
    settings = {
        "model.name": "test_efficientnet",
        "model.pretrained": "false",
        "detection.image_size": SIDE,
        "data.batch_size": 4,
        "data.val_fraction": 0.25,
        "data.num_workers": 0,
        "optim.lr": 3e-3,
        "trainer.epochs": 6,
        "trainer.progress": "false",
        # softplus sides, not the default 16-bin DFL: the int8 tolerances below were measured on this model, and
        # with DFL this 6-epoch tiny model keeps its scores under 0.04 (DFL export and int8: tests/deploy, tests/models)
        "detection.dfl_bins": 0,
    }
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    out = run("train", "--task", "detection", "--data", data, "--out", root / "run", *sets)
    assert "frugalvision predict" in out
    return data, root / "run" / "model"


def test_evaluate_equals_pycocotools_on_predicted_boxes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data, bundle = trained
    report = tmp_path / "report"
    result = json.loads(run("evaluate", bundle, "--data", data, "--json", "--report", report))
    for name in ("report.md", "metrics.json", "pr_curves.png", "confusion_matrix.png"):
        assert (report / name).stat().st_size > 0, name
    assert "| red |" in (report / "report.md").read_text()
    assert [r["class"] for r in result["per_class"]] == ["red", "blue"]
    assert np.asarray(result["confusion_matrix"]).shape == (3, 3)

    preds = predictions(run("predict", bundle, data.parent / "images", "--json", "--threshold", "0.001"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data))
        ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
        dets = [
            {"image_id": ids[name], "category_id": int(c) + 1, "score": float(s),
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for name, p in preds.items()
            for b, s, c in zip(p["boxes"], p["scores"], p["labels"], strict=True)
        ]  # fmt: skip
        assert dets, "the detector kept no box at all"
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert result["metrics"]["map"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert result["metrics"]["ap50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert result["metrics"]["ap75"] == pytest.approx(ev.stats[2], abs=1e-6)
    assert result["metrics"]["ar100"] == pytest.approx(ev.stats[8], abs=1e-6)


def test_predict_boxes_are_in_original_pixels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Reference: the letterbox built by hand with numpy (scale 1 here: a grey 114 border), the detector's raw
    eval outputs, torchvision's class-aware ``batched_nms``, minus the border (boxes lying in it only are dropped)."""
    from torchvision.ops import batched_nms

    from frugalvision.bundle import load_detector

    data, bundle = trained
    draw = tmp_path / "drawn"
    images = sorted((data.parent / "images").glob("*.png"))
    got = predictions(run("predict", bundle, *images, "--json", "--threshold", THRESHOLD, "--draw", draw))
    assert len(list(draw.glob("*.png"))) == len(images)
    model = load_detector(bundle)
    mean = np.array(model.data_config["mean"], np.float32) * 255
    std = np.array(model.data_config["std"], np.float32) * 255
    kept = 0
    for path in images:
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        h, w = pixels.shape[:2]
        px, py = (SIDE - w) // 2, (SIDE - h) // 2
        canvas = np.full((SIDE, SIDE, 3), 114, np.float32)
        canvas[py : py + h, px : px + w] = pixels
        x = torch.from_numpy(((canvas - mean) / std).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            boxes, scores = model(x)
        n, c = torch.nonzero(scores[0] > THRESHOLD, as_tuple=True)
        b, s = boxes[0][n], scores[0][n, c]
        keep = batched_nms(b, s, c, 0.65)[:300]
        want_boxes = (b[keep] - torch.tensor([px, py, px, py])).numpy()
        want_boxes = np.clip(want_boxes, 0, [w, h, w, h])
        # a box empty once clipped lay in the grey border only: dropped, as the runtime's detect() drops it
        inside = (want_boxes[:, 2] > want_boxes[:, 0]) & (want_boxes[:, 3] > want_boxes[:, 1])
        p = got[path.name]
        assert p["labels"].tolist() == c[keep][inside].tolist(), path.name
        np.testing.assert_allclose(p["scores"], s[keep].numpy()[inside], atol=1e-6)
        np.testing.assert_allclose(p["boxes"], want_boxes[inside], atol=1e-3)
        kept += int(inside.sum())
    assert kept > 0, "no box over the threshold: the comparison would be empty"


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def assert_same_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray], where: str) -> int:
    """Every detection of one side scoring clearly over the threshold (by > 1e-4) has a twin on the other side:
    same class, IoU >= 0.99, score within 1e-4. Returns the number of detections matched."""
    matched = 0
    for a, b in ((got, want), (want, got)):
        for box, score, label in zip(a["boxes"], a["scores"], a["labels"], strict=True):
            if score <= THRESHOLD + 1e-4:
                continue
            same = b["labels"] == label
            iou = _box_iou(box[None], b["boxes"][same])[0] if same.any() else np.zeros(0)
            ok = (iou >= 0.99) & (np.abs(b["scores"][same] - score) <= 1e-4)
            assert ok.any(), f"{where}: {label} {score:.5f} {box} has no twin in {b}"
            matched += 1
    return matched


def test_export_runtime_and_detect_equal_torch(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from frugalvision.runtime import Predictor
    from frugalvision.serve import create_app

    data, bundle = trained
    images = sorted((data.parent / "images").glob("*.png"))
    deploy = tmp_path / "deploy"
    run("export", bundle, "--out", deploy, "--score-threshold", THRESHOLD)
    assert json.loads((deploy / "deploy.json").read_text())["task"] == "detection"
    torch_preds = predictions(run("predict", bundle, *images, "--json", "--threshold", THRESHOLD))
    onnx_preds = predictions(run("predict", deploy, *images, "--json", "--threshold", THRESHOLD))
    predictor = Predictor(deploy, threads=1)
    direct = predictor.detect([str(p) for p in images])
    matched = 0
    for path, det in zip(images, direct, strict=True):
        want = torch_preds[path.name]
        runtime = {"boxes": det.boxes.astype(np.float64), "scores": det.scores, "labels": det.labels}
        matched += assert_same_detections(runtime, want, path.name)
        assert_same_detections(onnx_preds[path.name], want, path.name)
    assert matched > 0, "no detection to compare"

    app = create_app(predictor, max_batch=4, max_wait_ms=2)
    with TestClient(app) as client:
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images[:4]]
        r = client.post("/detect", files=files)
        assert r.status_code == 200, r.text
        for path, body in zip(images[:4], r.json()["detections"], strict=True):
            served = {
                "boxes": np.array(body["boxes"], np.float64).reshape(-1, 4),
                "scores": np.array(body["scores"]),
                "labels": np.array(body["labels"]),
            }
            assert_same_detections(served, torch_preds[path.name], path.name)


def test_int8_export_keeps_the_fp32_boxes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """``export --int8 --calibrate`` on a detection bundle: the body is quantised on letterboxed images, the NMS stays
    float, and the int8 detections follow the fp32 ones. Tolerance (int8 is not bit-exact): see INT8_MIN_SHARE."""
    from frugalvision.runtime import Predictor

    data, bundle = trained
    images = sorted((data.parent / "images").glob("*.png"))
    deploy = tmp_path / "deploy"
    report = json.loads(run("export", bundle, "--out", deploy, "--score-threshold", THRESHOLD, "--int8",
                            "--calibrate", data.parent / "images", "--calibration-images", 8, "--json"))  # fmt: skip
    assert report["int8"]["calibration_images"] == 8 and report["int8"]["check_images"] == 4
    assert {"recall", "precision"} <= set(report["int8"]["agreement_with_fp32"])
    fp32 = Predictor(deploy, precision="fp32", threads=1).detect([str(p) for p in images])
    int8 = Predictor(deploy, precision="int8", threads=1).detect([str(p) for p in images])
    for a, b, what in ((fp32, int8, "fp32 -> int8"), (int8, fp32, "int8 -> fp32")):
        matched, missing = 0, []
        for x, y in zip(a, b, strict=True):
            for box, score, label in zip(x.boxes, x.scores, x.labels, strict=True):
                box = np.asarray(box, np.float64)
                if score < INT8_MIN_SCORE or min(box[2] - box[0], box[3] - box[1]) < INT8_MIN_SIDE:
                    continue
                same = y.labels == label
                iou = _box_iou(box[None], np.asarray(y.boxes, np.float64)[same])[0]
                diff = np.abs(y.scores[same] - score)
                if ((iou >= INT8_MIN_IOU) & (diff <= INT8_SCORE_TOL)).any():
                    matched += 1
                else:
                    missing.append(f"{label} {score:.3f} {box.round(1).tolist()}")
        total = matched + len(missing)
        assert total > 0, f"{what}: no detection over INT8_MIN_SCORE to compare"
        assert matched / total >= INT8_MIN_SHARE, f"{what}: {matched}/{total} with a twin; without: {missing}"


def test_evaluate_refuses_other_classes_in_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = trained
    other = write_coco(tmp_path / "other", n=4, names=("cat", "dog"))
    result = CliRunner().invoke(cli, ["evaluate", str(bundle), "--data", str(other)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert "cat" in result.output or "classes" in result.output


def test_draw_needs_a_detection_model(tmp_path: Path) -> None:
    from helpers import make_bundle

    bundle = tmp_path / "tagger"
    make_bundle(bundle, task="multilabel", dim=2, classes=("a", "b"))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(image), "--draw", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--draw goes with a detection model" in result.output
