"""Detection on BCCD: our YOLO-family detector against torchvision RetinaNet and FCOS on the same backbone.

SKELETON (issue 14): the training / test-evaluation / latency pipeline of the comparison, run at a tiny budget on a
2-core CPU. Not yet in it: ONNX Runtime latency (the detector's export lives on another branch; until it is merged
the latency column is torch's, batch 1, 2 threads), YOLOX-nano (``pixeltable-yolox``) and the coco128 CutLER table.

Data: BCCD (``../shared/data/bccd``, PASCAL-VOC layout) on its own splits: train 205 / val 87 / test 72 images,
RBC / WBC / Platelets. Every model: the offline ImageNet EfficientNet-Lite0 backbone (``tf_efficientnet_lite0.
in1k_offline``, strides 8/16/32), the same image size, epochs, batch size, learning rates and augmentation
(:class:`frugalvision.data.detection.DetectionDataset`: mosaic, affine, HSV, flip; mosaic off for the last epoch).

* ours (``frugalvision train --task detection``: PAN neck, decoupled anchor-free head, task-aligned assignment,
  varifocal + CIoU, EMA), sizes ``n`` and ``s``, plain or with RepConv + the auxiliary head (``rep+aux``);
* torchvision ``RetinaNet`` and ``FCOS`` over the same backbone with torchvision's ``FeaturePyramidNetwork``
  (P3-P5 plus P6/P7 from P5, 64 channels), trained by a plain AdamW loop on the same batches.

Test metrics: COCO mAP@[.5:.95] and AP50 (:func:`frugalvision.metrics.coco_evaluate`, pycocotools, original
pixels), after the models' own NMS (ours: :func:`~frugalvision.models.detection.postprocess`, score >= 0.001,
IoU 0.65, 300 boxes; torchvision's: score >= 0.001, 300 boxes).

Usage::

    python benchmarks/detection.py --epochs 1 --image-size 256          # smoke budget, a few minutes on 2 cores
    python benchmarks/detection.py --epochs 50 --image-size 416 --accelerator gpu   # the real budget on a GPU
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from frugalvision.data.detection import (
    DetectionAugment,
    DetectionDataset,
    boxes_to_original,
    collate_detection,
)
from frugalvision.discover import read_voc
from frugalvision.metrics import coco_evaluate
from frugalvision.models import create_backbone
from frugalvision.models.detection import postprocess
from frugalvision.train import fit, load_config

BCCD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bccd"
BACKBONE = "tf_efficientnet_lite0.in1k_offline"
DATA_SETS = ("bccd", "digits")


def data_root(args: argparse.Namespace) -> Path:
    """The PASCAL-VOC folder of ``--data``: BCCD, or the digits-on-CIFAR confirmation set of
    ``benchmarks/detection_sets.py`` (written once under ``--out``)."""
    if args.data == "digits":
        import detection_sets

        return detection_sets.digit_scenes(Path(args.out) / "digit-scenes")
    if not BCCD.is_dir():
        raise SystemExit(f"BCCD not found at {BCCD} (see ../shared/data/README.md)")
    return BCCD


def evaluate(predict: Any, dataset: DetectionDataset, batch_size: int = 8) -> tuple[float, float, float]:
    """Test ``(mAP, AP50, seconds)`` of ``predict(images) -> [dict(boxes, scores, labels)]`` (input pixels)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    preds, targets = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            for det, meta in zip(predict(batch.images), batch.metas, strict=True):
                boxes = boxes_to_original(det["boxes"].float(), meta["scale"], meta["pad"], meta["orig_size"])
                preds.append(
                    {"boxes": boxes.numpy(), "scores": det["scores"].numpy(), "labels": det["labels"].numpy()}
                )
                sample = dataset.dataset.samples[meta["index"]]
                targets.append({"boxes": np.asarray(sample.boxes), "labels": np.asarray(sample.box_labels)})
    seconds = time.perf_counter() - start
    result = coco_evaluate(preds, targets, dataset.classes)
    return result.map, result.ap50, seconds


