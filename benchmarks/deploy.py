"""CPU inference speed: PyTorch eager against ONNX Runtime fp32 / int8 (and bf16), plus int8's accuracy cost.

Usage::

    python benchmarks/deploy.py                          # all three models, speed + int8 accuracy check
    python benchmarks/deploy.py --models lite0 --seconds 1 --skip-accuracy

Part 1 (speed). For EfficientNet-Lite0 (real offline weights), ResNet-50, ViT-S/16 and the hybrid CoAtNet-nano
(random init: speed does not depend on the weights), at batch 1 and 32, images per second of the model alone
(preprocessed input, no decoding):

* ``torch eager``: ``model(x)`` under ``torch.inference_mode``, ``torch.set_num_threads(threads)``;
* ``torch eager CL``: the same with the model and input in channels-last memory format (CNNs);
* ``torch bf16``: ``torch.autocast("cpu", torch.bfloat16)`` (oneDNN uses AVX-512 BF16 where the CPU has it);
* ``ORT fp32`` / ``ORT int8``: :class:`frugalvision.runtime.Predictor` on the exported deploy bundle (int8:
  static QDQ quantisation calibrated on 64 images); ``ORT bf16``: reported as not available on x86 (ONNX Runtime's
  CPU execution provider has no bf16 Conv/MatMul kernels there; its bf16 fast-math GEMMs are ARM64-only);
* for transformer graphs (ViT, CoAtNet), what ``frugalvision export`` adds: ``ORT fp32-fused`` (ONNX Runtime's
  transformer fusions) and ``ORT int8-dynamic`` (int8 matrix products, activations quantised per batch), and the
  model ``export`` would choose here (:func:`frugalvision.deploy.choose_model`);
* for plain ViTs, Token Merging (:func:`frugalvision.deploy.add_tome`, ``--tome-r`` tokens merged per block):
  ``torch ToMe`` (eager), ``ORT tome`` (fp32) and ``ORT tome-int8-dynamic``, also candidates of that choice.

The engines of one cell are measured in interleaved rounds (each engine a short window per round, the median
rate reported), so that background load on a shared machine hits them alike. torch and ONNX Runtime run in two
worker processes that compute only when asked: thread pools of both frameworks in one process slow each other down
(measured: torch eager Lite0 at batch 1 falls from ~100 to ~60-70 images/s once ONNX Runtime sessions exist), and
ONNX Runtime's threads do not spin between calls (``spin=False``; slightly slower for it, fairer to torch). Each row gives the ratio to ``torch eager`` measured in the same run, and the achieved GFLOP/s (FLOPs of one
image counted once with ``torch.utils.flop_counter.FlopCounterMode``, multiply-add = 2 FLOPs) as a share of the
fp32 peak: a 2048 x 2048 fp32 matrix product in ONNX Runtime (its MLAS GEMM, the fastest of numpy, torch and ORT
here), measured with the same threads in the same interleaved rounds as the cell, and for int8 rows also as a share
of the int8 peak: a 2048 x 2048 uint8 x int8 ``MatMulInteger`` in ONNX Runtime, measured alongside. int8 and bf16
arithmetic is faster than fp32, so those rows can exceed 100% of the fp32 peak.

Part 2 (accuracy, Lite0 with real weights): Recall@1 and MAP@R of fp32 and int8 embeddings of 25 Caltech-101 classes
held out of calibration (``../shared/data/caltech101-dev``; calibration uses 200 images of the other 26 classes).

Part 3 (ToMe accuracy, with ``--vit-student BUNDLE --vit-heldout DIR``): a trained ViT embedding bundle (e.g. the
offline Lite0 distilled into a ViT-Tiny with ``frugalvision distill``) exported once, then Recall@1 / MAP@R of fp32,
int8-dynamic and ToMe (fp32 and int8-dynamic) at each ``--tome-accuracy-r`` on the held-out classes, with speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from frugalvision.deploy import (
    add_dynamic_int8,
    add_fused,
    add_tome,
    choose_model,
    compare_precisions,
    default_tome_r,
    export_bundle,
    export_onnx,
    is_transformer_graph,
    list_images,
    quantize_int8,
    tome_support,
)
from frugalvision.models import create_backbone
from frugalvision.models.tome import apply_tome
from frugalvision.runtime import Predictor, bf16_fastmath_available

MATMUL_N = 2048
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "caltech101-dev"
MODELS = {
    "lite0": ("EfficientNet-Lite0", "tf_efficientnet_lite0.in1k_offline", True),
    "resnet50": ("ResNet-50", "resnet50", False),
    "vits16": ("ViT-S/16", "vit_small_patch16_224", False),
    "coatnet": ("CoAtNet-nano", "coatnet_nano_rw_224", False),  # a hybrid: conv stages, then attention
}


def _rate(
    fn: Callable[[], object], batch: int, seconds: float, min_calls: int = 2, warmup: bool = True
) -> float:
    """Images/s of ``fn`` (one call = ``batch`` images): a warm-up call, then calls for ``seconds`` (at least
    ``min_calls``)."""
    if warmup:
        fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def matmul_peak(threads: int, n: int = 2048, windows: int = 5, seconds: float = 0.3) -> tuple[float, str]:
    """GFLOP/s of an ``n x n`` fp32 matrix product in numpy, torch and ONNX Runtime: the best of ``windows`` short runs (on a
    shared machine the best window is the closest to what the cores can do)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    session = _ort_matmul(n, threads)
    feeds = {"a": a, "b": b}
    results = {
        "numpy": max(_rate(lambda: a @ b, 1, seconds) for _ in range(windows)) * flops / 1e9,
        "torch": max(_rate(lambda: ta @ tb, 1, seconds) for _ in range(windows)) * flops / 1e9,
        "onnxruntime": max(_rate(lambda: session.run(None, feeds), 1, seconds) for _ in range(windows))
        * flops
        / 1e9,
    }
    best = max(results, key=lambda k: results[k])
    return results[
        best
    ], f"{best} {n}x{n} fp32 matmul ({', '.join(f'{k} {v:.0f}' for k, v in results.items())})"


