"""Torch-free object detection at run time: the letterbox of training in numpy + Pillow, and the decoding of an
exported detector's outputs (NMS already inside the ONNX graph) back to boxes in the original image's pixels.

Letterbox (the detection contract of issue 14): an ``h x w`` image goes into a square network input of side
``S`` (a multiple of 32) without changing its aspect ratio::

    scale = min(S / h, S / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))       # resized with Pillow
    pad_x, pad_y = (S - new_w) // 2, (S - new_h) // 2                         # left / top border, filled with ``fill``

and a box in input pixels maps back to the original image by ``(box - [pad_x, pad_y, pad_x, pad_y]) / scale``,
clipped to ``[0, w] x [0, h]``. The resize is Pillow's (antialiased), the same call torchvision's
``transforms.v2.functional.resize`` makes on a PIL image, so a torchvision letterbox (resize + pad) gives the very
same pixels (a test checks it).

The exported graph (:func:`frugalvision.deploy.export_detector`) has four outputs per image: ``boxes (B, K, 4)``
xyxy in input pixels, ``scores (B, K)``, ``labels (B, K)`` int64 and ``num_detections (B,)``; rows past
``num_detections`` are padding (score 0, label -1). :func:`pack_detections` turns them into one ``(B, K, 6)``
float32 array ``[x1, y1, x2, y2, score, label]`` (what :meth:`Predictor.run` returns for a detector, so the
service's micro-batcher can split it by rows), :func:`unpack_detections` into :class:`Detection` per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from frugalvision.errors import StoreError
from frugalvision.runtime._image import ImageInput, decode_image
from frugalvision.runtime.preprocess import INTERPOLATIONS, PreprocessorBase, resample_filter

__all__ = [
    "DEFAULT_FILL",
    "DETECTION_OUTPUTS",
    "Detection",
    "LetterboxMeta",
    "LetterboxPreprocessor",
    "check_detection_record",
    "letterbox_geometry",
    "pack_detections",
    "square_side",
    "unpack_detections",
]

#: Output names of an exported detector, in graph order.
DETECTION_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "labels", "num_detections")
#: Letterbox border colour (YOLO's grey 114) unless the deploy record says otherwise.
DEFAULT_FILL = 114


@dataclass(frozen=True)
class LetterboxMeta:
    """How one image was letterboxed: enough to map boxes back (the contract's per-image meta).

    Attributes:
        scale: input pixels per original pixel.
        pad: ``(pad_x, pad_y)``, the left and top border in input pixels.
        size: original ``(h, w)``.
        resized: ``(new_h, new_w)``, the image's size inside the input.
    """

    scale: float
    pad: tuple[int, int]
    size: tuple[int, int]
    resized: tuple[int, int]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """``(n, 4)`` xyxy boxes in input pixels -> original pixels: ``(box - pad) / scale``, clipped, float32."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        px, py = self.pad
        out = (b - np.array([px, py, px, py], dtype=np.float64)) / self.scale
        h, w = self.size
        out[:, 0::2] = out[:, 0::2].clip(0, w)
        out[:, 1::2] = out[:, 1::2].clip(0, h)
        return out.astype(np.float32)


def letterbox_geometry(height: int, width: int, size: int) -> LetterboxMeta:
    """The letterbox of an ``height x width`` image into a ``size x size`` input (equations in the module doc)."""
    if min(height, width) < 1 or size < 1:
        raise ValueError(f"letterbox needs positive sizes, got image {height}x{width} and input side {size}")
    scale = min(size / height, size / width)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    return LetterboxMeta(
        scale=float(scale),
        pad=((size - new_w) // 2, (size - new_h) // 2),
        size=(int(height), int(width)),
        resized=(int(new_h), int(new_w)),
    )


class LetterboxPreprocessor(PreprocessorBase):
    """Images -> letterboxed, normalised ``(B, 3, S, S)`` float32 and one :class:`LetterboxMeta` each.

    Args:
        size: input side ``S``.
        mean, std: per-channel normalisation of ``x / 255`` (the backbone's).
        interpolation: Pillow filter name (one of :data:`~frugalvision.runtime.INTERPOLATIONS`).
        fill: border grey level (0-255) before normalisation.
        max_pixels, max_aspect: refuse larger or more elongated images when decoding
            (:func:`~frugalvision.runtime.decode_image`). The resized image is never larger than ``S x S``.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        interpolation: str = "bilinear",
        fill: int = DEFAULT_FILL,
        max_pixels: int | None = None,
        max_aspect: float | None = 50.0,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self._resample = resample_filter(interpolation)
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
            raise ValueError(f"fill must be an int in [0, 255], got {fill!r}")
        self.size, self.fill, self.interpolation = size, fill, interpolation
        self.height = self.width = size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)
        if not (self.std > 0).all():
            raise ValueError(f"std must be > 0, got {self.std.tolist()}")
        self.max_pixels, self.max_aspect = max_pixels, max_aspect

    @classmethod
    def from_config(
        cls, data_config: Mapping[str, Any], detection: Mapping[str, Any], **kwargs: Any
    ) -> LetterboxPreprocessor:
        """From a deploy record's ``data_config`` (size, mean, std, interpolation) and ``detection.letterbox``."""
        letterbox = detection.get("letterbox") or {}
        return cls(
            int(data_config["input_size"][1]),
            data_config["mean"],
            data_config["std"],
            interpolation=str(letterbox.get("interpolation", data_config.get("interpolation", "bilinear"))),
            fill=int(letterbox.get("fill", DEFAULT_FILL)),
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"LetterboxPreprocessor(size={self.size}, interpolation={self.interpolation!r}, fill={self.fill})"
        )

    def decode(self, image: ImageInput, **kwargs: Any) -> Image.Image:
        """:func:`~frugalvision.runtime.decode_image` with this preprocessor's limits (``kwargs`` added)."""
        return decode_image(image, max_pixels=self.max_pixels, max_aspect=self.max_aspect, **kwargs)

    def letterbox(self, image: Image.Image) -> tuple[np.ndarray, LetterboxMeta]:
        """An ``RGB`` image -> ``(S, S, 3)`` uint8 letterboxed pixels and its :class:`LetterboxMeta`."""
        if image.mode != "RGB":
            raise ValueError(
                f"letterbox expects an RGB image, got mode {image.mode!r}; decode it with decode_image"
            )
        meta = letterbox_geometry(image.height, image.width, self.size)
        new_h, new_w = meta.resized
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), self._resample)
        out = np.full((self.size, self.size, 3), self.fill, dtype=np.uint8)
        px, py = meta.pad
        out[py : py + new_h, px : px + new_w] = np.asarray(image, dtype=np.uint8)
        return out, meta

    def pixels(self, image: ImageInput) -> np.ndarray:
        """One image (path, bytes, PIL image or RGB array) decoded and letterboxed: ``(S, S, 3)`` uint8."""
        return self.letterbox(self.decode(image))[0]

    def batch_with_meta(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[LetterboxMeta]]:
        """Images (paths, bytes, PIL images, RGB arrays) -> ``(B, 3, S, S)`` float32 and their metas."""
        metas: list[LetterboxMeta] = []

        def pixels(image: ImageInput) -> np.ndarray:
            out, meta = self.letterbox(self.decode(image))
            metas.append(meta)
            return out

        return self._batch(images, pixels), metas


