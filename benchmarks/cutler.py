"""CutLER's second stage on coco128 (issue 14, part 5): MaskCut pseudo-boxes -> a class-agnostic detector trained on
them -> one round of self-training, each scored against coco128's real boxes (class-agnostic), beside the fixed
centred box.

Steps (every one through the toolkit's public pieces, as the command line runs them):

1. ``frugalvision discover coco128`` (MaskCut) writes the pseudo-boxes as COCO JSON.
2. ``frugalvision train --task detection --data pseudo.json`` with ``detection.class_agnostic=true``.
3. Its detections on the same images scoring >= ``--self-threshold`` become the next targets (COCO JSON; an image
   left without one keeps its MaskCut boxes), and a second detector is trained on them with the same budget
   (CutLER initialises round 2 from round 1; here both rounds start from the ImageNet backbone).

Scores (:func:`frugalvision.discover.metrics.evaluate_boxes`, against every real coco128 box as one class
"object"): class-agnostic AP50 and AP (pycocotools' rules), CorLoc of the first (best) box. Detector rows use the
detections scoring >= 0.001 (NMS IoU 0.65), best first.

HONEST NOTE: no DINO weights exist offline, so MaskCut runs on the offline ImageNet EfficientNet-Lite0 (its
stride-16 map), not on the self-supervised ViT CutLER uses; expect MaskCut's boxes, and so the detectors trained
on them, to be far weaker than the paper's.

Usage::

    python benchmarks/cutler.py --epochs 2 --image-size 320            # CPU budget
    python benchmarks/cutler.py --epochs 30 --image-size 416 --accelerator gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from frugalvision.bundle import load_detector
from frugalvision.cli.detection import torch_detect
from frugalvision.cli.main import cli
from frugalvision.data import load_image
from frugalvision.discover import open_discovery_set
from frugalvision.discover.metrics import centre_box_baseline, evaluate_boxes

COCO128 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128"
BACKBONE = "tf_efficientnet_lite0.in1k_offline"


def run(*args: Any) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"frugalvision {' '.join(map(str, args))} failed:\n{result.output}")
    return result.stdout


def absolute_file_names(coco_file: Path, root: Path) -> None:
    """Rewrite ``file_name`` as absolute paths (the JSON lives outside the data folder)."""
    data = json.loads(coco_file.read_text())
    for image in data["images"]:
        image["file_name"] = str((root / image["file_name"]).resolve())
    coco_file.write_text(json.dumps(data))


def train(data: Path, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    sets = {
        "model.name": BACKBONE,
        "detection.class_agnostic": "true",
        "detection.size": "n",
        "detection.image_size": args.image_size,
        "detection.close_mosaic": 1,
        "data.batch_size": args.batch_size,
        "data.num_workers": 0,
        "optim.lr": args.lr,
        "trainer.epochs": args.epochs,
        "trainer.accelerator": args.accelerator,
        "trainer.patience": "null",
        "trainer.progress": "false",
    }
    start = time.perf_counter()
    run("train", "--task", "detection", "--data", data, "--out", out,
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])  # fmt: skip
    return out / "model", time.perf_counter() - start


def detections(bundle: Path, paths: list[Path]) -> list[dict[str, np.ndarray]]:
    return torch_detect(load_detector(bundle), paths, score_threshold=0.001)


def self_training_targets(
    pseudo: Path, dets: list[dict[str, np.ndarray]], paths: list[Path], threshold: float, out: Path
) -> int:
    """COCO JSON of the detections scoring >= ``threshold`` (MaskCut's boxes where none does); returns the box
    count."""
    data = json.loads(pseudo.read_text())
    by_name = {im["file_name"]: im["id"] for im in data["images"]}
    old: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        old.setdefault(a["image_id"], []).append(a)
    annotations: list[dict[str, Any]] = []
    for path, det in zip(paths, dets, strict=True):
        image_id = by_name[str(path.resolve())]
        keep = det["scores"] >= threshold
        if keep.any():
            for (x0, y0, x1, y1), s in zip(det["boxes"][keep], det["scores"][keep], strict=True):
                w, h = float(x1 - x0), float(y1 - y0)
                if w >= 1 and h >= 1:
                    annotations.append({"image_id": image_id, "category_id": 1, "bbox": [float(x0), float(y0), w, h],
                                        "area": w * h, "iscrowd": 0, "score": float(s)})  # fmt: skip
        else:
            annotations += [
                {k: v for k, v in a.items() if k in ("image_id", "category_id", "bbox", "area", "iscrowd")}
                for a in old.get(image_id, [])
            ]
    for i, a in enumerate(annotations):
        a["id"] = i + 1
    out.write_text(json.dumps({"images": data["images"], "annotations": annotations,
                               "categories": data["categories"]}))  # fmt: skip
    return len(annotations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--self-threshold", type=float, default=0.3)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", default="runs/bench-cutler")
    args = parser.parse_args()
    if not COCO128.is_dir():
        raise SystemExit(f"coco128 not found at {COCO128}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = open_discovery_set(COCO128).head(args.max_images)
    paths, truth = list(dataset.paths), list(dataset.boxes or [])
    sizes = [load_image(p).size for p in paths]
    rows: list[dict[str, Any]] = []

    pseudo = out / "maskcut.json"
    start = time.perf_counter()
    extra = ["--max-images", args.max_images] if args.max_images else []
    text = run("discover", COCO128, "--out", pseudo, "--model", BACKBONE, "--json", *extra)
    found = json.loads(text[text.index("{") :])  # after its "wrote N objects" line
    rows.append({"method": "MaskCut (Lite0 features)", **{k: found[k] for k in ("ap50", "ap", "corloc")},
                 "seconds": time.perf_counter() - start})  # fmt: skip
    base = centre_box_baseline(sizes, truth)
    rows.append({"method": "centred box (half the area)", **{k: base[k] for k in ("ap50", "ap", "corloc")},
                 "seconds": 0.0})  # fmt: skip
    absolute_file_names(pseudo, dataset.root)

    targets = pseudo
    for round_ in (1, 2):
        bundle, seconds = train(targets, out / f"round{round_}", args)
        dets = detections(bundle, paths)
        m = evaluate_boxes([d["boxes"] for d in dets], [d["scores"] for d in dets], truth)
        name = "detector on MaskCut boxes" if round_ == 1 else "+ one self-training round"
        rows.append({"method": name, **{k: m[k] for k in ("ap50", "ap", "corloc")}, "seconds": seconds})
        print(rows[-1], flush=True)
        if round_ == 1:
            targets = out / "self_training.json"
            n = self_training_targets(pseudo, dets, paths, args.self_threshold, targets)
            print(f"self-training targets: {n} boxes (score >= {args.self_threshold})", flush=True)

    print(
        f"\ncoco128 ({len(paths)} images, {sum(len(t) for t in truth)} boxes), class-agnostic; detectors: ours n, "
        f"{args.image_size} px, {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, backbone {BACKBONE}; "
        "MaskCut on the offline ImageNet Lite0 (no DINO weights offline); seconds: wall-clock on a shared CPU\n"
    )
    print("| method | AP50 | AP | CorLoc | seconds |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['ap50']:.4f} | {r['ap']:.4f} | {r['corloc']:.4f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