def _ort_matmul(n: int, threads: int) -> Any:
    """An ONNX Runtime session computing one ``(n, n) @ (n, n)`` fp32 product (its MLAS GEMM)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_matmul_int8(n: int, threads: int) -> Any:
    """An ONNX Runtime session computing one ``(n, n) @ (n, n)`` uint8 x int8 -> int32 product (``MatMulInteger``,
    the kernel of dynamic int8 models): the low-precision peak."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "matmul_int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def flops_per_image(model: torch.nn.Module, size: tuple[int, int, int]) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, *size))
    return float(counter.get_total_flops())


def _calibration_images(count: int) -> list:
    if SHARED.exists():
        classes = sorted(d for d in SHARED.iterdir() if d.is_dir())[:26]
        per = max(1, -(-count // len(classes)))
        return [p for d in classes for p in sorted(d.glob("*.jpg"))[:per]][:count]
    import skimage.data as data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        p = photos[i % 4]
        y, x = rng.integers(0, min(p.shape[:2]) - 200, 2)
        out.append(np.ascontiguousarray(p[y : y + 200, x : x + 200]))
    return out


def _torch_engines(
    name: str,
    pretrained: bool,
    size: tuple[int, ...],
    batch: int,
    tome_r: int | None = None,
    with_bf16: bool = True,
) -> dict[str, Callable[[], object]]:
    backbone = create_backbone(name, pretrained=pretrained).eval()
    x = torch.randn(batch, *size)
    engines: dict[str, Callable[[], object]] = {"torch eager": lambda: backbone(x)}
    if tome_r is not None:
        tome = apply_tome(backbone, tome_r).eval()
        engines["torch ToMe"] = lambda: tome(x)
    fast = backbone
    if not name.startswith(("vit", "coatnet")):
        fast = create_backbone(name, pretrained=pretrained).eval().to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        engines["torch eager CL"] = lambda: fast(x_cl)
    x_fast = x if fast is backbone else x.contiguous(memory_format=torch.channels_last)

    def bf16() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fast(x_fast)

    if with_bf16:
        engines["torch bf16"] = bf16
    return engines


def _ort_engines(
    folder: Path, size: tuple[int, ...], batch: int, threads: int
) -> dict[str, Callable[[], object]]:
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    engines: dict[str, Callable[[], object]] = {}
    for precision in json.loads((folder / "deploy.json").read_text())["models"]:
        if precision == "bf16":
            continue
        p = Predictor(folder, precision=precision, threads=threads, spin=False)
        engines[f"ORT {precision}"] = lambda p=p: p.run(x)
    session = _ort_matmul(MATMUL_N, threads)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32) for k in "ab"}
    engines["fp32 matmul"] = lambda: session.run(None, feeds)
    session8 = _ort_matmul_int8(MATMUL_N, threads)
    feeds8 = {"a": rng.integers(0, 255, (MATMUL_N, MATMUL_N), dtype=np.uint8),
              "b": rng.integers(-127, 127, (MATMUL_N, MATMUL_N), dtype=np.int8)}  # fmt: skip
    engines["int8 matmul"] = lambda: session8.run(None, feeds8)
    return engines


