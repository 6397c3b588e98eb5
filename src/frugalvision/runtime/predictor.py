""":class:`Predictor`: an exported model on ONNX Runtime, with training's preprocessing; numpy + Pillow only.

::

    from frugalvision.runtime import Predictor
    p = Predictor("model-onnx/", precision="int8", threads=2)
    vectors = p.embed(["a.jpg", "b.jpg"])          # (2, D), unit rows for an l2 model
    p.predict(["a.jpg"])[0].labels                 # classifiers: top classes; multilabel: classes over threshold
    p.detect(["a.jpg"])[0].boxes                   # detectors: (n, 4) xyxy boxes in the image's own pixels
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from PIL import Image

from frugalvision.errors import FrugalVisionError, StoreError
from frugalvision.runtime._image import ImageInput
from frugalvision.runtime.config import DEPLOY_FILE, DeployConfig, read_deploy_config
from frugalvision.runtime.detection import (
    DETECTION_OUTPUTS,
    Detection,
    LetterboxPreprocessor,
    pack_detections,
    unpack_detections,
)
from frugalvision.runtime.preprocess import Preprocessor

__all__ = ["PRECISIONS", "Prediction", "Predictor", "bf16_fastmath_available"]

#: Model variants a deploy bundle may hold: fp32, its transformer-fused form, static (calibrated QDQ) and dynamic
#: int8, bf16 fast-math (ARM64), and Token Merging ViTs in fp32 / dynamic int8 (``frugalvision.deploy.add_tome``). ``"auto"`` asks for the one ``deploy.json`` records as fastest within the
#: accuracy budget on the machine that exported it (``frugalvision.deploy.choose_model``), else fp32.
PRECISIONS: tuple[str, ...] = (
    "fp32", "fp32-fused", "int8", "int8-dynamic", "bf16", "tome", "tome-int8-dynamic"
)  # fmt: skip
#: ONNX Runtime's session option for bfloat16 fast-math GEMMs; only ARM64 builds implement it.
BF16_FASTMATH_KEY = "mlas.enable_gemm_fastmath_arm64_bfloat16"


def bf16_fastmath_available() -> bool:
    """Whether ONNX Runtime can run GEMMs in bfloat16 here: only on ARM64 CPUs (``BF16_FASTMATH_KEY``).

    ONNX Runtime's CPU execution provider has no bfloat16 kernels for Conv, MatMul or Gemm on x86-64 (checked
    with ONNX Runtime 1.32: sessions holding such nodes fail with NOT_IMPLEMENTED), so there is no bf16 speed-up
    through it on x86, AVX-512 BF16 or not.
    """
    return platform.machine().lower() in ("aarch64", "arm64")


@dataclass(frozen=True)
class Prediction:
    """Decision for one image.

    Attributes:
        labels: predicted class names, most probable first: the ``top_k`` best (classification) or every class
            whose probability reaches its threshold (multilabel; may be empty).
        scores: their probabilities.
        probabilities: ``(C,)`` float32 probabilities of all classes (softmax, or per-class sigmoid).
    """

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    probabilities: np.ndarray

    @classmethod
    def of(cls, row: np.ndarray, chosen: Sequence[int] | np.ndarray, classes: Sequence[str]) -> Prediction:
        """The decision naming the classes ``chosen`` (indices, most probable first) of one row ``(C,)`` of
        probabilities."""
        return cls(
            labels=tuple(classes[i] for i in chosen),
            scores=tuple(float(row[i]) for i in chosen),
            probabilities=row,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "scores": [float(s) for s in self.scores]}


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(cast(Sequence[ImageInput], images))
        raise ValueError(f"image arrays must be (H, W, 3) or (N, H, W, 3) uint8, got shape {images.shape}")
    if not isinstance(images, Sequence):
        raise TypeError(f"images must be an image or a sequence of images, got {type(images).__name__}")
    return list(cast(Sequence[ImageInput], images))


class Predictor:
    """Run a deploy bundle (or a lone exported ``.onnx`` file) on ONNX Runtime's CPU execution provider.

    Args:
        path: deploy bundle folder (``deploy.json`` + models) or an ``.onnx`` file written by
            :func:`frugalvision.deploy.export_onnx`.
        precision: which model of the bundle: ``"auto"`` (default: the one ``deploy.json``'s ``engine`` record
            chose, else ``"fp32"``), or one of :data:`PRECISIONS` (``"bf16"``: ARM64 only, see
            :func:`bf16_fastmath_available`). Ignored for a lone ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (``None``: its default, one per physical core). In a service
            sharing the machine, set it to the cores you can give.
        batch_size: largest batch sent to the model at once; bigger inputs are split.
        spin: let idle ONNX Runtime threads spin (lower latency, burns CPU between requests); turn it off when
            other processes need the cores.
        max_pixels: refuse images with more pixels when decoding (``None``: Pillow's own guard).

    Raises:
        StoreError: missing or malformed bundle, unknown precision, a model that does not match ``deploy.json``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        precision: str = "auto",
        threads: int | None = None,
        batch_size: int = 32,
        spin: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.config: DeployConfig = read_deploy_config(path)
        if Path(path).is_file():
            precision = next(iter(self.config.models))
        elif precision == "auto":
            precision = self.config.chosen_precision
        record = self.config.models.get(precision)
        if record is None:
            raise StoreError(
                f"{path} has no {precision!r} model (it has: {', '.join(self.config.models) or 'none'}); "
                + (
                    "quantise it with `frugalvision export ... --int8 --calibrate DIR`"
                    if precision == "int8"
                    else ""
                )
            )
        session_config = {str(k): str(v) for k, v in (record.get("session_config") or {}).items()}
        if BF16_FASTMATH_KEY in session_config and not bf16_fastmath_available():
            raise FrugalVisionError(
                f"the {precision!r} model needs ONNX Runtime's bfloat16 fast-math GEMMs, which exist on ARM64 only; "
                f"this is a {platform.machine()} CPU. Use precision='fp32' or 'int8'"
            )
        self.precision = precision
        self.batch_size = batch_size
        self.threads = threads
        self.model_path = self.config.model_path(precision)
        if not self.model_path.is_file():
            raise StoreError(f"model file {self.model_path} listed in deploy.json is missing")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in session_config.items():
            options.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT's own exception types
            raise StoreError(f"ONNX Runtime cannot load {self.model_path}: {e}") from e
        # where output.size was read: deploy.json, or a lone .onnx file's metadata
        self._origin = f"{path} metadata" if Path(path).is_file() else str(Path(path) / DEPLOY_FILE)
        self._check_signature()
        self.preprocessor = Preprocessor(self.config.data_config, max_pixels=max_pixels)
        #: Detectors only: the letterbox of training (:mod:`frugalvision.runtime.detection`).
        self.letterbox: LetterboxPreprocessor | None = None
        if self.config.detection is not None:
            self.letterbox = LetterboxPreprocessor.from_config(
                self.config.data_config, self.config.detection, max_pixels=max_pixels
            )

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if self.task == "detection":
            names = tuple(o.name for o in outputs)
            if len(inputs) != 1 or names != DETECTION_OUTPUTS:
                raise StoreError(
                    f"{self.model_path} must have one input and the outputs {', '.join(DETECTION_OUTPUTS)} of an "
                    f"exported detector, got {len(inputs)} inputs and {list(names)}; export it with export_detector"
                )
            self._input_name, self._output_name = inputs[0].name, ""
            return
        if len(inputs) != 1 or len(outputs) != 1:
            raise StoreError(
                f"{self.model_path} must have one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        expected = list(self.config.data_config["input_size"])
        shape = inputs[0].shape
        if len(shape) != 4 or [int(s) if isinstance(s, int) else s for s in shape[1:]] != expected:
            raise StoreError(
                f"{self.model_path} takes input shape {shape}, but deploy.json says (B, *{expected})"
            )
        if isinstance(shape[0], int):
            raise StoreError(
                f"{self.model_path} has a fixed batch size {shape[0]}; export it again (dynamic batch)"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != self.config.output_size):
            raise StoreError(
                f"{self._origin}: field 'output.size' is {self.config.output_size}, but {self.model_path.name} "
                f"outputs shape {out_shape}; export the model again"
            )

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.config.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def output_size(self) -> int:
        return self.config.output_size

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.preprocessor.input_size

    def __repr__(self) -> str:
        return (
            f"Predictor(task={self.task!r}, output_size={self.output_size}, precision={self.precision!r}, "
            f"input_size={self.input_size}, model={str(self.model_path)!r})"
        )

    def info(self) -> dict[str, Any]:
        """JSON-able description: task, sizes, classes, precision, threads, preprocessing, source."""
        return {
            "task": self.task,
            "output_size": self.output_size,
            "normalization": self.config.normalization,
            "classes": list(self.classes),
            "precision": self.precision,
            "available_precisions": list(self.config.models),
            "threads": self.threads,
            "input_size": list(self.input_size),
            "data_config": self.config.essentials()["data_config"],
            "source": self.config.source,
            "model_file": self.model_path.name,
            **({"detection": self.config.detection} if self.config.detection is not None else {}),
        }

    # -- inference ------------------------------------------------------------------------------------------
    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Decode and preprocess images to the model's ``(B, 3, H, W)`` float32 input (letterboxed for detectors)."""
        if self.letterbox is not None:
            return self.letterbox.batch(_as_list(images))
        return self.preprocessor.batch(_as_list(images))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output ``(B, D or C)`` float32 of a preprocessed ``(B, 3, H, W)`` batch.

        Batches larger than ``batch_size`` are split. Safe to call from several threads (one ONNX Runtime
        session; calls run concurrently on its thread pool).
        """
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array (B, 3, H, W), got {type(batch).__name__}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_size:
            raise ValueError(
                f"batch must have shape (B, {', '.join(map(str, self.input_size))}), got {batch.shape}"
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.task == "detection":  # (B, K, 6): x1, y1, x2, y2, score, label (-1 on padding rows)
            if batch.shape[0] == 0:
                return np.zeros((0, 0, 6), dtype=np.float32)
            packed = [
                pack_detections(
                    self.session.run(
                        list(DETECTION_OUTPUTS), {self._input_name: batch[i : i + self.batch_size]}
                    )
                )
                for i in range(0, batch.shape[0], self.batch_size)
            ]
            return packed[0] if len(packed) == 1 else np.concatenate(packed)
        if batch.shape[0] == 0:
            return np.zeros((0, self.output_size), dtype=np.float32)
        parts = [
            self.session.run([self._output_name], {self._input_name: batch[i : i + self.batch_size]})[0]
            for i in range(0, batch.shape[0], self.batch_size)
        ]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if out.ndim != 2 or out.shape[1] != self.output_size:  # a symbolic output width is checked here
            raise StoreError(
                f"{self._origin}: field 'output.size' is {self.output_size}, but {self.model_path.name} "
                f"returned shape {out.shape}; export the model again"
            )
        return np.asarray(out, dtype=np.float32)

    def embed(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of images (paths, bytes, PIL images or RGB arrays).

        Raises:
            FrugalVisionError: the model is a classifier (use :meth:`predict`).
        """
        if self.task != "embedding":
            raise FrugalVisionError(
                f"this is a {self.task} model; use {'detect' if self.task == 'detection' else 'predict'}() "
                "(embed() needs an embedding model)"
            )
        return self.run(self.preprocess(images))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``(N, C)`` class probabilities from logits: softmax (classification) or sigmoid (multilabel)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.task == "classification":
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
        if self.task == "multilabel":
            return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # sigmoid, no overflow for large |z|
        raise FrugalVisionError(
            "this is an embedding model; it outputs vectors, not class scores (use embed())"
        )

    def decide(self, logits: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """:class:`Prediction` per row of ``logits (N, C)``: top-``k`` classes, or those over their thresholds."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        probs = self.probabilities(logits)
        thresholds = np.asarray(self.config.thresholds or [0.5] * len(self.classes), dtype=np.float32)
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            if self.task == "classification":
                chosen = order[: min(top_k, len(order))]
            else:
                chosen = order[row[order] >= thresholds[order]]
            out.append(Prediction.of(row, chosen, self.classes))
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5) -> list[Prediction]:
        """Class decisions for images (classification and multilabel models); see :meth:`decide`."""
        if self.task == "embedding":
            raise FrugalVisionError("this is an embedding model; it has no classes to predict (use embed())")
        if self.task == "detection":
            raise FrugalVisionError("this is a detection model; use detect() for its boxes")
        return self.decide(self.run(self.preprocess(images)), top_k=top_k)

    def detect(
        self, images: ImageInput | Sequence[ImageInput], score_threshold: float | None = None
    ) -> list[Detection]:
        """Objects in images (detection models): one :class:`~frugalvision.runtime.detection.Detection` per image,
        boxes ``(n, 4)`` xyxy in the ORIGINAL image's pixels, scores, class ids and names, best first.

        Images are letterboxed as in training; the NMS ran inside the ONNX graph with the thresholds recorded in
        ``deploy.json`` (``detection.nms``). ``score_threshold`` keeps only detections scoring at least that much
        (it can raise the exported threshold, not lower it).
        """
        if self.letterbox is None:
            raise FrugalVisionError(f"this is a {self.task} model; detect() needs a detection model")
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        batch, metas = self.letterbox.batch_with_meta(_as_list(images))
        return unpack_detections(self.run(batch), metas, self.classes, score_threshold or 0.0)