def latency_ms(model: Any, size: int, runs: int = 20) -> float:
    """Median torch CPU latency (ms) at batch 1 on 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 1000 * float(np.median(times))


# ---------------------------------------------------------------------------------------------------- ours
def ours_dir(
    args: argparse.Namespace, size: str, rep_aux: bool, dfl_bins: int = 0, depthwise: bool = False
) -> Path:
    """The run folder of one of our variants (its bundle is ``<folder>/model``)."""
    suffix = ("-rep-aux" if rep_aux else "") + ("-dfl" if dfl_bins else "") + ("-dw" if depthwise else "")
    return Path(args.out) / f"ours-{size}{suffix}"


def run_ours(
    args: argparse.Namespace,
    size: str,
    rep_aux: bool,
    test: DetectionDataset,
    dfl_bins: int = 0,
    depthwise: bool = False,
) -> dict[str, Any]:
    out = ours_dir(args, size, rep_aux, dfl_bins, depthwise)
    overrides = [
        "task=detection",
        f"data.path={args.data_root}",
        f"out={out}",
        f"model.name={BACKBONE}",
        f"detection.size={size}",
        f"detection.image_size={args.image_size}",
        f"detection.repconv={str(rep_aux).lower()}",
        f"detection.aux_head={str(rep_aux).lower()}",
        f"detection.dfl_bins={dfl_bins}",
        f"detection.depthwise={str(depthwise).lower()}",
        "detection.close_mosaic=1",
        f"detection.multi_scale={args.multi_scale}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        f"optim.lr={args.lr}",
        f"trainer.epochs={args.epochs}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.patience=null",
        "trainer.progress=false",
    ]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    start = time.perf_counter()
    result = fit(load_config(None, overrides))
    seconds = time.perf_counter() - start
    model: Any = result.model.cpu().eval()  # a Detector (fit is annotated with the embedding result)
    test_map, ap50, _ = evaluate(lambda x: postprocess(*model(x)), test)
    fused = model.fuse()
    return {
        "model": f"ours {size}"
        + (" rep+aux" if rep_aux else "")
        + (f" dfl{dfl_bins}" if dfl_bins else "")
        + (" dw" if depthwise else ""),
        "params (M)": sum(p.numel() for p in fused.parameters()) / 1e6,
        "test mAP": test_map,
        "test AP50": ap50,
        "train s": seconds,
        "latency ms": latency_ms(fused, args.image_size),
    }


# ----------------------------------------------------------------------------------------------- torchvision
class _LiteFPN(nn.Module):
    """Lite0 features at strides 8/16/32 -> torchvision FPN (+ P6/P7) as an OrderedDict, ``out_channels``."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

        backbone: Any = create_backbone(BACKBONE, pretrained=True).model
        info: Any = backbone.feature_info
        self.indices = [max(i for i, f in enumerate(info) if f["reduction"] == r) for r in (8, 16, 32)]
        backbone.prune_intermediate_layers(self.indices, prune_head=True)
        self.body = backbone
        in_channels = [int(info[i]["num_chs"]) for i in self.indices]
        self.fpn = FeaturePyramidNetwork(
            in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels)
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        body: Any = self.body
        feats = body.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_peer(kind: str, num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = _LiteFPN()
    common = {
        "min_size": size,
        "max_size": size,
        "image_mean": [0.0, 0.0, 0.0],  # the data set already normalises
        "image_std": [1.0, 1.0, 1.0],
        "score_thresh": 0.001,
        "detections_per_img": 300,
    }
    if kind == "fcos":
        anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
        return FCOS(backbone, num_classes, anchor_generator=anchors, **common)
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, **common)


def run_peer(
    args: argparse.Namespace, kind: str, train: DetectionDataset, test: DetectionDataset
) -> dict[str, Any]:
    torch.manual_seed(0)
    model: Any = build_peer(kind, len(train.classes), args.image_size)
    backbone = list(model.backbone.body.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW(
        [{"params": backbone, "lr": args.lr}, {"params": rest, "lr": args.lr * 10}], weight_decay=0.05
    )
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        model.train()
        for batch in loader:
            if batch.images is None:
                continue
            losses = model(list(batch.images), [dict(t) for t in batch.targets])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    test_map, ap50, _ = evaluate(lambda x: model(list(x)), test)
    return {
        "model": f"torchvision {kind}",
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "test mAP": test_map,
        "test AP50": ap50,
        "train s": seconds,
        "latency ms": latency_ms(lambda x: model(list(x)), args.image_size),
    }


def print_table(rows: Sequence[dict[str, Any]], header: str) -> None:
    """A markdown table over every column any row has (``-`` where a row has none), then latency ratios to the
    first of our rows."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n{header}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = (r.get(k, "-") for k in keys)
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    ref = next((r for r in rows if r["model"].startswith("ours")), None)
    if ref and ref.get("latency ms", 0) > 0:
        for r in rows:
            if r is not ref and "latency ms" in r:
                print(f"latency {r['model']} / {ref['model']}: {r['latency ms'] / ref['latency ms']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sizes", nargs="+", default=["n"])
    parser.add_argument("--variants", nargs="+", default=["plain"], choices=["plain", "rep+aux"])
    parser.add_argument("--peers", nargs="*", default=["retinanet", "fcos"])
    parser.add_argument(
        "--multi-scale", type=float, default=0.0, help="detection.multi_scale of our detector"
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data", choices=DATA_SETS, default="bccd", help="BCCD, or digits on CIFAR scenes")
    parser.add_argument("--out", default="runs/bench-detection")
    args = parser.parse_args(argv)
    args.data_root = data_root(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    train_set, test_set = read_voc(args.data_root, "train"), read_voc(args.data_root, "test")
    data_config = create_backbone(BACKBONE, pretrained=False).data_config  # the backbone's normalisation
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    test = DetectionDataset(test_set, image_size=args.image_size, mean=mean, std=std)
    train = DetectionDataset(
        train_set,
        image_size=args.image_size,
        train=True,
        augment=DetectionAugment(close_mosaic_epoch=max(0, args.epochs - 1)),
        mean=mean,
        std=std,
    )
    rows = [
        run_ours(args, size, variant == "rep+aux", test) for size in args.sizes for variant in args.variants
    ]
    rows += [run_peer(args, kind, train, test) for kind in args.peers]
    print_table(
        rows,
        f"{args.data} test ({len(test_set)} images), {args.image_size} px, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"lr {args.lr} (heads x10), backbone {BACKBONE}; latency: torch CPU, batch 1, 2 threads (indicative)",
    )


if __name__ == "__main__":
    main()
