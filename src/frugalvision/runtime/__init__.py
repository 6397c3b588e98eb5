"""Torch-free inference: an exported model on ONNX Runtime, with the preprocessing it was trained with.

Needs only numpy, Pillow and onnxruntime (``pip install frugalvision[runtime]``); importing this package never
imports torch (a test checks it).

- :class:`Predictor` runs a deploy bundle written by ``frugalvision export`` (``embed`` / ``predict`` /
  ``detect``; detectors are letterboxed by :class:`LetterboxPreprocessor`, their boxes come back as
  :class:`Detection` in the original image's pixels).
- :class:`Preprocessor` is timm's evaluation transform in numpy + Pillow (equal to ``backbone.transform()``).
- :func:`decode_image` turns files, bytes or arrays into upright RGB with the same rules as training, and
  refuses unaccepted formats and oversized images before decoding them.
- :func:`read_deploy_config` / :class:`DeployConfig` read ``deploy.json``.
"""

from frugalvision.runtime._image import (
    DEFAULT_FORMATS,
    ImageInput,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    to_rgb,
)
from frugalvision.runtime.config import (
    DEPLOY_FILE,
    METADATA_KEY,
    TASKS,
    DeployConfig,
    is_deploy_bundle,
    read_deploy_config,
)
from frugalvision.runtime.detection import Detection, LetterboxMeta, LetterboxPreprocessor, letterbox_geometry
from frugalvision.runtime.predictor import PRECISIONS, Prediction, Predictor, bf16_fastmath_available
from frugalvision.runtime.preprocess import INTERPOLATIONS, Preprocessor

__all__ = [
    "DEFAULT_FORMATS",
    "DEPLOY_FILE",
    "INTERPOLATIONS",
    "METADATA_KEY",
    "PRECISIONS",
    "TASKS",
    "DeployConfig",
    "Detection",
    "ImageInput",
    "ImageTooLargeError",
    "LetterboxMeta",
    "LetterboxPreprocessor",
    "Prediction",
    "Predictor",
    "Preprocessor",
    "UnsupportedImageError",
    "bf16_fastmath_available",
    "decode_image",
    "is_deploy_bundle",
    "letterbox_geometry",
    "read_deploy_config",
    "to_rgb",
]
