"""Export a model to an ONNX deploy bundle (``model.onnx`` + ``deploy.json``) and check it against PyTorch.

Which exporter: PyTorch 2.9+ defaults to the ``torch.export``-based ("dynamo") exporter, which needs the
``onnxscript`` package. For timm models it gives the better graph: shapes other than the batch are static, so
the dynamic "same" padding of TensorFlow-ported models (``tf_efficientnet_*``) folds into the convolutions
(EfficientNet-Lite0: 93 nodes and about 1.5x faster in ONNX Runtime than the TorchScript exporter's 628, where
the padding stays as shape arithmetic); ViT-S/16 gets 502 nodes against 954. ``exporter="auto"`` uses it when
``onnxscript`` is installed and falls back to the TorchScript exporter (with a warning) when it is missing or
``torch.export`` cannot capture the model, e.g. data-dependent Python control flow in ``forward``.

After export: ``onnx.checker``, then ONNX Runtime against PyTorch on a random batch of another size than the
traced one (proving the dynamic batch axis) and on sample images if given: every output row must have cosine
similarity >= ``min_cosine`` (0.9999) with PyTorch's (timm's ``onnx_validate`` habit).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._fields import check_data_config
from frugalvision._fs import replacing_dir
from frugalvision._version import __version__
from frugalvision.errors import ExportError, StoreError
from frugalvision.runtime.config import (
    DEPLOY_FILE,
    METADATA_KEY,
    NORMALIZATIONS,
    TASKS,
    DeployConfig,
    is_deploy_bundle,
)

__all__ = [
    "EXPORTERS",
    "ExportError",
    "ExportResult",
    "export_backbone",
    "export_bundle",
    "export_onnx",
    "output_agreement",
]

#: ``exporter`` choices of :func:`export_onnx`.
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")
MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime 1.17+ runs it


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        folder: the deploy bundle.
        model_path: ``folder / "model.onnx"``.
        exporter: ``"dynamo"`` or ``"torchscript"``, the one that produced the file.
        parity: :func:`output_agreement` of ONNX Runtime against PyTorch (``min_cosine``, ``max_abs`` ...).
        config: the written :class:`~frugalvision.runtime.DeployConfig`.
        model: the torch module that was exported (e.g. for :func:`frugalvision.deploy.add_tome`).
    """

    folder: Path
    model_path: Path
    exporter: str
    parity: dict[str, float]
    config: DeployConfig
    model: nn.Module | None = field(default=None, repr=False, compare=False)


def output_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How close two ``(N, D)`` outputs are: per-row cosine (min, mean), max absolute and relative difference.

    Cosine is computed in float64; two all-zero rows count as cosine 1.
    """
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"outputs must be two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, np.finfo(np.float64).tiny))
    diff = np.abs(a - b)
    return {
        "rows": int(a.shape[0]),
        "min_cosine": float(cos.min()) if cos.size else 1.0,
        "mean_cosine": float(cos.mean()) if cos.size else 1.0,
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(diff.max() / max(np.abs(a).max(), np.finfo(np.float64).tiny)) if diff.size else 0.0,
    }


def _check_data_config(data_config: object) -> dict[str, Any]:
    from frugalvision.runtime.preprocess import Preprocessor

    if not isinstance(data_config, Mapping):
        raise TypeError(
            f"data_config must be a mapping (timm's data config), got {type(data_config).__name__}"
        )
    check_data_config(data_config, "export_onnx", "data_config")  # the bounds deploy.json is read back with
    Preprocessor(data_config)  # validates every field the runtime will need
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}


def _resolve_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "dynamo" and not has_onnxscript:
        raise ExportError("exporter='dynamo' needs the onnxscript package: pip install onnxscript")
    if exporter == "auto":
        return "dynamo" if has_onnxscript else "torchscript"
    return exporter


def _deploy_target(out_dir: str | os.PathLike[str], exporter: str, opset: int) -> Path:
    """The checks every export starts with: ``opset`` (>= 17), ``exporter`` (a bad choice or a missing onnxscript
    fail before any work) and ``out_dir``, which must be absent, an empty folder or a deploy bundle (replaced).
    Returns ``out_dir`` resolved.

    Raises:
        ValueError: a bad opset or exporter. ExportError: onnxscript missing. StoreError: ``out_dir`` is taken.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ValueError(f"opset must be an int >= 17, got {opset!r}")
    target = Path(out_dir).expanduser().resolve()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not is_deploy_bundle(target))):
        raise StoreError(
            f"refusing to write the deploy bundle into {target}: it exists and is not an (empty folder or a) "
            "deploy bundle; choose another --out"
        )
    _resolve_exporter(exporter)
    return target


