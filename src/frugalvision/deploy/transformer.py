"""Faster transformers on a CPU: ONNX Runtime's transformer fusions, dynamic int8 matrix products, and the choice
among a deploy bundle's models by speed measured on this machine within an accuracy budget.

A ViT spends its time in matrix products (QKV, attention, projection, MLP) that torch eager already runs near the
fp32 peak, so an fp32 ONNX graph gains little; the gains are in (1) fewer, fused kernels for what surrounds the
products (LayerNorm + residual -> ``SkipLayerNormalization``, bias + GELU -> ``BiasGelu``: ONNX Runtime's
``onnxruntime.transformers.optimizer``) and (2) int8 products (``quantize_dynamic``: weights int8 per output
channel, activations quantised per batch at run time, so no calibration set is needed; ``MatMulInteger`` runs on
AVX2 / AVX-512 VNNI). Which of them is fastest depends on the CPU, so :func:`choose_model` measures every model of
the bundle here, keeps those whose outputs agree with fp32 within the budget, and records the fastest in
``deploy.json`` (``"engine"``); :class:`frugalvision.runtime.Predictor` with ``precision="auto"`` (its default)
then runs it. For plain ViTs a third lever does less work instead of cheaper work: Token Merging
(:func:`frugalvision.deploy.add_tome`: ``"tome"`` and ``"tome-int8-dynamic"``), which changes the outputs and so
competes under the same budget as every other candidate.

The budget: with a labelled set (``validate``), a model is kept when its accuracy (Recall@1 for embeddings, top-1
for classifiers, mAP for multi-label; :func:`~frugalvision.deploy.compare_precisions`) is within
``max_accuracy_drop`` (1 point) of fp32's; without one, when the mean cosine of its outputs with fp32's on the check
images is at least ``min_mean_cosine`` (0.99: EfficientNet-Lite0's static int8 model sits at 0.991 with Recall@1
within a point of fp32 on held-out Caltech-101 classes, ``benchmarks/deploy.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frugalvision.deploy.evaluate import compare_precisions, throughput
from frugalvision.deploy.export import output_agreement, set_onnx_metadata
from frugalvision.deploy.quantize import _run, list_images
from frugalvision.errors import ExportError, FrugalVisionError
from frugalvision.runtime.config import DeployConfig, read_deploy_config
from frugalvision.runtime.predictor import Predictor
from frugalvision.runtime.preprocess import Preprocessor

__all__ = [
    "FUSED_FILE",
    "INT8_DYNAMIC_FILE",
    "EngineChoice",
    "add_dynamic_int8",
    "add_fused",
    "choose_model",
    "is_transformer_graph",
]

FUSED_FILE = "model.fused.onnx"
INT8_DYNAMIC_FILE = "model.int8-dynamic.onnx"
_TRANSFORMER_OPS = frozenset({"LayerNormalization", "Softmax"})
_PRODUCTS = ("MatMul", "Gemm")


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise the given loggers to ERROR for the duration (ONNX Runtime's tools log advice at WARNING)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def is_transformer_graph(path: str | os.PathLike[str]) -> bool:
    """Whether an ONNX graph looks like a transformer: it holds ``Softmax`` and ``LayerNormalization`` nodes
    (attention and its normalisation; a CNN has neither)."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    return _TRANSFORMER_OPS <= ops


def _folder_config(deploy_dir: str | os.PathLike[str]) -> tuple[Path, DeployConfig]:
    if not Path(deploy_dir).is_dir():
        raise FrugalVisionError(
            f"{deploy_dir} must be a deploy bundle folder (with deploy.json), not a lone file"
        )
    config = read_deploy_config(deploy_dir)
    return config.model_path("fp32").parent, config


def _check_batch(config: DeployConfig, images: Sequence[Any] | None, count: int, seed: int) -> np.ndarray:
    """Preprocessed check images, or (none given) a seeded random batch of ``count`` inputs."""
    if images:
        return Preprocessor(config.data_config).batch(list(images)[:count])
    size = tuple(int(s) for s in config.data_config["input_size"])
    return np.random.default_rng(seed).standard_normal((count, *size)).astype(np.float32)


def _outputs(config: DeployConfig, precision: str, batch: np.ndarray) -> np.ndarray:
    return _run(config.model_path(precision), batch)


def _add_model(folder: Path, config: DeployConfig, precision: str, record: dict[str, Any]) -> DeployConfig:
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    new = DeployConfig(**{**fields, "models": {**config.models, precision: record}})
    new.write(folder)
    return new


