"""CPU latency of an exported detector (NMS inside the ONNX graph) against YOLOX-nano, ONNX Runtime, 416 px, batch 1.

Usage::

    pip install pixeltable-yolox      # Apache-2.0; benchmark-only (extra "bench-detection"), builds YOLOX-nano
    python benchmarks/detection_latency.py                     # 2 threads, fp32 (+ int8 with --int8)
    python benchmarks/detection_latency.py --threads 4 --seconds 3 --int8
    python benchmarks/detection_latency.py --variants depthwise    # only ours-n-dw against YOLOX-nano
    python benchmarks/detection_latency.py --trunks ghostnet_100 mobilenetv3_small_100   # lighter trunks too

Models (random weights: speed does not depend on them; the score biases start at the prior 0.01 as in YOLOX, so
the graphs hand their NMS a similar, small number of candidates); the table gives each one's parameters and FLOPs
split into trunk (backbone features) / neck / head, and the latency of its trunk alone:

* ``ours-n``: :class:`frugalvision.models.detection.Detector` of size n as ``frugalvision export`` ships it
  (``create_detector(DetectorConfig(num_classes=80, pretrained=False, dfl_bins=16))``, ``.eval().fuse()``): the offline
  EfficientNet-Lite0 trunk (strides 8/16/32), a PAN neck of CSP blocks (64/128/256 channels, one bottleneck per
  block) and the decoupled anchor-free head (64 channels, two 3x3 convolutions per branch; each box side a
  distribution over 16 bins, the training default).
* ``ours-n-dw``: the same with ``DetectorConfig(depthwise=True)``: every 3x3 convolution of the neck and head is
  depthwise-separable (depthwise 3x3 + pointwise 1x1), as in YOLOX-nano's neck and head.
* ``ours-n-dw/<trunk>`` (``--trunks``): ``ours-n-dw`` on another timm trunk (online weights for users; random
  here), to show how much of the gap to YOLOX-nano is the Lite0 trunk's (2.51 GFLOPs at 416 px against YOLOX-nano's
  1.05 for the whole model).
* ``YOLOX-nano``: ``pixeltable-yolox``'s ``YoloxNano`` config (depth 0.33, width 0.25, depthwise convolutions),
  its eval output ``(cx, cy, w, h, objectness, class probabilities)`` turned into the same contract (xyxy boxes,
  scores = objectness x class probability).

All are exported by :func:`frugalvision.deploy.export_detector` with the same NMS inside the graph (score > 0.25,
IoU 0.65, 300 detections, 80 classes), and timed the same way: :class:`frugalvision.runtime.Predictor` with
``threads`` intra-op threads, ``Predictor.run`` on a preprocessed ``(1, 3, 416, 416)`` batch (the graph alone), and
``Predictor.detect`` on a real 640x480 BCCD photo (decode + letterbox + graph + mapping back). The models are
measured in interleaved rounds (each a short window per round, the median of the per-call times reported) so that
background load on a shared machine hits all alike. Timings on a shared machine are indicative.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from frugalvision.deploy import export_detector, quantize_int8
from frugalvision.models.detection import Detector, DetectorConfig, create_detector
from frugalvision.runtime import Predictor

SIZE = 416
NUM_CLASSES = 80
BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "JPEGImages"


# --------------------------------------------------------------------------------------------------------- ours
def ours(depthwise: bool, backbone: str = DetectorConfig.backbone) -> nn.Module:
    """Our size-n detector as ``frugalvision train`` makes it and ``frugalvision export`` ships it: random weights,
    16 DFL bins per side (``detection.dfl_bins="auto"`` with the anchor-free head), fused (conv-BN folded)."""
    config = DetectorConfig(
        num_classes=NUM_CLASSES,
        pretrained=False,
        size="n",
        image_size=SIZE,
        depthwise=depthwise,
        backbone=backbone,
        dfl_bins=16,
    )
    return create_detector(config).eval().fuse()


# --------------------------------------------------------------------------------------------------- YOLOX-nano
class YoloxContract(nn.Module):
    """pixeltable-yolox's eval output ``(B, N, 5 + C)`` -> ``(xyxy boxes, objectness x class probability)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(x)
        centre, half = out[..., :2], out[..., 2:4] / 2
        return torch.cat([centre - half, centre + half], 2), out[..., 4:5] * out[..., 5:]


def yolox_nano() -> nn.Module:
    try:
        from yolox.config import YoloxNano
    except ImportError:
        sys.exit("YOLOX-nano needs the pixeltable-yolox package (Apache-2.0): pip install pixeltable-yolox")
    model = YoloxNano().get_model()  # random init, biases at the 0.01 prior
    return YoloxContract(model).eval()


