"""The BCCD detection table of issue 14 in one run: ``benchmarks/detection.py``'s training and test evaluation of our
detector and torchvision RetinaNet / FCOS on the same offline Lite0 backbone, plus

* the ONNX Runtime latency (batch 1, 2 threads, NMS inside the graph) of our detector exported as
  ``frugalvision export`` does it (fused, :func:`frugalvision.deploy.export_detector`); the torchvision peers keep
  their torch CPU latency (their ONNX export is not part of this toolkit);
* ``--variants dfl``: our detector with distribution focal loss (``detection.dfl_bins``, ``--dfl-bins``, 16; what
  ``frugalvision train`` does by default); every other variant trains with ``detection.dfl_bins=0``;
* a centred-box baseline with no learning at all: for every test image and every class ``c`` one box centred on
  the image, of the mean relative size of class ``c``'s training boxes (``w_c / W``, ``h_c / H`` averaged over the
  training boxes, times the test image's ``W, H``), scored by the class's share of the training boxes. It is the
  floor a detector must clear (BCCD's cells are everywhere, so it scores near 0 at IoU 0.5).

Test metrics: COCO mAP@[.5:.95] and AP50 (pycocotools via :func:`frugalvision.metrics.coco_evaluate`, original
pixels). Times are wall-clock on whatever machine runs it (indicative on a shared CPU). The metrics are
deterministic for one thread count; another count (``OMP_NUM_THREADS``) sums in another order and trains along
another path (digits, 320 px, 3 epochs, size n without DFL: mAP 0.101 with 2 threads, 0.076 with 1), so compare
rows run with the same count.

Usage (the small CPU budget of the issue's table, then a larger one on a GPU)::

    python benchmarks/detection_table.py --epochs 2 --image-size 320
    python benchmarks/detection_table.py --epochs 50 --image-size 416 --sizes n s \\
        --variants plain rep+aux --accelerator gpu
    python benchmarks/detection_table.py --epochs 2 --image-size 256 --peers --variants plain dfl  # DFL vs plain
    python benchmarks/detection_table.py --data digits --epochs 3 --image-size 320 --peers --variants plain dfl
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection as bench
from frugalvision.cli.detection import export_detection
from frugalvision.data import load_image
from frugalvision.data.dataset import ImageDataset
from frugalvision.discover import read_voc
from frugalvision.metrics import coco_evaluate
from frugalvision.runtime import Predictor


def onnx_latency_ms(bundle: Path, size: int, runs: int = 30, threads: int = 2) -> float:
    """Median ONNX Runtime latency (ms) of the exported bundle at batch 1 on ``threads`` threads."""
    with tempfile.TemporaryDirectory(prefix="det-bench-") as tmp:
        export_detection(bundle, Path(tmp) / "onnx")
        predictor = Predictor(Path(tmp) / "onnx", threads=threads)
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        times = []
        for i in range(runs + 3):
            start = time.perf_counter()
            predictor.run(x)
            if i >= 3:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _targets(test: ImageDataset) -> list[dict[str, np.ndarray]]:
    """``coco_evaluate`` targets of a data set (original pixels; an image without boxes is a negative)."""
    targets = []
    for s in test.samples:
        has = s.boxes is not None and s.box_labels is not None
        targets.append(
            {
                "boxes": np.asarray(s.boxes if has else np.zeros((0, 4)), np.float32).reshape(-1, 4),
                "labels": np.asarray(s.box_labels if has else np.zeros(0), np.int64),
            }
        )
    return targets


def onnx_test_map(
    bundle: Path, train: ImageDataset, test: ImageDataset, calibration: int = 64
) -> dict[str, float]:
    """Test mAP of the bundle exported as ``frugalvision export`` does it (NMS inside, score threshold 0.001 as in
    evaluation) and run by ONNX Runtime from the photo files (:meth:`Predictor.detect`), in fp32 and in int8
    (:func:`frugalvision.deploy.quantize_int8` calibrated on ``calibration`` training photos)."""
    from frugalvision.deploy import quantize_int8

    result = {}
    with tempfile.TemporaryDirectory(prefix="det-bench-") as tmp:
        out = Path(tmp) / "onnx"
        export_detection(bundle, out, score_threshold=0.001)
        quantize_int8(out, [s.path for s in train.samples], max_images=calibration, check_images=8)
        for precision in ("fp32", "int8"):
            found = Predictor(out, precision=precision, threads=2).detect([str(s.path) for s in test.samples])
            preds = [{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d in found]
            result[f"ORT {precision} mAP"] = coco_evaluate(preds, _targets(test), list(test.classes)).map
    return result


def _size(path: Path) -> tuple[float, float]:
    """``(W, H)`` of the upright image."""
    image = load_image(path)
    return float(image.width), float(image.height)


def centred_box_baseline(train: ImageDataset, test: ImageDataset) -> tuple[float, float]:
    """``(mAP, AP50)`` of one centred box per class and image (see the module docstring)."""
    classes = list(train.classes)
    rel: list[list[tuple[float, float]]] = [[] for _ in classes]  # (w / W, h / H) of each training box
    for s in train.samples:
        if s.boxes is None or s.box_labels is None:
            continue
        W, H = _size(s.path)
        for box, label in zip(np.asarray(s.boxes), np.asarray(s.box_labels), strict=True):
            rel[int(label)].append(((box[2] - box[0]) / W, (box[3] - box[1]) / H))
    counts = np.array([len(r) for r in rel], np.float64)
    prior = counts / max(counts.sum(), 1.0)
    mean = [np.mean(r, axis=0) if r else np.array([0.1, 0.1]) for r in rel]
    preds = []
    for s in test.samples:
        w, h = _size(s.path)
        boxes = np.array(
            [
                [w / 2 - m[0] * w / 2, h / 2 - m[1] * h / 2, w / 2 + m[0] * w / 2, h / 2 + m[1] * h / 2]
                for m in mean
            ],
            np.float32,
        )
        preds.append({"boxes": boxes, "scores": prior.astype(np.float32), "labels": np.arange(len(classes))})
    result = coco_evaluate(preds, _targets(test), classes)
    return result.map, result.ap50


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import logging
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sizes", nargs="+", default=["n"])
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=["plain", "rep+aux", "dfl", "dw"])
    parser.add_argument("--dfl-bins", type=int, default=16, help="detection.dfl_bins of the dfl variant")
    parser.add_argument("--peers", nargs="*", default=["retinanet", "fcos"])
    parser.add_argument(
        "--multi-scale", type=float, default=0.0, help="detection.multi_scale of our detector"
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--data", choices=bench.DATA_SETS, default="bccd",
        help="BCCD, or the digits-on-CIFAR confirmation set (benchmarks/detection_sets.py)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/bench-detection")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also the test mAP of our exported models in ONNX Runtime, fp32 and int8 (calibrated on 64 train photos)",
    )
    parser.add_argument(
        "--onnx-only", action="store_true",
        help="no training: the ONNX fp32 / int8 test mAP of the bundles a previous run left under --out",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.data_root = bench.data_root(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    train_set, test_set = read_voc(args.data_root, "train"), read_voc(args.data_root, "test")
    data_config = bench.create_backbone(bench.BACKBONE, pretrained=False).data_config
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    test = bench.DetectionDataset(test_set, image_size=args.image_size, mean=mean, std=std)
    train = bench.DetectionDataset(
        train_set,
        image_size=args.image_size,
        train=True,
        augment=bench.DetectionAugment(close_mosaic_epoch=max(0, args.epochs - 1)),
        mean=mean,
        std=std,
    )
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for variant in args.variants:
            rep_aux, bins = variant == "rep+aux", args.dfl_bins if variant == "dfl" else 0
            depthwise = variant == "dw"
            folder = bench.ours_dir(args, size, rep_aux, bins, depthwise) / "model"
            if args.onnx_only:
                if not folder.is_dir():
                    raise SystemExit(f"--onnx-only: no trained bundle at {folder} (run without it first)")
                row = {"model": f"ours {size} {variant}", **onnx_test_map(folder, train_set, test_set)}
                rows.append(row)
                print(row, flush=True)
                continue
            row = bench.run_ours(args, size, rep_aux, test, dfl_bins=bins, depthwise=depthwise)
            row["ORT ms"] = onnx_latency_ms(folder, args.image_size)
            if args.int8:
                row.update(onnx_test_map(folder, train_set, test_set))
            rows.append(row)
            print(row, flush=True)
    if args.onnx_only:
        bench.print_table(rows, f"{args.data} test ({len(test_set)} images): exported models in ONNX Runtime")
        return
    for kind in args.peers:
        row = bench.run_peer(args, kind, train, test)
        row["ORT ms"] = "n/a"
        rows.append(row)
        print(row, flush=True)
    base_map, base_ap50 = centred_box_baseline(train_set, test_set)
    rows.append({"model": "centred box per class", "params (M)": 0.0, "test mAP": base_map,
                 "test AP50": base_ap50, "train s": 0.0, "latency ms": 0.0, "ORT ms": 0.0})  # fmt: skip
    bench.print_table(
        rows,
        f"{args.data} test ({len(test_set)} images), {args.image_size} px, {args.epochs} epoch(s), batch "
        f"{args.batch_size}, lr {args.lr} (heads x10 for the peers), multi-scale {args.multi_scale}, backbone {bench.BACKBONE}, same augmentation; "
        "latency ms: torch CPU, ORT ms: ONNX Runtime with NMS, both batch 1, 2 threads (indicative: shared CPU)",
    )


if __name__ == "__main__":
    main()