def _worker(conn: Connection, kind: str, spec: dict) -> None:
    """A process holding one framework's engines; it computes only when asked, so the idle framework's thread
    pool never competes with the one being measured."""
    torch.set_num_threads(spec["threads"])
    with torch.inference_mode():
        if kind == "torch":
            engines = _torch_engines(
                spec["name"],
                spec["pretrained"],
                spec["size"],
                spec["batch"],
                spec.get("tome_r"),
                spec["bf16"],
            )
        else:
            engines = _ort_engines(Path(spec["folder"]), spec["size"], spec["batch"], spec["threads"])
        for fn in engines.values():
            fn()  # warm-up
        conn.send(list(engines))
        while (msg := conn.recv()) is not None:
            engine, seconds = msg
            conn.send(_rate(engines[engine], spec["batch"], seconds, min_calls=1, warmup=False))


def bench_model(
    key: str,
    threads: int,
    seconds: float,
    rounds: int,
    tmp: Path,
    tome_r: int | None = None,
    bf16: bool = True,
    static_int8: bool = True,
    choice: bool = True,
) -> list[dict]:
    label, name, pretrained = MODELS[key]
    backbone = create_backbone(name, pretrained=pretrained).eval()
    size = tuple(int(s) for s in backbone.data_config["input_size"])
    flops = flops_per_image(backbone, size)  # type: ignore[arg-type]
    tome_flops = flops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_onnx(backbone, tmp / key, data_config=backbone.data_config)
    if static_int8:
        quantize_int8(tmp / key, _calibration_images(64), max_images=64, check_images=0)
    chosen = None
    tome_r_used = None
    if is_transformer_graph(tmp / key / "model.onnx"):  # what `frugalvision export` adds for transformers
        add_fused(tmp / key)
        add_dynamic_int8(tmp / key)
        if tome_support(backbone) is None:  # Token Merging, for plain ViTs
            tome_r_used = default_tome_r(backbone) if tome_r is None else tome_r
            add_tome(tmp / key, backbone, r=tome_r_used)
            tome_flops = flops_per_image(apply_tome(backbone, tome_r_used), size)  # type: ignore[arg-type]
            tokens = json.loads((tmp / key / "deploy.json").read_text())["models"]["tome"][
                "tokens_after_block"
            ]
            print(
                f"|   (ToMe r={tome_r_used}: tokens after each block {tokens}; {tome_flops / 1e9:.2f} GFLOP/image "
                f"counted with the attention products, {flops / 1e9:.2f} without ToMe) | | | | | | | |",
                flush=True,
            )
        if choice:
            chosen = choose_model(
                tmp / key, check_images=_calibration_images(32), threads=threads, seconds=1.0
            )
    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    for batch in (1, 32):
        spec = {"name": name, "pretrained": pretrained, "size": size, "batch": batch, "threads": threads,
                "folder": str(tmp / key), "tome_r": tome_r_used, "bf16": bf16}  # fmt: skip
        workers, owner = [], {}
        try:
            for kind in ("torch", "ort"):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, kind, spec), daemon=True)
                proc.start()
                workers.append((proc, parent))
                for engine in parent.recv():
                    owner[engine] = parent
            # interleaved rounds: every engine sees the same background load (the machine may be shared)
            samples: dict[str, list[float]] = {engine: [] for engine in owner}
            # each round starts at another engine, so a load that rises or falls during a round favours none
            order = list(owner)
            for k in range(rounds):
                start = k * len(order) // rounds
                for engine in order[start:] + order[:start]:
                    owner[engine].send((engine, seconds / rounds))
                    samples[engine].append(owner[engine].recv())
        finally:
            for proc, conn in workers:
                conn.send(None)
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        rate = {engine: float(np.median(v)) for engine, v in samples.items()}
        peak = rate.pop("fp32 matmul") * 2 * MATMUL_N**3 / 1e9 / batch
        peak8 = rate.pop("int8 matmul") * 2 * MATMUL_N**3 / 1e9 / batch
        print(f"|   (matmul peaks measured alongside: fp32 {peak:.0f}, int8 {peak8:.0f} GOP/s) | | | | | | | |",
              flush=True)  # fmt: skip
        for engine, r in rate.items():
            gflops = r * flops / 1e9
            low = "int8" in engine
            if "ToMe" in engine or "tome" in engine:  # fewer FLOPs: the share of the peak uses the ToMe count
                gflops = r * tome_flops / 1e9
            rows.append({"model": label, "batch": batch, "engine": engine, "img/s": r,
                         "x eager": r / rate["torch eager"], "GFLOP/s": gflops, "% peak": 100 * gflops / peak,
                         "% low peak": 100 * gflops / peak8 if low else None})  # fmt: skip
            print(_fmt(rows[-1]), flush=True)
        note = (
            "n/a: no bf16 kernels in ORT's CPU EP on x86" if not bf16_fastmath_available() else "not measured"
        )
        rows.append({"model": label, "batch": batch, "engine": "ORT bf16", "note": note})
        print(_fmt(rows[-1]), flush=True)
    print(f"  ({label}: {flops / 1e9:.2f} GFLOP/image, export {result.exporter}, parity min cos "
          f"{result.parity['min_cosine']:.7f})", flush=True)  # fmt: skip
    if chosen is not None:
        print(f"  (export's choice on this machine: {chosen.precision}; measured "
              + "; ".join(f"{r['precision']} {r['score']:.1f} img/s geo-mean, cos {r['mean_cosine']:.4f}"
                          f"{'' if r['within_budget'] else ' (over budget)'}" for r in chosen.rows) + ")",
              flush=True)  # fmt: skip
    return rows


