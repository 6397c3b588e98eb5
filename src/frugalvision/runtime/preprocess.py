"""timm's evaluation preprocessing in numpy + Pillow: the same pixels as training, without torch.

timm builds its eval transform (``timm.data.transforms_factory.transforms_imagenet_eval``) from a model's
``data_config``; on PIL images each step runs in Pillow, so repeating the steps with Pillow gives the same
numbers (the tests check equality on real photos):

1. resize with the config's ``interpolation`` (Pillow's resampling filter, antialiased):

   * ``crop_mode="center"`` (default): the shorter side to ``floor(size / crop_pct)``, the longer side to
     ``int(new_short * long / short)`` (torchvision's ``Resize(int)``); for a non-square ``input_size``, both
     sides scaled by one ratio so that the image covers ``floor(size / crop_pct)`` (timm's ``ResizeKeepRatio``);
   * ``"squash"``: both sides to ``floor(size / crop_pct)``, ignoring the aspect ratio;
   * ``"border"``: the longer side to ``floor(size / crop_pct)``, aspect kept;

2. center crop to ``input_size`` (zero padding where the image is smaller; ``"border"`` pads with the mean colour),
   the top-left corner at ``round((H - h) / 2), round((W - w) / 2)``;
3. to float32 in ``[0, 1]`` (``/ 255``), then ``(x - mean) / std`` per channel, channels first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from frugalvision._pixels import MAX_ASPECT_RATIO, MAX_RESIZED_PIXELS, ResizeRule, check_image_size
from frugalvision.runtime._image import ImageInput, decode_image

__all__ = ["INTERPOLATIONS", "Preprocessor", "PreprocessorBase", "resample_filter"]

#: timm interpolation names and the Pillow filter each one means (torchvision's ``pil_modes_mapping``).
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_CROP_MODES = ("center", "squash", "border")
_DEFAULT_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT, used when crop_pct is missing or None


def resample_filter(interpolation: Any, key: str = "interpolation") -> Image.Resampling:
    """The Pillow filter of a timm ``interpolation`` name (:data:`INTERPOLATIONS`); ``key`` names the setting in
    the error.

    Raises:
        ValueError: not one of :data:`INTERPOLATIONS`.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{key} must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return INTERPOLATIONS[interpolation]


