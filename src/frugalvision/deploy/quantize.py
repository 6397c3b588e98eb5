"""int8 static quantisation of a deploy bundle with ONNX Runtime, calibrated on the user's own images.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018 (https://arxiv.org/abs/1712.05877): a real value ``r`` is stored as ``q = round(r / s) + z``
(eq. 1, ``r = s (q - z)``). Weights get one scale per output channel (``per_channel``, symmetric int8);
activation ranges are measured by running the float model on calibration images (ONNX Runtime's
``quantize_static`` with a :class:`ImageCalibrationReader`). The graph is written in QDQ form
(QuantizeLinear/DequantizeLinear pairs), which ONNX Runtime fuses into integer kernels (VNNI on x86).

Steps, as ONNX Runtime recommends: ``quant_pre_process`` (shape inference + graph optimisation, so that e.g.
BatchNorm is folded before ranges are measured), then ``quantize_static``, then a check of the int8 outputs
against the float model on held-back calibration images.

bfloat16: ONNX Runtime's CPU execution provider has no bfloat16 Conv/MatMul/Gemm kernels on x86-64 (version
1.32); its only bf16 path is the ARM64 session option ``mlas.enable_gemm_fastmath_arm64_bfloat16``.
:func:`add_bf16_fastmath` records that option as a ``"bf16"`` entry (the fp32 file) for ARM64 servers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

from frugalvision._fs import IMAGE_EXTENSIONS
from frugalvision._fs import list_images as _list_images
from frugalvision.deploy.detection import float_nodes, int8_detection_agreement
from frugalvision.deploy.export import _ort_session, output_agreement, set_onnx_metadata
from frugalvision.errors import DataError, FrugalVisionError
from frugalvision.runtime import ImageInput
from frugalvision.runtime.config import DeployConfig, read_deploy_config
from frugalvision.runtime.detection import LetterboxPreprocessor
from frugalvision.runtime.predictor import BF16_FASTMATH_KEY
from frugalvision.runtime.preprocess import Preprocessor

__all__ = [
    "CALIBRATION_METHODS",
    "ImageCalibrationReader",
    "QuantizeResult",
    "add_bf16_fastmath",
    "list_images",
    "quantize_int8",
]

INT8_FILE = "model.int8.onnx"
#: ``method`` choices of :func:`quantize_int8` and the ONNX Runtime calibrators they name.
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def list_images(source: str | os.PathLike[str] | Sequence[ImageInput]) -> list[ImageInput]:
    """Images of a folder (recursively, sorted, by extension) or the given sequence unchanged."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"calibration images: {root} is not a folder")
        found: list[ImageInput] = list(_list_images(root))
        if not found:
            raise DataError(
                f"calibration images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}"
            )
        return found
    if isinstance(source, (bytes, str)) or not isinstance(source, Sequence):
        raise TypeError(f"images must be a folder or a sequence of images, got {type(source).__name__}")
    return list(source)