# ------------------------------------------------------------------------------------------------------ measure
def breakdown(model: nn.Module) -> dict[str, tuple[float, float]]:
    """``{trunk, neck, head, total: (parameters in millions, GFLOPs)}`` of one 416 px image (multiply-add = 2
    FLOPs, torch.utils.flop_counter). The head includes the box decoding; the trunk is the rest (the backbone
    features: EfficientNet-Lite0's for ours, YOLOX's CSPDarknet)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, SIZE, SIZE))
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    if isinstance(model, Detector):
        neck = (count(model.neck), flops["Detector.neck"])
        head = (count(model.head), flops["Detector.head"])
    else:  # YoloxContract: module.backbone is YOLOPAFPN (trunk .backbone + PAN), module.head the YOLOX head
        pafpn, key = model.module.backbone, "YoloxContract.module.backbone"  # type: ignore[union-attr]
        neck = (count(pafpn) - count(pafpn.backbone), flops[key] - flops[key + ".backbone"])  # type: ignore[arg-type]
        head = (count(model.module.head), flops["YoloxContract.module.head"])  # type: ignore[union-attr, arg-type]
    total = (count(model), counter.get_total_flops())
    trunk = (total[0] - neck[0] - head[0], total[1] - neck[1] - head[1])
    parts = {"trunk": trunk, "neck": neck, "head": head, "total": total}
    return {k: (n / 1e6, f / 1e9) for k, (n, f) in parts.items()}


class Trunk(nn.Module):
    """The backbone features alone (``(C3, C4, C5)``), to time the part of the latency the neck and head cannot
    change."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, Detector):
            return tuple(self.model.features(x))
        return tuple(self.model.module.backbone.backbone(x).values())  # type: ignore[union-attr, operator]