def _export_with_fallback(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    exporter: str,
    opset: int,
    output_names: Sequence[str],
    *,
    what: str = "model",
) -> str:
    """``torch.onnx.export`` of ``model`` to ``path``: input ``"images"``, ``output_names``, every one with a dynamic
    batch axis (dim 0), with the ``exporter`` asked for (see the module docstring); with ``"auto"``, a model
    ``torch.export`` cannot capture falls back to the TorchScript exporter with a warning. Returns the exporter that
    produced the file (``"dynamo"`` or ``"torchscript"``).

    Raises:
        ExportError: the export failed with every exporter tried (``what`` names the model in the message).
    """
    names = list(output_names)

    def export(chosen: str) -> None:
        with warnings.catch_warnings():
            # the tracer warns about Python bools taken from tensors (input checks), the legacy exporter about itself
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            if chosen == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, opset_version=opset, input_names=["images"],
                    output_names=names, dynamic_shapes=({0: batch},), external_data=False, optimize=True,
                    verbose=False, report=False,
                )  # fmt: skip
            else:
                axes = {name: {0: "batch"} for name in ["images", *names]}
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                    output_names=names, dynamic_axes=axes, do_constant_folding=True,
                )  # fmt: skip

    chosen = _resolve_exporter(exporter)
    try:
        export(chosen)
    except Exception as e:  # the exporters raise many types (TorchExportError, RuntimeError, ...)
        if exporter != "auto" or chosen != "dynamo":
            raise ExportError(f"ONNX export with the {chosen} exporter failed: {_first_line(e)}") from e
        warnings.warn(
            f"torch.export could not capture the {what} ({_first_line(e)}); using the TorchScript exporter",
            stacklevel=3,
        )
        chosen = "torchscript"
        path.unlink(missing_ok=True)
        try:
            export(chosen)
        except Exception as e2:
            raise ExportError(f"ONNX export failed with both exporters: {_first_line(e2)}") from e2
    return chosen


def _fp32_fields(
    parity: Mapping[str, Any],
    exporter: str,
    opset: int,
    seconds: float,
    source: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The :class:`~frugalvision.runtime.DeployConfig` fields every export records: the fp32 model (file, parity,
    exporter, opset, export seconds), ``source``, ``metrics`` and ``extra`` with the versions and the time."""
    return {
        "models": {
            "fp32": {
                "file": MODEL_FILE,
                "parity": parity,
                "exporter": exporter,
                "opset": opset,
                "export_seconds": round(seconds, 2),
            }
        },
        "source": _jsonable(dict(source or {})),
        "metrics": _jsonable(dict(metrics or {})),
        "extra": {
            **_jsonable(dict(extra or {})),
            "frugalvision_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        },
    }


def _ort_session(model: str | os.PathLike[str] | bytes) -> Any:
    """A quiet ONNX Runtime CPU session on a model file or serialised model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _torch_parity(
    model: nn.Module, path: Path, batch: np.ndarray, min_cosine: float, what: str = ""
) -> tuple[dict[str, float], np.ndarray]:
    """ONNX Runtime's outputs of the model at ``path`` on ``batch`` and their agreement with ``model``'s
    (:func:`output_agreement`).

    Raises:
        ExportError: the minimum cosine is below ``min_cosine`` (``what`` names the model in the message).
    """
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).float().numpy()
    got = _ort_outputs(path, batch)
    parity = output_agreement(expected, got)
    if not parity["min_cosine"] >= min_cosine:
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree{what}: min cosine {parity['min_cosine']:.6f} < {min_cosine} "
            f"(max abs diff {parity['max_abs']:.3g}); the exporter may not support an operation of this model"
        )
    return parity, got


def _ort_outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    session = _ort_session(path)
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0], dtype=np.float32)


def _sample_batch(
    sample_images: Sequence[Any] | None, data_config: Mapping[str, Any], seed: int
) -> np.ndarray:
    """Random normal images (3 of them) plus the preprocessed ``sample_images``."""
    from frugalvision.runtime.preprocess import Preprocessor

    _, h, w = (int(s) for s in data_config["input_size"])
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((3, 3, h, w)).astype(np.float32)]
    if sample_images:
        parts.append(Preprocessor(data_config).batch(list(sample_images)))
    return np.concatenate(parts)