@dataclass(frozen=True)
class Detection:
    """The objects found in one image.

    Attributes:
        boxes: ``(n, 4)`` float32 xyxy in the ORIGINAL image's pixels, best score first.
        scores: ``(n,)`` float32 class probabilities.
        labels: ``(n,)`` int64 class ids.
        names: the class names of ``labels``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes": [[float(v) for v in box] for box in self.boxes],
            "scores": [float(s) for s in self.scores],
            "labels": [int(v) for v in self.labels],
            "names": list(self.names),
        }


def pack_detections(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The four graph outputs (:data:`DETECTION_OUTPUTS`) -> ``(B, K, 6)`` float32 ``[x1, y1, x2, y2, score, label]``;
    padding rows get label ``-1``."""
    boxes, scores, labels, count = (np.asarray(o) for o in outputs)
    if (
        boxes.ndim != 3
        or boxes.shape[2] != 4
        or scores.shape != boxes.shape[:2]
        or labels.shape != scores.shape
    ):
        raise StoreError(
            f"a detector must output boxes (B, K, 4), scores (B, K), labels (B, K); got {boxes.shape}, "
            f"{scores.shape}, {labels.shape}"
        )
    valid = np.arange(scores.shape[1])[None, :] < count.reshape(-1, 1)
    out = np.concatenate([boxes, scores[..., None], labels[..., None].astype(np.float32)], axis=2)
    out = out.astype(np.float32)
    out[~valid] = 0.0
    out[..., 5][~valid] = -1.0
    return out


