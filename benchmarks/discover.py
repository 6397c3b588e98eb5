"""Unsupervised object discovery (MaskCut) on real detection sets: CorLoc, class-agnostic AP, CPU time.

Usage::

    python benchmarks/discover.py                          # coco128 and the bccd test split, all images
    python benchmarks/discover.py --max-images 20 --objects 3 --tau 0.15
    python benchmarks/discover.py --model vit_small_patch16_224.dino   # needs the hub once (DINO weights)

Data (read from ``../shared/data``, never copied): ``coco128`` (96 COCO-2017 images, YOLO labels; class
identity is irrelevant here, so classes are numbered ``0..79``) and ``bccd`` (BCCD blood cells,
PASCAL-VOC layout; the ``test`` split of ``ImageSets/Main``). Ground truth is every box, all classes merged.

Rows:
  * ``centre box``: one box centred in the image covering half its area (sides ``W/√2 x H/√2``), score 1
    (:func:`frugalvision.discover.centre_box_baseline`, the same baseline ``frugalvision discover`` prints).
    A strong prior on photos whose subject is centred, and the bar any discovery method has to clear.
  * ``MaskCut <model>``: :func:`frugalvision.discover.maskcut` with ``N`` objects per image, boxes scored
    ``1 - λ`` (the normalized-cut eigenvalue).

Columns: CorLoc of the first box (the usual single-object CorLoc), CorLoc of any of the boxes,
class-agnostic AP50 and AP@[.5:.95] (COCO definition, checked against pycocotools in the tests), and
median seconds per image on the CPU (decode + resize + features + cuts + upsampling), wall-clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from frugalvision.data import image_size, read_yolo
from frugalvision.discover import (
    centre_box_baseline,
    create_discovery_backbone,
    evaluate_boxes,
    maskcut,
    read_voc,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _datasets(names: list[str]) -> dict[str, tuple[list[Path], list[np.ndarray]]]:
    out = {}
    for name in names:
        if name == "coco128":
            root = SHARED / "coco128"
            if not root.exists():
                print(f"skipping coco128: {root} not found", file=sys.stderr)
                continue
            ds = read_yolo(root / "images", root / "labels", classes=[str(i) for i in range(80)])
        elif name == "bccd":
            root = SHARED / "bccd"
            if not root.exists():
                print(f"skipping bccd: {root} not found", file=sys.stderr)
                continue
            split = "test" if (root / "ImageSets" / "Main" / "test.txt").is_file() else None
            ds = read_voc(root, split=split)
        else:
            raise SystemExit(f"unknown data set {name!r}: choose coco128 or bccd")
        boxes = [np.zeros((0, 4)) if s.boxes is None else np.asarray(s.boxes, np.float64) for s in ds.samples]
        out[name] = (list(ds.paths), boxes)
    return out


def _row(label: str, metrics: dict[str, float], seconds: float | None) -> str:
    sec = f"{seconds:8.3f}" if seconds is not None else "       -"
    return (
        f"  {label:<34} {metrics['corloc']:>7.3f} {metrics['corloc_any']:>7.3f} "
        f"{metrics['ap50']:>7.3f} {metrics['ap']:>7.3f} {sec}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", default=["coco128", "bccd"], help="coco128 and/or bccd")
    parser.add_argument("--model", default="tf_efficientnet_lite0.in1k_offline", help="backbone for MaskCut")
    parser.add_argument("--no-pretrained", action="store_true", help="random weights (a sanity floor)")
    parser.add_argument("--objects", type=int, default=3, help="MaskCut's N")
    parser.add_argument("--tau", type=float, default=0.15, help="affinity threshold (paper: 0.15)")
    parser.add_argument("--image-size", type=int, default=480, help="square input side (CutLER: 480)")
    parser.add_argument("--max-images", type=int, default=None, help="first N images of each set")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = create_discovery_backbone(
        args.model, pretrained=not args.no_pretrained, image_size=args.image_size
    )
    print(
        f"MaskCut: model={args.model}{' (random init)' if args.no_pretrained else ''}, N={args.objects}, "
        f"tau={args.tau}, input {args.image_size}px, torch threads={torch.get_num_threads()}, "
        f"cpu cores={os.cpu_count()}"
    )
    header = f"  {'method':<34} {'CorLoc':>7} {'CorLoc*':>7} {'AP50':>7} {'AP':>7} {'s/img':>8}"
    for name, (paths, gt) in _datasets(args.data).items():
        if args.max_images:
            paths, gt = paths[: args.max_images], gt[: args.max_images]
        n_boxes = sum(len(g) for g in gt)
        print(
            f"\n{name}: {len(paths)} images, {n_boxes} ground-truth boxes, {sum(len(g) > 0 for g in gt)} with boxes"
        )
        print(header)
        baseline = centre_box_baseline([image_size(p) for p in paths], gt)
        print(_row("centre box (half the area)", baseline, None))
        maskcut(paths[0], backbone, args.objects, tau=args.tau, image_size=args.image_size)  # warm-up
        boxes, scores, seconds = [], [], []
        for p in paths:
            t = time.perf_counter()
            found = maskcut(p, backbone, args.objects, tau=args.tau, image_size=args.image_size)
            seconds.append(time.perf_counter() - t)
            boxes.append(found.boxes)
            scores.append(found.scores)
        label = f"MaskCut N={args.objects} {args.model.split('.')[0][:18]}"
        print(_row(label, evaluate_boxes(boxes, scores, gt), statistics.median(seconds)))
        first = [b[:1] for b in boxes]
        found = evaluate_boxes(first, [s[:1] for s in scores], gt)
        print(_row("MaskCut first box only", found, None))
        verdict = "beats" if found["corloc"] > baseline["corloc"] else "does NOT beat"
        print(
            f"  -> MaskCut's first box {verdict} the centred box (CorLoc {found['corloc']:.4f} vs {baseline['corloc']:.4f})"
        )
    print("\nCorLoc: first box; CorLoc*: any box. AP: class-agnostic COCO box AP@[.5:.95].")


if __name__ == "__main__":
    main()
