"""Detection data and evaluation speed: COCO mAP with pycocotools against faster-coco-eval, and the cost of the
training augmentation per image.

Part 1 (``coco_evaluate``): ``--images`` synthetic images (classes, boxes and detections as BCCD's: 3 classes,
about 13 boxes per image; 100 detections per image, a jittered copy of each box with a random score, the rest
false positives), evaluated by :func:`frugalvision.metrics.detection.coco_evaluate` with both backends. Seconds
include building the COCO data sets (the same code for both), the ratio is pycocotools / faster-coco-eval, and
the mAPs must agree to 1e-6.

Part 2 (:class:`frugalvision.data.detection.DetectionDataset`): milliseconds per item on BCCD's ``train`` split
(``../shared/data/bccd``, 640 x 480 JPEG) at ``--size`` px, one torch thread, for evaluation (letterbox only) and
for training without mosaic, with mosaic, and with mosaic + mixup (each with the default random affine, HSV jitter
and flip). Decoding the JPEGs is included: it is what a DataLoader worker does.

Usage::

    python benchmarks/detection_data.py                       # 2000 images for part 1, 64 BCCD items for part 2
    python benchmarks/detection_data.py --images 5000 --items 205

Timings on a shared CPU are indicative; the mAP numbers are deterministic (fixed seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frugalvision.data.detection import DetectionAugment, DetectionDataset
from frugalvision.metrics.detection import coco_evaluate

BCCD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bccd"


def make_detections(images: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """BCCD-like ground truth and 100 detections per image."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(images):
        n = int(rng.integers(5, 22))
        xy = rng.uniform(0, 560, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(15, 120, (n, 2))], axis=1)
        labels = rng.choice(3, n, p=[0.1, 0.85, 0.05])
        gts.append({"boxes": boxes, "labels": labels})
        hits = boxes + rng.normal(0, 6, boxes.shape)
        xy = rng.uniform(0, 560, (100 - n, 2))
        false = np.concatenate([xy, xy + rng.uniform(15, 120, (100 - n, 2))], axis=1)
        det = np.concatenate([hits, false])
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        scores = np.r_[rng.uniform(0.3, 1, n), rng.uniform(0, 0.6, 100 - n)]
        preds.append({"boxes": det, "scores": scores, "labels": np.r_[labels, rng.integers(0, 3, 100 - n)]})
    return preds, gts


def time_backends(images: int) -> None:
    preds, gts = make_detections(images)
    rows = []
    for backend in ("pycocotools", "faster-coco-eval"):
        start = time.perf_counter()
        result = coco_evaluate(preds, gts, ["Platelets", "RBC", "WBC"], backend=backend)  # type: ignore[arg-type]
        rows.append((backend, time.perf_counter() - start, result))
    ref_seconds, ref = rows[0][1], rows[0][2]
    print(
        f"\n## coco_evaluate on {images} images, {sum(len(g['labels']) for g in gts)} boxes, "
        f"{100 * images} detections\n"
    )
    print("| backend | seconds | speed-up | mAP | AP50 | max abs diff of the 9 summary numbers |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, seconds, result in rows:
        diff = max(abs(a - b) for a, b in zip(result.summary().values(), ref.summary().values(), strict=True))
        print(
            f"| {backend} | {seconds:.2f} | {ref_seconds / seconds:.1f}x | {result.map:.4f} | {result.ap50:.4f} "
            f"| {diff:.1e} |"
        )


def time_dataset(items: int, size: int) -> None:
    if not BCCD.is_dir():
        print(f"\n(part 2 skipped: {BCCD} is absent)")
        return
    from frugalvision.discover.voc import read_voc

    data = read_voc(BCCD, "train")
    items = min(items, len(data))
    settings: list[tuple[str, bool, DetectionAugment | None]] = [
        ("evaluation (letterbox)", False, None),
        ("train, no mosaic", True, DetectionAugment(mosaic=0.0)),
        ("train, mosaic", True, DetectionAugment(mosaic=1.0)),
        ("train, mosaic + mixup", True, DetectionAugment(mosaic=1.0, mixup=1.0)),
    ]
    print(f"\n## DetectionDataset on BCCD train ({items} items, {size} px, 1 torch thread)\n")
    print("| setting | ms / item | boxes / item |")
    print("|---|---:|---:|")
    base = None
    for name, train, augment in settings:
        ds = DetectionDataset(data, size, train=train, augment=augment)
        ds[0]  # warm-up
        start = time.perf_counter()
        boxes = sum(len(ds[i][1]["boxes"]) for i in range(items))  # type: ignore[index]
        ms = 1000 * (time.perf_counter() - start) / items
        base = base or ms
        print(f"| {name} | {ms:.1f} ({ms / base:.1f}x) | {boxes / items:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images of part 1")
    parser.add_argument("--items", type=int, default=64, help="BCCD items of part 2")
    parser.add_argument("--size", type=int, default=416, help="network input side of part 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    time_backends(args.images)
    time_dataset(args.items, args.size)


if __name__ == "__main__":
    main()