def add_fused(
    deploy_dir: str | os.PathLike[str],
    *,
    check_images: Sequence[Any] | None = None,
    min_cosine: float = 0.9999,
    seed: int = 0,
) -> DeployConfig:
    """Add ``model.fused.onnx`` (precision ``"fp32-fused"``): the fp32 model after ONNX Runtime's transformer
    fusions (``optimize_model(model_type="vit")``: LayerNorm + residual, bias + GELU, and attention where the graph
    has the pattern it knows), checked against fp32 (per-row cosine >= ``min_cosine``).

    Raises:
        ExportError: the optimizer failed or changed the outputs.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    folder, config = _folder_config(deploy_dir)
    fp32_path = config.model_path("fp32")
    t0 = time.perf_counter()
    try:
        # quiet: notes on auto-detected heads and the producer name (logging), shape-inference notes (print)
        with _quiet("onnxruntime.transformers", "root"), contextlib.redirect_stdout(io.StringIO()):
            optimized = optimize_model(
                str(fp32_path), model_type="vit", num_heads=0, hidden_size=0, opt_level=1
            )
    except Exception as e:  # the optimizer raises plain exceptions of many kinds
        raise ExportError(f"ONNX Runtime's transformer optimizer failed on {fp32_path}: {e}") from e
    fusions = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    batch = _check_batch(config, check_images, 8, seed)
    with tempfile.TemporaryDirectory(prefix=".fuse-", dir=folder) as tmp:
        out_tmp = Path(tmp) / FUSED_FILE
        optimized.save_model_to_file(str(out_tmp))
        parity = output_agreement(_run(fp32_path, batch), _run(out_tmp, batch))
        if not parity["min_cosine"] >= min_cosine:
            raise ExportError(
                f"the fused model disagrees with fp32: min cosine {parity['min_cosine']:.6f} < {min_cosine}"
            )
        set_onnx_metadata(out_tmp, config, precision="fp32-fused")
        os.replace(out_tmp, folder / FUSED_FILE)
    record = {
        "file": FUSED_FILE,
        "fusions": fusions,
        "parity_with_fp32": parity,
        "optimize_seconds": round(time.perf_counter() - t0, 2),
    }
    return _add_model(folder, config, "fp32-fused", record)


def _last_product(path: Path) -> list[str]:
    """Name of the graph's last MatMul/Gemm node (the output projection), kept in fp32."""
    import onnx

    names = [
        n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in _PRODUCTS
    ]
    return names[-1:]


