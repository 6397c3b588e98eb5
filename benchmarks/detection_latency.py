"""CPU latency of an exported detector (NMS inside the ONNX graph) against YOLOX-nano, ONNX Runtime, 416 px, batch 1.

Usage::

    pip install pixeltable-yolox      # Apache-2.0; benchmark-only (extra "bench-detection"), builds YOLOX-nano
    python benchmarks/detection_latency.py                     # 2 threads, fp32 (+ int8 with --int8)
    python benchmarks/detection_latency.py --threads 4 --seconds 3 --int8

Models (random weights: speed does not depend on them; the score biases start at the prior 0.01 as in YOLOX, so
both graphs hand their NMS a similar, small number of candidates):

* ``ours-n (stand-in)``: the n size intended by issue 14 -- the EfficientNet-Lite0 trunk (timm ``features_only``,
  strides 8/16/32), a PAN neck of CSP blocks (width 0.25 -> 64/128/256 channels, depth 0.33 -> one bottleneck per
  block) and a decoupled anchor-free head (64 channels, two 3x3 convolutions per branch), decoded to the contract's
  ``(boxes (B, N, 4), scores (B, N, C))``. A STAND-IN written here: the real ``frugalvision.models.detection.Detector``
  was not merged when this benchmark was written; once it is, put it in place of ``StandInN()`` in ``main``
  (``Detector(...).eval()``, ``fuse()`` first).
* ``YOLOX-nano``: ``pixeltable-yolox``'s ``YoloxNano`` config (depth 0.33, width 0.25, depthwise convolutions),
  its eval output ``(cx, cy, w, h, objectness, class probabilities)`` turned into the same contract (xyxy boxes,
  scores = objectness x class probability).

Both are exported by :func:`frugalvision.deploy.export_detector` with the same NMS inside the graph (score > 0.25,
IoU 0.65, 300 detections, 80 classes), and timed the same way: :class:`frugalvision.runtime.Predictor` with
``threads`` intra-op threads, ``Predictor.run`` on a preprocessed ``(1, 3, 416, 416)`` batch (the graph alone), and
``Predictor.detect`` on a real 640x480 BCCD photo (decode + letterbox + graph + mapping back). The two models are
measured in interleaved rounds (each a short window per round, the median of the per-call times reported) so that
background load on a shared machine hits both alike. Timings on a shared machine are indicative.
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
from frugalvision.runtime import Predictor

SIZE = 416
NUM_CLASSES = 80
BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "JPEGImages"
PRIOR_BIAS = -float(np.log((1 - 0.01) / 0.01))  # sigmoid(bias) = 0.01, YOLOX's initialize_biases(1e-2)


# ------------------------------------------------------------------------------------------------ ours (stand-in)
def _conv(c_in: int, c_out: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class _CSP(nn.Module):
    """CSP block: two 1x1 branches, ``depth`` residual bottlenecks (1x1 -> 3x3) on one, concatenated, 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1) -> None:
        super().__init__()
        hidden = c_out // 2
        self.a, self.b = _conv(c_in, hidden), _conv(c_in, hidden)
        self.blocks = nn.Sequential(
            *(nn.Sequential(_conv(hidden, hidden), _conv(hidden, hidden, 3)) for _ in range(depth))
        )
        self.fuse = _conv(2 * hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        for block in self.blocks:
            a = a + block(a)
        return self.fuse(torch.cat([a, self.b(x)], dim=1))


class StandInN(nn.Module):
    """Lite0 trunk + PAN of CSP blocks + decoupled anchor-free head, eval output per the detection contract."""

    def __init__(
        self, num_classes: int = NUM_CLASSES, width: tuple[int, int, int] = (64, 128, 256), head: int = 64
    ) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3, 4)
        )
        c3, c4, c5 = self.trunk.feature_info.channels()
        w3, w4, w5 = width
        self.lat5, self.lat4 = _conv(c5, w5), _conv(c4, w4)
        self.top4 = _CSP(w4 + w5, w4)  # top-down
        self.red4 = _conv(w4, w3)
        self.top3 = _CSP(c3 + w3, w3)
        self.down3 = _conv(w3, w3, 3, 2)  # bottom-up
        self.bot4 = _CSP(w3 + w3, w4)
        self.down4 = _conv(w4, w4, 3, 2)
        self.bot5 = _CSP(w4 + w5, w5)
        self.stems = nn.ModuleList(_conv(c, head) for c in width)
        self.cls = nn.ModuleList(nn.Sequential(_conv(head, head, 3), _conv(head, head, 3)) for _ in width)
        self.reg = nn.ModuleList(nn.Sequential(_conv(head, head, 3), _conv(head, head, 3)) for _ in width)
        self.cls_out = nn.ModuleList(nn.Conv2d(head, num_classes, 1) for _ in width)
        self.box_out = nn.ModuleList(nn.Conv2d(head, 4, 1) for _ in width)
        for conv in self.cls_out:
            nn.init.constant_(conv.bias, PRIOR_BIAS)
        self.strides = (8, 16, 32)
        self.num_classes, self.image_size = num_classes, SIZE

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f3, f4, f5 = self.trunk(x)
        p5 = self.lat5(f5)
        up = nn.functional.interpolate
        p4 = self.top4(torch.cat([self.lat4(f4), up(p5, scale_factor=2.0)], 1))
        p3 = self.top3(torch.cat([f3, up(self.red4(p4), scale_factor=2.0)], 1))
        n4 = self.bot4(torch.cat([self.down3(p3), self.red4(p4)], 1))
        n5 = self.bot5(torch.cat([self.down4(n4), p5], 1))
        boxes, scores = [], []
        for i, (feat, stride) in enumerate(zip((p3, n4, n5), self.strides, strict=True)):
            s = self.stems[i](feat)
            logits = self.cls_out[i](self.cls[i](s)).flatten(2).transpose(1, 2)
            reg = self.box_out[i](self.reg[i](s)).flatten(2).transpose(1, 2)
            h, w = feat.shape[2:]
            gy, gx = torch.meshgrid(
                torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
            )
            grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
            centre = (grid + reg[..., :2]) * stride
            half = torch.exp(reg[..., 2:].clamp(max=8.0)) * stride / 2
            boxes.append(torch.cat([centre - half, centre + half], 2))
            scores.append(torch.sigmoid(logits))
        return torch.cat(boxes, 1), torch.cat(scores, 1)


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
def model_stats(model: nn.Module) -> tuple[float, float]:
    """Parameters (millions) and GFLOPs of one 416 px image (multiply-add = 2 FLOPs)."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, SIZE, SIZE))
    return params, counter.get_total_flops() / 1e9


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
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    ours, ours_name = StandInN().eval(), "ours-n (stand-in)"
    models = {ours_name: ours, "YOLOX-nano": yolox_nano()}
    photos = sorted(BCCD.glob("*.jpg")) if BCCD.is_dir() else []
    if not photos:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(40)]
        print(f"note: {BCCD} not found; random 640x480 images instead")
    photo = photos[0]

    predictors: dict[str, Predictor] = {}
    stats: dict[str, tuple[float, float]] = {}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            stats[name] = model_stats(model)
            folder = Path(tmp) / name.split()[0]
            t0 = time.perf_counter()
            export_detector(model, folder, image_size=SIZE, mean=mean, std=std,
                            classes=[f"c{i}" for i in range(NUM_CLASSES)], score_threshold=0.25, iou_threshold=0.65)  # fmt: skip
            print(f"exported {name} in {time.perf_counter() - t0:.1f} s")
            predictors[f"{name} fp32"] = Predictor(folder, threads=args.threads)
            if args.int8:
                quantize_int8(folder, photos[1:41], max_images=32, check_images=8)
                predictors[f"{name} int8"] = Predictor(folder, precision="int8", threads=args.threads)
        batch = next(iter(predictors.values())).preprocess([photo])
        graph = interleaved_ms(
            {k: (lambda p=p: p.run(batch)) for k, p in predictors.items()}, args.seconds, args.rounds
        )
        whole = interleaved_ms(
            {k: (lambda p=p: p.detect([photo])) for k, p in predictors.items()}, args.seconds, args.rounds
        )
        found = {k: len(p.detect([photo])[0]) for k, p in predictors.items()}

    cpu = platform.processor() or platform.machine()
    print(f"\nONNX Runtime CPU latency, {SIZE} px, batch 1, {args.threads} threads, NMS inside the graph "
          f"({NUM_CLASSES} classes), {cpu}, {os.cpu_count()} logical CPUs; median of {args.rounds} interleaved rounds")  # fmt: skip
    ref = {prec: graph[f"YOLOX-nano {prec}"] for prec in ("fp32", "int8") if f"YOLOX-nano {prec}" in graph}
    print(f"| {'model':<28} | params (M) | GFLOPs | graph ms | x YOLOX-nano | detect() ms | detections |")
    print(f"|{'-' * 30}|-----------:|-------:|---------:|-------------:|------------:|-----------:|")
    for key in predictors:
        name, prec = key.rsplit(" ", 1)
        params, gflops = stats[name]
        ratio = graph[key] / ref[prec] if prec in ref else float("nan")
        print(f"| {key:<28} | {params:10.2f} | {gflops:6.2f} | {graph[key]:8.1f} | {ratio:12.2f} | {whole[key]:11.1f} | "
              f"{found[key]:10d} |")  # fmt: skip
    nms = nms_alone_ms(args.threads, args.seconds / 2, args.rounds)
    print(
        f"\nNMS part alone (3549 boxes x {NUM_CLASSES} classes): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in nms.items())
    )
    print("\ngraph ms: Predictor.run on a preprocessed batch (network + NMS); detect() ms: decode + letterbox of a "
          "640x480 JPEG + graph + boxes to original pixels. Target (issue 14): ours-n within 1.5x of YOLOX-nano.")  # fmt: skip


if __name__ == "__main__":
    main()