def _fmt(row: dict) -> str:
    if "note" in row:
        return f"| {row['model']:<18} | {row['batch']:>5} | {row['engine']:<14} | {row['note']} |"
    return (
        f"| {row['model']:<18} | {row['batch']:>5} | {row['engine']:<14} | {row['img/s']:>8.1f} | "
        f"{row['x eager']:>6.2f}x | {row['GFLOP/s']:>7.1f} | {row['% peak']:>5.1f}% | "
        + (f"{row['% low peak']:>5.1f}% |" if row.get("% low peak") is not None else "- |")
    )


def accuracy(threads: int, max_per_class: int, tmp: Path) -> None:
    if not SHARED.exists():
        print(f"\nint8 accuracy check skipped: {SHARED} absent")
        return
    classes = sorted(d for d in SHARED.iterdir() if d.is_dir())
    held_out = tmp / "heldout"
    for d in classes[26:]:
        (held_out / d.name).mkdir(parents=True)
        for p in sorted(d.glob("*.jpg"))[:max_per_class]:
            (held_out / d.name / p.name).symlink_to(p)
    calib = [p for d in classes[:26] for p in sorted(d.glob("*.jpg"))[:8]][:200]
    bb = create_backbone(MODELS["lite0"][1])
    from frugalvision.deploy.export import _L2Normalized

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(_L2Normalized(bb), tmp / "lite0-acc", data_config=bb.data_config, normalization="l2")
    q = quantize_int8(tmp / "lite0-acc", calib, max_images=len(calib), check_images=0)
    rows = compare_precisions(tmp / "lite0-acc", held_out, threads=threads, speed_seconds=0)
    n = rows[0]["images"]
    print(f"\nint8 accuracy, EfficientNet-Lite0 (ImageNet weights, no training), {n} images of {len(classes) - 26} "
          f"held-out Caltech-101 classes; calibration: {q.record['calibration_images']} images of the other 26")  # fmt: skip
    print("| precision | Recall@1 | MAP@R | min / mean cosine vs fp32 |\n|---|---|---|---|")
    for r in rows:
        cos = (
            f"{r['min_cosine_vs_first']:.4f} / {r['mean_cosine_vs_first']:.4f}"
            if "min_cosine_vs_first" in r
            else "-"
        )
        print(f"| {r['precision']} | {r['recall@1']:.4f} | {r['map@r']:.4f} | {cos} |")
    print(f"Recall@1 change int8 - fp32: {100 * (rows[1]['recall@1'] - rows[0]['recall@1']):+.2f} points")