def unpack_detections(
    packed: np.ndarray,
    metas: Sequence[LetterboxMeta],
    classes: Sequence[str],
    score_threshold: float = 0.0,
) -> list[Detection]:
    """``(B, K, 6)`` packed rows + letterbox metas -> one :class:`Detection` per image, boxes in original pixels,
    keeping rows with a label and ``score >= score_threshold`` whose box is not empty once clipped to the image
    (a box lying wholly in the letterbox border)."""
    if packed.ndim != 3 or packed.shape[2] != 6 or packed.shape[0] != len(metas):
        raise ValueError(f"packed detections must be (B={len(metas)}, K, 6), got {packed.shape}")
    out = []
    for rows, meta in zip(packed, metas, strict=True):
        keep = (rows[:, 5] >= 0) & (rows[:, 4] >= score_threshold) & (rows[:, 4] > 0)
        rows = rows[keep]
        order = np.argsort(-rows[:, 4], kind="stable")
        rows = rows[order]
        boxes = meta.to_original(rows[:, :4])
        inside = (boxes[:, 2] > boxes[:, 0]) & (
            boxes[:, 3] > boxes[:, 1]
        )  # empty once clipped: in the border only
        rows, boxes = rows[inside], boxes[inside]
        labels = rows[:, 5].astype(np.int64)
        out.append(
            Detection(
                boxes=boxes,
                scores=rows[:, 4].astype(np.float32),
                labels=labels,
                names=tuple(classes[i] if 0 <= i < len(classes) else str(i) for i in labels),
            )
        )
    return out


def check_detection_record(record: Any, origin: str, num_classes: int) -> dict[str, Any]:
    """Check ``deploy.json``'s ``detection`` field; raise :class:`StoreError` naming the bad field."""
    from frugalvision._fields import check_int_field, check_mapping_field, check_number_field

    rec = check_mapping_field(record, origin, "detection")
    nms = check_mapping_field(rec.get("nms"), origin, "detection.nms")
    check_number_field(nms.get("score_threshold"), origin, "detection.nms.score_threshold", low=0, high=1)
    check_number_field(nms.get("iou_threshold"), origin, "detection.nms.iou_threshold", low=0, high=1)
    check_int_field(nms.get("max_detections"), origin, "detection.nms.max_detections", low=1)
    letterbox = check_mapping_field(rec.get("letterbox"), origin, "detection.letterbox")
    check_int_field(letterbox.get("fill", DEFAULT_FILL), origin, "detection.letterbox.fill", low=0, high=255)
    if "interpolation" in letterbox and letterbox["interpolation"] not in INTERPOLATIONS:
        raise StoreError(
            f"{origin}: field 'detection.letterbox.interpolation' must be one of {', '.join(INTERPOLATIONS)}, "
            f"got {letterbox['interpolation']!r}"
        )
    if num_classes < 1:
        raise StoreError(f"{origin}: a detection model needs at least one class")
    return dict(rec)


def square_side(data_config: Mapping[str, Any], origin: str) -> int:
    """The input side ``S`` of a detector's ``data_config`` (square, a multiple of 32), or :class:`StoreError`."""
    _, h, w = (int(s) for s in data_config["input_size"])
    if h != w or h % 32:
        raise StoreError(
            f"{origin}: field 'data_config.input_size' of a detector must be square with a side that is a "
            f"multiple of 32, got {list(data_config['input_size'])}"
        )
    return h