def export_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    data_config: Mapping[str, Any],
    task: str = "embedding",
    classes: Sequence[str] = (),
    thresholds: Sequence[float] | None = None,
    normalization: str = "none",
    source: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    sample_images: Sequence[Any] | None = None,
    min_cosine: float = 0.9999,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (images ``(B, 3, H, W)`` -> ``(B, D)``) to the deploy bundle ``out_dir``.

    Writes ``model.onnx`` (dynamic batch axis, input ``"images"``, output ``"embeddings"`` or ``"logits"``) and
    ``deploy.json``; the essential fields also go into the model's ``metadata_props``. The folder is built aside
    and renamed into place: an existing deploy bundle at ``out_dir`` is replaced, any other non-empty folder is
    refused.

    Args:
        model: an ``nn.Module`` in eval mode semantics (it is put in eval mode); e.g. a
            :class:`~frugalvision.models.Backbone` or a bundle's :class:`~frugalvision.models.EmbeddingModel`.
        out_dir: deploy bundle folder to write.
        data_config: the model's timm preprocessing; ``input_size`` fixes ``H`` and ``W`` of the graph.
        task: ``"embedding"``, ``"classification"`` or ``"multilabel"``.
        classes: class names; for classifiers one per output.
        thresholds: multilabel thresholds, one per class (``None``: 0.5 at run time).
        normalization: of embeddings (``"l2"``, ``"poincare"``, ``"none"``): recorded, not applied.
        source: what was exported (bundle path/id or backbone spec), recorded in ``deploy.json``.
        metrics: validation metrics to record.
        exporter: ``"auto"``, ``"dynamo"`` or ``"torchscript"`` (see the module docstring).
        opset: ONNX opset (>= 17).
        sample_images: images (paths, PIL images...) preprocessed by the runtime and added to the parity check.
        min_cosine: smallest per-row cosine between ONNX Runtime's and PyTorch's outputs accepted.
        seed: seed of the random parity inputs.
        extra: more JSON-able fields for ``deploy.json`` (e.g. ``calibration``).

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportError: export failed with every exporter tried, or the parity check failed.
        StoreError: ``out_dir`` is a non-empty folder that is not a deploy bundle.
        ValueError / TypeError: bad arguments (task, classes, thresholds, data_config, opset).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data_config = _check_data_config(data_config)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "detection":
        raise ValueError(
            "detectors are exported with frugalvision.deploy.export_detector (NMS inside the graph)"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    target = _deploy_target(out_dir, exporter, opset)

    was_training = model.training
    model.eval()
    try:
        return _export_eval_model(
            model, target, data_config, task, classes, thresholds, normalization, source, metrics, exporter, opset,
            sample_images, min_cosine, seed, extra,
        )  # fmt: skip
    finally:
        model.train(was_training)


def _export_eval_model(
    model: nn.Module,
    target: Path,
    data_config: dict[str, Any],
    task: str,
    classes: Sequence[str],
    thresholds: Sequence[float] | None,
    normalization: str,
    source: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    exporter: str,
    opset: int,
    sample_images: Sequence[Any] | None,
    min_cosine: float,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> ExportResult:
    output_name = "embeddings" if task == "embedding" else "logits"
    _, h, w = (int(s) for s in data_config["input_size"])
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        probe = model(example)
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ExportError(f"the model must map images (B, 3, {h}, {w}) to a (B, D) tensor, got {shape}")
    output_size = int(probe.shape[1])
    if task != "embedding" and len(classes) != output_size:
        raise ValueError(
            f"a {task} model needs one class name per output: {output_size} outputs, {len(classes)} classes"
        )
    if thresholds is not None and (task != "multilabel" or len(thresholds) != len(classes)):
        raise ValueError(
            f"thresholds are for multilabel models, one per class; got {len(thresholds)} for a {task} model"
        )

    with replacing_dir(target) as tmp:
        model_path = tmp / MODEL_FILE
        t0 = time.perf_counter()
        chosen = _export_with_fallback(model, example, model_path, exporter, opset, [output_name])
        export_seconds = time.perf_counter() - t0
        try:
            onnx.checker.check_model(str(model_path), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported model fails onnx.checker: {_first_line(e)}") from e

        # parity with PyTorch, on a batch size other than the traced one
        batch = _sample_batch(sample_images, data_config, seed + 1)
        parity, _ = _torch_parity(model, model_path, batch, min_cosine)

        config = DeployConfig(
            task=task,
            data_config=dict(data_config),
            output_size=output_size,
            normalization=normalization,
            classes=tuple(str(c) for c in classes),
            thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
            output_name=output_name,
            folder=target,
            **_fp32_fields(parity, chosen, opset, export_seconds, source, metrics, extra),
        )
        set_onnx_metadata(model_path, config, precision="fp32")
        config.write(tmp)
    return ExportResult(target, target / MODEL_FILE, chosen, parity, config, model)


def set_onnx_metadata(path: str | os.PathLike[str], config: DeployConfig, *, precision: str) -> None:
    """Store ``config.essentials()`` (and the precision) in the ONNX file's ``metadata_props``, in place."""
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if not p.key.startswith(METADATA_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in (
        (METADATA_KEY, json.dumps(config.essentials())),
        (f"{METADATA_KEY}.precision", precision),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "frugalvision", __version__
    onnx.save(model, str(path))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "=")):
            return f"{type(e).__name__}: {line[:300]}"
    return type(e).__name__


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------- model sources
class _L2Normalized(nn.Module):
    """``F.normalize(model(x), dim=1)``: unit-length rows, like ``frugalvision embed``'s default."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x), dim=1)


def export_backbone(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    normalize: bool = True,
    **kwargs: Any,
) -> ExportResult:
    """Export a plain backbone (no training) as an embedding model: pooled features, L2-normalised by default.

    ``name``, ``pretrained`` and ``weights`` are those of :func:`~frugalvision.models.create_backbone` (e.g.
    ``"tf_efficientnet_lite0.in1k_offline"``); ``kwargs`` go to :func:`export_onnx`. The backbone's spec is recorded
    as the source, so an index built by ``frugalvision index`` from the same backbone can be served with it.
    """
    from frugalvision.models import create_backbone

    backbone = create_backbone(name, pretrained=pretrained, weights=weights)
    model: nn.Module = _L2Normalized(backbone) if normalize else backbone
    source = {"kind": "backbone", "backbone": backbone.spec.to_dict()}
    return export_onnx(
        model,
        out_dir,
        data_config=backbone.data_config,
        task="embedding",
        normalization="l2" if normalize else "none",
        source=source,
        **kwargs,
    )


class _TemperatureScaled(nn.Module):
    """``model(x) / T``: a classifier's calibrated logits (temperature scaling), whose softmax is the calibrated
    probability."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export_bundle(
    bundle_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], **kwargs: Any
) -> ExportResult:
    """Export a trained model bundle (``frugalvision.load``) with its task, classes, thresholds and metrics.

    A ``classification`` bundle's temperature ``T`` is applied in the graph: its output ``logits`` are the
    calibrated logits ``z / T``, so the runtime's softmax (:class:`frugalvision.runtime.Predictor`, ``serve
    /predict``) gives the calibrated probabilities ``softmax(z / T)`` without knowing ``T``; ``deploy.json`` records
    ``calibration: {"temperature": T, "applied_in_graph": true}`` (do not divide again).

    ``kwargs`` go to :func:`export_onnx`.

    Raises:
        StoreError: not a model bundle (see :func:`frugalvision.bundle.read_bundle_config`).
    """
    try:
        from frugalvision.bundle import load
    except ImportError as e:  # pragma: no cover - the bundle module ships with the package
        raise ExportError(f"model bundles need frugalvision.bundle, which cannot be imported: {e}") from e

    model = load(bundle_dir)
    config: dict[str, Any] = dict(getattr(model, "config", {}) or {})
    task = str(config.get("task", "embedding"))
    if task not in TASKS:
        raise StoreError(f"{bundle_dir}: task {task!r} cannot be exported; supported: {', '.join(TASKS)}")
    if task == "detection":
        raise StoreError(
            f"{bundle_dir} is a detection model: export it with frugalvision.deploy.export_detector_bundle"
        )
    head = (config.get("model") or {}).get("head") or {}
    normalization = str(head.get("normalization", getattr(model, "normalization", "none")))
    source = {
        "kind": "bundle",
        "bundle": str(Path(bundle_dir).expanduser().resolve()),
        "id": config.get("id"),
        "arch": ((config.get("model") or {}).get("backbone") or {}).get("name"),
    }
    data_config = getattr(model, "data_config", None) or config.get("data_config")
    if not data_config:
        raise StoreError(f"{bundle_dir}: the bundle records no preprocessing (data_config)")
    exported: nn.Module = model
    if task == "classification":
        temperature = float(config.get("temperature") or 1.0)
        exported = _TemperatureScaled(model, temperature)
        kwargs = {**kwargs, "extra": {**dict(kwargs.get("extra") or {}), "calibration": {
            "temperature": temperature, "applied_in_graph": True}}}  # fmt: skip
    return export_onnx(
        exported,
        out_dir,
        data_config=data_config,
        task=task,
        classes=config.get("classes") or (),
        thresholds=config.get("thresholds"),
        normalization=normalization if task == "embedding" else "none",
        source=source,
        metrics=config.get("metrics") or {},
        **kwargs,
    )


def is_model_bundle(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a trained model bundle folder (``config.json`` + ``model.safetensors``)."""
    p = Path(path)
    return (
        (p / "config.json").is_file()
        and (p / "model.safetensors").is_file()
        and not (p / DEPLOY_FILE).exists()
    )