class PreprocessorBase:
    """What every preprocessor of the runtime shares (:class:`Preprocessor`, and the detectors'
    :class:`~frugalvision.runtime.LetterboxPreprocessor`): a ``(3, H, W)`` input, the normalisation
    ``(x / 255 - mean) / std`` in torch's op order, and a batch filled one image at a time.

    A subclass sets ``height``, ``width``, ``mean`` and ``std`` (float32 ``(3,)``) and implements :meth:`pixels`.
    """

    height: int
    width: int
    mean: np.ndarray
    std: np.ndarray

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(3, H, W)``."""
        return 3, self.height, self.width

    def pixels(self, image: ImageInput) -> np.ndarray:
        """One image (path, bytes, PIL image or RGB array) to its ``(H, W, 3)`` uint8 pixels, before
        normalisation."""
        raise NotImplementedError

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """``(..., H, W, 3)`` uint8 to ``(..., 3, H, W)`` float32: ``(x / 255 - mean) / std`` (torch's op order)."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, image: ImageInput) -> np.ndarray:
        """One image (path, bytes, PIL image or RGB array) to ``(3, H, W)`` float32."""
        return self.normalize(self.pixels(image))

    def batch(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Several images to ``(B, 3, H, W)`` float32 (``B = len(images)``, may be 0)."""
        return self._batch(images, self.pixels)

    def _batch(self, images: Sequence[ImageInput], pixels: Callable[[ImageInput], np.ndarray]) -> np.ndarray:
        """``(B, 3, H, W)`` float32 of ``images``, ``pixels`` giving each image's ``(H, W, 3)`` uint8 pixels."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a sequence of images, got {type(images).__name__}")
        out = np.empty((len(images), self.height, self.width, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = pixels(image)
        return self.normalize(out)


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"data_config[{key!r}] must be 3 numbers (one per RGB channel), got {value!r}")
    out = tuple(float(v) for v in value)
    return out[0], out[1], out[2]


class Preprocessor(PreprocessorBase):
    """Images to the normalised ``(B, 3, H, W)`` float32 batch a model expects, from its timm ``data_config``.

    Args:
        data_config: timm's preprocessing config (``Backbone.data_config`` / a deploy bundle's ``data_config``):
            ``input_size`` ``(3, H, W)``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``
            and optionally ``crop_border_pixels``. Lists and tuples are both accepted.
        max_pixels: refuse larger images when decoding (see :func:`~frugalvision.runtime.decode_image`), and
            images the resize step would bring to more pixels (40 million when ``None``).
        max_aspect: refuse images whose longer side is more than this many times the shorter (default 50);
            ``None``: any.

    Every image is checked from its size before it is decoded or resized (see :attr:`resize_rule`): a 1 x 30000
    PNG, which the resize would bring to 256 x 7,680,000 pixels, raises
    :class:`~frugalvision.errors.ImageTooLargeError` instead of allocating them.

    Example:
        >>> pre = Preprocessor({"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3,
        ...                     "std": (0.5,) * 3, "crop_pct": 0.875, "crop_mode": "center"})
        >>> pre.batch(["cat.jpg", "dog.png"]).shape  # doctest: +SKIP
        (2, 3, 224, 224)
    """

    def __init__(
        self,
        data_config: Mapping[str, Any],
        *,
        max_pixels: int | None = None,
        max_aspect: float | None = MAX_ASPECT_RATIO,
    ) -> None:
        if not isinstance(data_config, Mapping):
            raise TypeError(
                f"data_config must be a mapping (timm's data config), got {type(data_config).__name__}"
            )
        size = data_config.get("input_size")
        if (
            not isinstance(size, Sequence)
            or len(size) != 3
            or int(size[0]) != 3
            or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size)
        ):
            raise ValueError(f"data_config['input_size'] must be (3, H, W) with positive ints, got {size!r}")
        self.height, self.width = int(size[1]), int(size[2])
        interpolation = data_config.get("interpolation", "bilinear")
        self._resample = resample_filter(interpolation, "data_config['interpolation']")
        self.interpolation: str = interpolation
        crop_pct = data_config.get("crop_pct") or _DEFAULT_CROP_PCT
        if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool) or not 0 < crop_pct <= 10:
            raise ValueError(f"data_config['crop_pct'] must be a number in (0, 10], got {crop_pct!r}")
        self.crop_pct = float(crop_pct)
        crop_mode = data_config.get("crop_mode") or "center"
        if crop_mode not in _CROP_MODES:
            raise ValueError(
                f"data_config['crop_mode'] must be one of {', '.join(_CROP_MODES)}, got {crop_mode!r}"
            )
        self.crop_mode: str = crop_mode
        border = data_config.get("crop_border_pixels") or 0
        if isinstance(border, bool) or not isinstance(border, int) or border < 0:
            raise ValueError(f"data_config['crop_border_pixels'] must be an int >= 0, got {border!r}")
        self.crop_border_pixels = border
        self._mean64 = _triple(data_config.get("mean"), "mean")
        self.mean = np.array(self._mean64, dtype=np.float32)
        self.std = np.array(_triple(data_config.get("std"), "std"), dtype=np.float32)
        if not (self.std > 0).all():
            raise ValueError(f"data_config['std'] must be > 0, got {self.std.tolist()}")
        self.max_pixels = max_pixels
        self.max_aspect = max_aspect
        # timm: scale_size = floor(size / crop_pct) per side
        scale = (math.floor(self.height / self.crop_pct), math.floor(self.width / self.crop_pct))
        if self.crop_mode == "squash":
            rule = ResizeRule("squash", scale, border=border)
        elif self.crop_mode == "center" and scale[0] == scale[1]:
            rule = ResizeRule("shorter", scale, border=border)  # torchvision Resize(int)
        else:  # timm ResizeKeepRatio: cover the target (centre crop) or fit inside it (border)
            rule = ResizeRule(
                "ratio", scale, longest=1.0 if self.crop_mode == "border" else 0.0, border=border
            )
        #: The resize step as a function of the input size (what :func:`~frugalvision.runtime.decode_image` checks).
        self.resize_rule = rule

    def __repr__(self) -> str:
        return (
            f"Preprocessor(input_size={self.input_size}, interpolation={self.interpolation!r}, "
            f"crop_pct={self.crop_pct}, crop_mode={self.crop_mode!r})"
        )

    # -- geometry ----------------------------------------------------------------------------------------------
    def resize_crop(self, image: Image.Image, name: str = "image") -> np.ndarray:
        """Resize and crop an ``RGB`` image: ``(H, W, 3)`` uint8, before normalisation.

        Raises:
            ImageTooLargeError: the resize would give more than ``max_pixels`` pixels (40 million when ``None``);
                checked before resizing, the message starts with ``name``.
        """
        if image.mode != "RGB":
            raise ValueError(
                f"resize_crop expects an RGB image, got mode {image.mode!r}; decode it with decode_image"
            )
        check_image_size(
            image.width,
            image.height,
            name,
            max_aspect=None,  # the decoder's check; here only what the resize allocates
            resize=self.resize_rule,
            max_resized_pixels=self.max_pixels or MAX_RESIZED_PIXELS,
        )
        new_w, new_h = self.resize_rule.output_size(image.width, image.height)  # trims the border first
        if self.crop_border_pixels:
            b, (w, h) = self.crop_border_pixels, image.size
            image = image.crop(
                (min(b, h), min(b, h), min(b, h) + max(0, w - 2 * b), min(b, h) + max(0, h - 2 * b))
            )
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), self._resample)
        pixels = np.asarray(image, dtype=np.uint8)
        fill = [round(255 * v) for v in self._mean64] if self.crop_mode == "border" else [0, 0, 0]
        return _center_crop_or_pad(pixels, self.height, self.width, fill)

    def _decode(self, image: ImageInput) -> Image.Image:
        return decode_image(
            image, max_pixels=self.max_pixels, max_aspect=self.max_aspect, resize=self.resize_rule
        )

    def pixels(self, image: ImageInput) -> np.ndarray:
        """One image (path, bytes, PIL image or RGB array) decoded, resized and cropped: ``(H, W, 3)`` uint8."""
        return self.resize_crop(self._decode(image))


def _center_crop_or_pad(pixels: np.ndarray, height: int, width: int, fill: Sequence[int]) -> np.ndarray:
    """torchvision's ``center_crop`` on ``(h, w, 3)``: pad to at least the size (left/top get the smaller half),
    then cut at ``round((H - height) / 2), round((W - width) / 2)``."""
    h, w = pixels.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        padded = np.empty((max(h, height), max(w, width), 3), dtype=np.uint8)
        padded[:] = np.asarray(fill, dtype=np.uint8)
        padded[top : top + h, left : left + w] = pixels
        pixels, (h, w) = padded, padded.shape[:2]
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return pixels[top : top + height, left : left + width]