def tome_accuracy(student: Path, heldout: Path, rs: list[int], threads: int, speed: float, tmp: Path) -> None:
    """Recall@1 / MAP@R of a trained ViT embedding bundle's fp32, int8-dynamic and ToMe models (each ``r``) on
    held-out classes, with ONNX Runtime speed (``speed`` seconds per batch size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_bundle(student, tmp / "vit-acc")
    folder = result.folder
    add_fused(folder)
    add_dynamic_int8(folder)
    rows = compare_precisions(folder, heldout, precisions=["fp32", "int8-dynamic"], threads=threads,
                              speed_seconds=speed)  # fmt: skip
    base = rows[0]["recall@1"]
    tokens_in = None
    table = [("-", "-", "-", r) for r in rows]
    check = list_images(heldout)[::61][:16]  # a spread of held-out images for the cosine with fp32
    for r in rs:
        config = add_tome(folder, result.model, r=r, check_images=check)  # type: ignore[arg-type]
        record = config.models["tome"]
        tokens_in = record["tokens_at_input"]
        for row in compare_precisions(folder, heldout, precisions=["tome", "tome-int8-dynamic"], threads=threads,
                                      speed_seconds=speed):  # fmt: skip
            cos = config.models[row["precision"]]["agreement_with_fp32"]["mean_cosine"]
            table.append((str(r), str(record["tokens_after_block"][-1]), f"{cos:.4f}", row))
    print(f"\nToMe accuracy: {student} ({result.config.source.get('arch')}, {tokens_in} tokens at the input), "
          f"{rows[0]['images']} images of {sum(1 for d in heldout.iterdir() if d.is_dir())} held-out classes "
          f"({heldout})")  # fmt: skip
    print("| r | tokens after the last block | model | mean cos vs fp32 (16 held-out images) | Recall@1 | change (points) | MAP@R "
          "| img/s b1 | img/s b32 |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r, left, cos, row in table:
        print(f"| {r} | {left} | {row['precision']} | {cos} | {row['recall@1']:.4f} | {100 * (row['recall@1'] - base):+.2f} | "
              f"{row['map@r']:.4f} | {row.get('images/s@b1', float('nan')):.1f} | "
              f"{row.get('images/s@b32', float('nan')):.1f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch and ONNX Runtime threads"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="measuring time per cell (at least 2 calls)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per cell; the median is reported"
    )
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the int8 Recall@1 check")
    parser.add_argument(
        "--tome-r", type=int, default=None, help="ToMe tokens merged per block in the speed table [default: "
        "frugalvision.deploy.default_tome_r]",
    )  # fmt: skip
    parser.add_argument(
        "--vit-student", type=Path, help="a trained ViT embedding bundle for the ToMe accuracy check"
    )
    parser.add_argument("--vit-heldout", type=Path, help="held-out labelled class folders for --vit-student")
    parser.add_argument(
        "--tome-accuracy-r", type=int, nargs="+", default=[1, 2, 3, 4], help="r values checked"
    )
    parser.add_argument(
        "--tome-accuracy-speed", type=float, default=1.0, help="seconds of ORT speed per model and batch size"
    )
    parser.add_argument(
        "--max-per-class", type=int, default=40, help="held-out images per class for the accuracy check"
    )
    parser.add_argument(
        "--skip-static-int8", action="store_true", help="leave out the static (calibrated QDQ) int8 model"
    )
    parser.add_argument(
        "--skip-choice", action="store_true", help="do not run export's measured choice (choose_model)"
    )
    parser.add_argument(
        "--skip-bf16",
        action="store_true",
        help="leave out torch bf16 (emulated, ~0.2x eager, on CPUs without BF16)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy's BLAS, for the matmul peak
    load = os.getloadavg()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}")  # fmt: skip
    peak, how = matmul_peak(args.threads)
    print(f"matmul peak at the start: {peak:.0f} GFLOP/s ({how}; best of 5 windows); the tables use the ONNX Runtime "
          "matmul measured in the same rounds as each cell\n")  # fmt: skip
    print("| model | batch | engine | img/s | vs eager | GFLOP/s | of fp32 peak | of int8 peak |\n"
          "|---|---|---|---|---|---|---|---|")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            bench_model(
                key, args.threads, args.seconds, args.rounds, Path(tmp), args.tome_r, not args.skip_bf16,
                not args.skip_static_int8, not args.skip_choice,
            )  # fmt: skip
        if not args.skip_accuracy:
            accuracy(args.threads, args.max_per_class, Path(tmp))
        if args.vit_student is not None and args.vit_heldout is not None:
            tome_accuracy(args.vit_student, args.vit_heldout, args.tome_accuracy_r, args.threads,
                          args.tome_accuracy_speed, Path(tmp))  # fmt: skip
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