def add_dynamic_int8(
    deploy_dir: str | os.PathLike[str],
    *,
    source: str = "auto",
    keep_last_fp32: bool = True,
    check_images: Sequence[Any] | None = None,
    seed: int = 0,
    precision: str = "int8-dynamic",
) -> DeployConfig:
    """Add ``model.int8-dynamic.onnx`` (precision ``"int8-dynamic"``): ONNX Runtime's dynamic quantisation of the
    matrix products (``MatMul``/``Gemm``; int8 weights per output channel, activations quantised per batch at run
    time: QOperator ``MatMulInteger`` / ``DynamicQuantizeMatMul``), no calibration needed.

    Args:
        source: the model quantised: ``"fp32"``, ``"fp32-fused"`` or ``"auto"`` (the fused one when present), or
            another model of the bundle (e.g. ``"tome"``, :func:`frugalvision.deploy.add_tome`).
        keep_last_fp32: keep the last product (the output projection, which sets the embedding's direction or the
            logits) in fp32.
        check_images: images on which the agreement with fp32 is measured and recorded (random inputs if none).
        precision: the name of the new model in ``deploy.json`` (file ``model.<precision>.onnx``), e.g.
            ``"tome-int8-dynamic"`` for the quantised ToMe model.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder, config = _folder_config(deploy_dir)
    if source == "auto":
        source = "fp32-fused" if "fp32-fused" in config.models else "fp32"
    if source not in config.models:
        raise FrugalVisionError(f"{deploy_dir} has no {source!r} model to quantise")
    src_path = config.model_path(source)
    excluded = _last_product(src_path) if keep_last_fp32 else []
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", precision):
        raise ValueError(f"precision must be a lower-case name of letters, digits and '-', got {precision!r}")
    file = INT8_DYNAMIC_FILE if precision == "int8-dynamic" else f"model.{precision}.onnx"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=folder) as tmp:
        out_tmp = Path(tmp) / file
        try:
            with _quiet("root"):  # advice to pre-process the graph first
                quantize_dynamic(
                    str(src_path),
                    str(out_tmp),
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(_PRODUCTS),
                    nodes_to_exclude=excluded,
                    # the fused graph's contrib ops (com.microsoft) are unknown to ONNX shape inference
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        except Exception as e:  # ORT's quantiser raises plain exceptions of many kinds
            raise FrugalVisionError(
                f"ONNX Runtime's dynamic quantisation failed: {type(e).__name__}: {e}"
            ) from e
        set_onnx_metadata(out_tmp, config, precision=precision)
        os.replace(out_tmp, folder / file)
    record: dict[str, Any] = {
        "file": file,
        "source": source,
        "format": "QOperator (dynamic)",
        "types": "int8 weights per channel / activations quantised per batch",
        "kept_fp32": excluded,
        "quantize_seconds": round(time.perf_counter() - t0, 2),
    }
    config = _add_model(folder, config, precision, record)
    batch = _check_batch(config, check_images, 16, seed)
    agreement = output_agreement(_outputs(config, "fp32", batch), _outputs(config, precision, batch))
    return _add_model(folder, config, precision, {**record, "agreement_with_fp32": agreement})


@dataclass(frozen=True)
class EngineChoice:
    """What :func:`choose_model` measured and chose: ``precision`` (a key of the bundle's ``models``) and one row
    per candidate (speed at each batch size, agreement with fp32 or accuracy, kept or not)."""

    precision: str
    rows: list[dict[str, Any]]
    record: dict[str, Any]


def choose_model(
    deploy_dir: str | os.PathLike[str],
    *,
    check_images: str | os.PathLike[str] | Sequence[Any] | None = None,
    validate: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    seconds: float = 1.0,
    min_mean_cosine: float = 0.99,
    max_accuracy_drop: float = 0.01,
    max_validate: int = 2000,
    seed: int = 0,
) -> EngineChoice:
    """Measure every model of a deploy bundle on this machine and record the fastest one within the accuracy
    budget as ``deploy.json["engine"]`` (see the module docstring for the budget).

    Speed is images/s of the model alone at each of ``batch_sizes`` (:func:`~frugalvision.deploy.throughput`,
    ``seconds`` each, ``threads`` ONNX Runtime threads); the score of a model is the geometric mean of its rates,
    so batch 1 and batch 32 count alike. fp32 is always a candidate, so a choice always exists.
    """
    folder, config = _folder_config(deploy_dir)
    if not 0 < min_mean_cosine <= 1 or not 0 <= max_accuracy_drop < 1:
        raise ValueError(
            f"min_mean_cosine must be in (0, 1] and max_accuracy_drop in [0, 1), got {min_mean_cosine}, "
            f"{max_accuracy_drop}"
        )
    candidates = [p for p in config.models if p != "bf16"]  # bf16 is ARM64-only; never chosen automatically
    accuracy: dict[str, float] = {}
    if validate is not None:
        for row in compare_precisions(
            folder, validate, precisions=candidates, threads=threads, max_images=max_validate, speed_seconds=0
        ):
            metric = next(k for k in ("recall@1", "accuracy", "mAP") if k in row)
            accuracy[row["precision"]] = float(row[metric])
    images = list_images(check_images)[:32] if check_images is not None else None
    batch = _check_batch(config, images, 32, seed)
    reference = _outputs(config, "fp32", batch)
    rows: list[dict[str, Any]] = []
    for precision in candidates:
        predictor = Predictor(folder, precision=precision, threads=threads)
        rates = {f"images/s@b{b}": round(throughput(predictor, b, seconds, seed), 2) for b in batch_sizes}
        agreement = output_agreement(reference, _outputs(config, precision, batch))
        if accuracy:
            ok = accuracy[precision] >= accuracy["fp32"] - max_accuracy_drop
        else:
            ok = agreement["mean_cosine"] >= min_mean_cosine
        score = float(np.exp(np.mean(np.log(np.maximum(list(rates.values()), 1e-9)))))
        rows.append(
            {
                "precision": precision,
                **rates,
                "score": round(score, 2),
                "mean_cosine": round(agreement["mean_cosine"], 5),
                **({"accuracy": round(accuracy[precision], 4)} if accuracy else {}),
                "within_budget": bool(ok),
            }
        )
    kept = [r for r in rows if r["within_budget"]] or [r for r in rows if r["precision"] == "fp32"]
    best = max(kept, key=lambda r: r["score"])
    record = {
        "precision": best["precision"],
        "measured": rows,
        "budget": (
            {"max_accuracy_drop": max_accuracy_drop, "validate": str(validate)}
            if accuracy
            else {"min_mean_cosine": min_mean_cosine, "check": "images" if images else "random inputs"}
        ),
        "threads": threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    new = DeployConfig(**{**fields, "extra": {**config.extra, "engine": record}})
    new.write(folder)
    return EngineChoice(best["precision"], rows, record)