def _subsample(images: list[ImageInput], count: int, seed: int) -> list[ImageInput]:
    if len(images) <= count:
        return images
    rng = np.random.default_rng(seed)
    return [images[i] for i in sorted(rng.choice(len(images), size=count, replace=False))]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds calibration batches to ONNX Runtime's calibrator, preprocessed by the runtime's :class:`Preprocessor`.

    Args:
        images: paths, bytes, PIL images or RGB arrays.
        preprocessor: the deploy bundle's preprocessing (the same the service will apply).
        input_name: the model's input name.
        batch_size: images per calibration batch.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        preprocessor: Preprocessor,
        input_name: str = "images",
        batch_size: int = 8,
    ) -> None:
        if not images:
            raise DataError("calibration needs at least one image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = list(images)
        self.preprocessor = preprocessor
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.preprocessor.batch(self.images[i : i + self.batch_size])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` wrote: the int8 model, its agreement with fp32 and the calibration record."""

    model_path: Path
    agreement: dict[str, float]
    record: dict[str, Any]
    config: DeployConfig


def quantize_int8(
    deploy_dir: str | os.PathLike[str],
    calibration_images: str | os.PathLike[str] | Sequence[ImageInput],
    *,
    max_images: int = 200,
    check_images: int = 16,
    method: str = "minmax",
    per_channel: bool = True,
    op_types: Sequence[str] | Literal["auto"] | None = "auto",
    batch_size: int = 8,
    seed: int = 0,
) -> QuantizeResult:
    """Add ``model.int8.onnx`` to a deploy bundle: static int8 quantisation, QDQ format, calibrated on images.

    Args:
        deploy_dir: a deploy bundle written by :func:`~frugalvision.deploy.export_onnx`.
        calibration_images: a folder (searched recursively) or a sequence of images: a sample of what the model
            will see. A few hundred are plenty; ``max_images`` are drawn at random (``seed``).
        max_images: calibration images used at most.
        check_images: further images (not used for calibration, when available) on which int8 outputs are
            compared with fp32 (:func:`~frugalvision.deploy.output_agreement`, recorded in ``deploy.json``;
            detectors: :func:`~frugalvision.deploy.detection_agreement` of the detections, and the NMS nodes of
            the graph stay float).
        method: activation range estimate: ``"minmax"`` (fast, default), ``"percentile"`` (99.999th percentile)
            or ``"entropy"`` (KL divergence; slower, more memory).
        per_channel: one weight scale per output channel (recommended for depthwise convolutions).
        op_types: operator types to quantise; ``None``: every type ONNX Runtime can; ``"auto"``: only
            ``Conv``/``MatMul``/``Gemm`` for transformers (graphs with ``LayerNormalization`` or ``Softmax``), every
            type otherwise. Measured (ORT 1.32, 2 Zen 5 cores): ViT-S/16 with every type is slower than with
            MatMul/Gemm only (7.4 vs 9.4 images/s at batch 1) and further from fp32 (mean cosine 0.971 vs 0.999);
            EfficientNet-Lite0 needs every type (Conv-only: mean cosine 0.87, every type: 0.991).
        batch_size: calibration batch size.
        seed: sampling seed.

    Raises:
        DataError: no calibration images. FrugalVisionError: ONNX Runtime's quantiser failed.
    """
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if isinstance(op_types, str) and op_types != "auto":
        raise ValueError(f"op_types must be 'auto', None or a list of operator types, got {op_types!r}")
    if max_images < 1 or check_images < 0:
        raise ValueError(
            f"max_images must be >= 1 and check_images >= 0, got {max_images} and {check_images}"
        )
    if not Path(deploy_dir).is_dir():
        raise FrugalVisionError(
            f"{deploy_dir} must be a deploy bundle folder (with deploy.json), not a lone file"
        )
    config = read_deploy_config(deploy_dir)
    fp32_path = config.model_path("fp32")
    folder = fp32_path.parent
    pool = list_images(calibration_images)
    chosen = _subsample(pool, max_images + check_images, seed)
    calib, check = (chosen[:max_images], chosen[max_images:]) if len(chosen) > max_images else (chosen, [])
    if not check:  # too few images to hold some back: check on (part of) the calibration set
        check = calib[:check_images]
    preprocessor: Any = Preprocessor(config.data_config)
    if config.detection is not None:  # detectors: letterboxed as in training; the NMS part stays float
        preprocessor = LetterboxPreprocessor.from_config(config.data_config, config.detection)
    reader = ImageCalibrationReader(calib, preprocessor, config.input_name, batch_size)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=folder) as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # ONNX Runtime's symbolic shape inference, when it cannot follow a graph (e.g. a Resize), saves
        # sym_shape_infer_temp.onnx and its data into the working folder before raising: run it from the temporary
        # folder so nothing is left behind (a process-wide chdir: do not quantise from several threads at once)
        with _working_folder(Path(tmp)):
            try:
                quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=False)
            except (
                Exception
            ):  # symbolic shape inference does not know every op; plain ONNX shape inference does
                quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        out_tmp = Path(tmp) / INT8_FILE
        chosen_ops = (
            _op_types(prepped) if op_types == "auto" else (None if op_types is None else list(op_types))
        )
        try:
            quantize_static(
                str(prepped),
                str(out_tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                op_types_to_quantize=chosen_ops,
                nodes_to_exclude=float_nodes(prepped) if config.detection is not None else None,
                extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False},
            )
        except Exception as e:  # ORT's quantiser raises plain exceptions of many kinds
            raise FrugalVisionError(
                f"ONNX Runtime's static quantisation failed: {type(e).__name__}: {e}"
            ) from e
        seconds = time.perf_counter() - t0
        set_onnx_metadata(out_tmp, config, precision="int8")
        os.replace(out_tmp, folder / INT8_FILE)

    agreement: dict[str, float] = {}
    if check:
        check_batch = preprocessor.batch(check)
        if config.detection is not None:
            agreement = int8_detection_agreement(fp32_path, folder / INT8_FILE, check_batch)
        else:
            agreement = output_agreement(_run(fp32_path, check_batch), _run(folder / INT8_FILE, check_batch))
    record = {
        "file": INT8_FILE,
        "method": method,
        "per_channel": per_channel,
        "op_types": chosen_ops or "all",
        "format": "QDQ",
        "types": "int8 activations / int8 weights",
        "calibration_images": len(calib),
        "check_images": len(check),
        "check_held_out": len(pool) > len(calib),
        "agreement_with_fp32": agreement,
        "quantize_seconds": round(seconds, 2),
    }
    models = {**config.models, "int8": record}
    new_config = _with_models(config, models)
    new_config.write(folder)
    return QuantizeResult(folder / INT8_FILE, agreement, record, new_config)


_TRANSFORMER_OPS = frozenset({"LayerNormalization", "Softmax"})


@contextlib.contextmanager
def _working_folder(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` of Python 3.11, for 3.10: the process's working folder is ``path`` inside the block."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _op_types(model_path: Path) -> list[str] | None:
    """``"auto"`` operator choice: MatMul/Gemm/Conv for transformer graphs, everything (``None``) otherwise."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node}
    return ["Conv", "MatMul", "Gemm"] if ops & _TRANSFORMER_OPS else None


def add_bf16_fastmath(deploy_dir: str | os.PathLike[str]) -> DeployConfig:
    """Add a ``"bf16"`` entry: the fp32 model run with ONNX Runtime's ARM64 bfloat16 fast-math GEMMs.

    The entry only sets a session option, so it can be written anywhere; :class:`~frugalvision.runtime.Predictor`
    refuses it on CPUs other than ARM64 (see :func:`~frugalvision.runtime.bf16_fastmath_available`).
    """
    config = read_deploy_config(deploy_dir)
    fp32 = config.models.get("fp32")
    if fp32 is None:
        raise FrugalVisionError(f"{deploy_dir} has no fp32 model to run in bf16 fast-math mode")
    record = {"file": fp32["file"], "session_config": {BF16_FASTMATH_KEY: "1"}, "note": "ARM64 only"}
    if config.folder is None or not Path(deploy_dir).is_dir():
        raise FrugalVisionError(
            f"{deploy_dir} must be a deploy bundle folder (with deploy.json), not a lone file"
        )
    new_config = _with_models(config, {**config.models, "bf16": record})
    new_config.write(config.folder)
    return new_config


def _with_models(config: DeployConfig, models: dict[str, dict[str, Any]]) -> DeployConfig:
    return DeployConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "models": models})


def _run(path: Path, batch: np.ndarray) -> np.ndarray:
    session = _ort_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: batch[i : i + 16]})[0] for i in range(0, len(batch), 16)])
