"""Export to ONNX, int8 quantisation and parity checks: from a trained model to a deploy bundle for the runtime.

- :func:`export_onnx` (any module + its timm ``data_config``), :func:`export_bundle` (a trained model bundle) and
  :func:`export_backbone` (a plain timm backbone, no training) write ``model.onnx`` + ``deploy.json``, checked
  with ``onnx.checker`` and against PyTorch (per-row cosine >= 0.9999).
- :func:`export_detector` writes a detector (issue 14's contract) with the class-aware NMS inside the ONNX graph
  (``NonMaxSuppression``), checked against ``torchvision.ops.batched_nms``; :func:`export_detector_bundle` exports
  a detection model bundle (``frugalvision train --task detection``).
- :func:`quantize_int8` adds ``model.int8.onnx`` (ONNX Runtime static quantisation, QDQ, per-channel), calibrated
  on the user's images through the runtime's own preprocessing.
- :func:`add_fused` (ONNX Runtime's transformer fusions) and :func:`add_dynamic_int8` (int8 matrix products, no
  calibration) add faster models for transformers; :func:`choose_model` measures every model of a bundle on this
  machine and records the fastest within the accuracy budget, which the runtime then runs by default.
- :func:`add_tome` adds Token Merging ViTs (fp32 and dynamic int8): less work per image, chosen only within the
  accuracy budget.
- :func:`compare_precisions` reports accuracy (Recall@1 / MAP@R, accuracy or mAP) next to speed per precision.

Needs torch (``frugalvision[full]``); the exported bundle runs with :class:`frugalvision.runtime.Predictor` alone.
"""

from frugalvision.deploy.detection import (
    DetectionExportResult,
    detection_agreement,
    export_detector,
    export_detector_bundle,
)
from frugalvision.deploy.evaluate import compare_precisions, mean_average_precision, throughput
from frugalvision.deploy.export import (
    EXPORTERS,
    ExportError,
    ExportResult,
    export_backbone,
    export_bundle,
    export_onnx,
    is_model_bundle,
    output_agreement,
    set_onnx_metadata,
)
from frugalvision.deploy.quantize import (
    CALIBRATION_METHODS,
    ImageCalibrationReader,
    QuantizeResult,
    add_bf16_fastmath,
    list_images,
    quantize_int8,
)
from frugalvision.deploy.tome import add_tome, default_tome_r, tome_support
from frugalvision.deploy.transformer import (
    EngineChoice,
    add_dynamic_int8,
    add_fused,
    choose_model,
    is_transformer_graph,
)

__all__ = [
    "CALIBRATION_METHODS",
    "EXPORTERS",
    "DetectionExportResult",
    "EngineChoice",
    "ExportError",
    "ExportResult",
    "ImageCalibrationReader",
    "QuantizeResult",
    "add_bf16_fastmath",
    "add_dynamic_int8",
    "add_fused",
    "add_tome",
    "choose_model",
    "compare_precisions",
    "default_tome_r",
    "detection_agreement",
    "export_backbone",
    "export_bundle",
    "export_detector",
    "export_detector_bundle",
    "export_onnx",
    "is_model_bundle",
    "is_transformer_graph",
    "list_images",
    "mean_average_precision",
    "output_agreement",
    "quantize_int8",
    "set_onnx_metadata",
    "throughput",
    "tome_support",
]