def trunk_session(model: nn.Module, path: Path, threads: int) -> Any:
    """ONNX Runtime session of :class:`Trunk` (TorchScript exporter, opset 18, constant folding)."""
    import onnxruntime as ort

    torch.onnx.export(Trunk(model).eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False,
                      opset_version=18, input_names=["images"], do_constant_folding=True)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_ms(calls: dict[str, Any], seconds: float, rounds: int) -> dict[str, float]:
    """Median per-call milliseconds of each callable, measured in ``rounds`` interleaved windows."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            end = time.perf_counter() + seconds / rounds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def nms_alone_ms(threads: int, seconds: float, rounds: int) -> dict[str, float]:
    """Milliseconds of the appended NMS part alone (N = 3549 boxes of 416 px, 80 classes), with the 0.01-prior
    scores of an untrained model (no candidate) and with 300 (box, class) pairs over the 0.25 threshold."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from frugalvision.deploy.detection import add_nms_to_graph

    graph = helper.make_graph(
        [helper.make_node("Identity", ["b"], ["raw_boxes"]), helper.make_node("Identity", ["s"], ["raw_scores"])],
        "nms",
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, "n", 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, "n", "c"])],
        [helper.make_tensor_value_info("raw_boxes", TensorProto.FLOAT, [1, "n", 4]),
         helper.make_tensor_value_info("raw_scores", TensorProto.FLOAT, [1, "n", "c"])],
    )  # fmt: skip
    model = add_nms_to_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
                             score_threshold=0.25, iou_threshold=0.65, max_detections=300)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    n = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    xy = rng.uniform(0, SIZE, (1, n, 2))
    wh = rng.uniform(8, 120, (1, n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 2).astype(np.float32)
    prior = rng.uniform(0.005, 0.02, (1, n, NUM_CLASSES)).astype(np.float32)
    busy = prior.copy()
    busy.reshape(-1)[rng.choice(n * NUM_CLASSES, 300, replace=False)] = rng.uniform(0.3, 1.0, 300)
    return interleaved_ms(
        {"no candidate": lambda: session.run(None, {"b": boxes, "s": prior}),
         "300 candidates": lambda: session.run(None, {"b": boxes, "s": busy})},
        seconds, rounds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per model and engine")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--int8", action="store_true", help="also int8 (calibrated on 32 BCCD photos)")
    parser.add_argument(
        "--variants", nargs="+", default=["plain", "depthwise"], choices=["plain", "depthwise"],
        help="our n model as it is (plain) and with DetectorConfig.depthwise",
    )  # fmt: skip
    parser.add_argument(
        "--trunks", nargs="*", default=[], metavar="TIMM_NAME",
        help="also our n model (depthwise) on these timm trunks, e.g. ghostnet_100 mobilenetv3_small_100: how much "
             "of the gap to YOLOX-nano is the Lite0 trunk's",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    models: dict[str, nn.Module] = {}
    for variant in args.variants:
        models["ours-n" if variant == "plain" else "ours-n-dw"] = ours(variant == "depthwise")
    for trunk in args.trunks:
        models[f"ours-n-dw/{trunk.split('.')[0]}"] = ours(True, trunk)
    models["YOLOX-nano"] = yolox_nano()
    photos = sorted(BCCD.glob("*.jpg")) if BCCD.is_dir() else []
    if not photos:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(40)]
        print(f"note: {BCCD} not found; random 640x480 images instead")
    photo = photos[0]

    predictors: dict[str, Predictor] = {}
    trunks: dict[str, Any] = {}
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            stats[name] = breakdown(model)
            folder = Path(tmp) / name
            t0 = time.perf_counter()
            export_detector(model, folder, image_size=SIZE, mean=mean, std=std,
                            classes=[f"c{i}" for i in range(NUM_CLASSES)], score_threshold=0.25, iou_threshold=0.65)  # fmt: skip
            print(f"exported {name} in {time.perf_counter() - t0:.1f} s")
            predictors[f"{name} fp32"] = Predictor(folder, threads=args.threads)
            if args.int8:
                quantize_int8(folder, photos[1:41], max_images=32, check_images=8)
                predictors[f"{name} int8"] = Predictor(folder, precision="int8", threads=args.threads)
            if name != "ours-n-dw" or "ours-n" not in models:  # the same trunk as ours-n: timed once
                trunks[name] = trunk_session(model, Path(tmp) / f"{name}-trunk.onnx", args.threads)
        batch = next(iter(predictors.values())).preprocess([photo])
        calls = {k: (lambda p=p: p.run(batch)) for k, p in predictors.items()}
        calls.update({f"{k} trunk": (lambda t=t: t.run(None, {"images": batch})) for k, t in trunks.items()})
        graph = interleaved_ms(calls, args.seconds, args.rounds)
        whole = interleaved_ms(
            {k: (lambda p=p: p.detect([photo])) for k, p in predictors.items()}, args.seconds, args.rounds
        )
        found = {k: len(p.detect([photo])[0]) for k, p in predictors.items()}

    cpu = platform.processor() or platform.machine()
    print(f"\nONNX Runtime CPU latency, {SIZE} px, batch 1, {args.threads} threads, NMS inside the graph "
          f"({NUM_CLASSES} classes), {cpu}, {os.cpu_count()} logical CPUs; median of {args.rounds} interleaved rounds")  # fmt: skip
    ref = {prec: graph[f"YOLOX-nano {prec}"] for prec in ("fp32", "int8") if f"YOLOX-nano {prec}" in graph}
    print(
        f"| {'model':<32} | params M trunk/neck/head = total | GFLOPs trunk/neck/head = total | trunk ms | "
        "graph ms | x YOLOX-nano | detect() ms | detections |"
    )
    print(f"|{'-' * 34}|---------------------------------:|-------------------------------:|---------:|---------:|"
          "-------------:|------------:|-----------:|")  # fmt: skip
    for key in predictors:
        name, prec = key.rsplit(" ", 1)
        parts = stats[name]
        params = "{:.2f} / {:.2f} / {:.2f} = {:.2f}".format(
            *(parts[p][0] for p in ("trunk", "neck", "head", "total"))
        )
        gflops = "{:.2f} / {:.2f} / {:.2f} = {:.2f}".format(
            *(parts[p][1] for p in ("trunk", "neck", "head", "total"))
        )
        trunk_key = f"{name} trunk" if f"{name} trunk" in graph else "ours-n trunk"
        trunk = f"{graph[trunk_key]:8.1f}" if prec == "fp32" else f"{'':8}"
        ratio = graph[key] / ref[prec] if prec in ref else float("nan")
        print(f"| {key:<32} | {params:>32} | {gflops:>30} | {trunk} | {graph[key]:8.1f} | {ratio:12.2f} | "
              f"{whole[key]:11.1f} | {found[key]:10d} |")  # fmt: skip
    nms = nms_alone_ms(args.threads, args.seconds / 2, args.rounds)
    print(
        f"\nNMS part alone (3549 boxes x {NUM_CLASSES} classes): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in nms.items())
    )
    print("\ngraph ms: Predictor.run on a preprocessed batch (network + NMS); trunk ms: the backbone features alone "
          "(fp32, ONNX Runtime, same threads; ours-n-dw shares ours-n's trunk); detect() ms: decode + letterbox of a "
          "640x480 JPEG + graph + boxes to original pixels. Target (issue 14): ours-n within 1.5x of YOLOX-nano.")  # fmt: skip


if __name__ == "__main__":
    main()
