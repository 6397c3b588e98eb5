"""Torch-free pixel rules shared by every image decoder: size limits checked before decoding, and any Pillow mode
to upright 8-bit RGB.

:func:`frugalvision.data.load_image` (training, evaluation) and :func:`frugalvision.runtime.decode_image`
(the torch-free runtime and the HTTP service) both call :func:`check_image_size` on the size read from the file's
header, before any pixel is decoded, and both end in :func:`to_rgb`, so an image looks the same to a deployed
model as it did in training and the same files are refused everywhere. This module imports only numpy and Pillow:
``frugalvision.data`` cannot be imported by the runtime, because that package imports torch.

Why a limit on the aspect ratio and on the resized size, not only on the input's pixels: preprocessing resizes the
*shorter* side to a fixed length (256 for a 224 model) before cropping, so a ``1 x N`` image of a hundred bytes
becomes ``256 x 256 N`` pixels -- 23 GB for ``N = 30000``. :class:`ResizeRule` computes that size from the input's
size alone, so it is refused before it is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from frugalvision.errors import CorruptImageError, ImageTooLargeError

__all__ = [
    "DECODE_ERRORS",
    "MAX_ASPECT_RATIO",
    "MAX_RESIZED_PIXELS",
    "ResizeRule",
    "check_image_size",
    "to_rgb",
]

#: Longest side / shorter side above which an image is refused (a 50:1 image keeps 2 % of itself in a centre crop).
MAX_ASPECT_RATIO: float = 50.0

#: Most pixels a resize step may produce (the service's default ``max_pixels``), when no other limit is given.
MAX_RESIZED_PIXELS: int = 40_000_000

#: Exceptions Pillow's decoders are known to raise on damaged or hostile data. ``OSError`` covers "image file is
#: truncated", ``UnidentifiedImageError`` and unreadable files; plugins raise the others on malformed headers. A
#: programming error elsewhere (``NameError``, ``AttributeError``) still propagates.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)


@dataclass(frozen=True)
class ResizeRule:
    """The resize step of a preprocessing, as a function of the input's size alone (no pixel is touched).

    Modes (``size`` is the target ``(H, W)``; ``w, h`` the input after trimming ``border`` pixels from each side,
    as timm's ``TrimBorder`` / ``crop_border_pixels`` do):

    * ``"shorter"`` -- torchvision's ``Resize(int)``: the shorter side to ``s = size[0]``, the longer to
      ``int(s * long / short)``; with ``max_size``, a longer side over it is brought to ``max_size`` and the
      shorter to ``int(max_size * s / long')``;
    * ``"longer"`` -- torchvision's ``v2.Resize(None, max_size=s)``: the longer side to ``s = size[0]``, the shorter
      to ``int(s * short / long)``;
    * ``"ratio"`` -- timm's ``ResizeKeepRatio``: one ratio
      ``r = longest * max(h / H, w / W) + (1 - longest) * min(h / H, w / W)``, new sides ``round(h / r), round(w / r)``
      (``longest=0``: the image covers the target, as timm's centre crop of a non-square input; ``1``: it fits inside);
    * ``"squash"`` -- both sides to ``size``, aspect ignored.

    Example:
        >>> ResizeRule("shorter", (256, 256)).output_size(1, 30000)  # a 1 x 30000 image
        (256, 7680000)
    """

    mode: Literal["shorter", "longer", "ratio", "squash"]
    size: tuple[int, int]
    longest: float = 0.0
    max_size: int | None = None
    border: int = 0

    def trimmed_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the border trim (either may be 0)."""
        b = self.border
        return max(0, width - 2 * b), max(0, height - 2 * b)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(new_width, new_height)`` the resize step gives an input of ``width x height`` pixels.

        Raises:
            ValueError: nothing is left of the image after the border trim.
        """
        w, h = self.trimmed_size(width, height)
        if w < 1 or h < 1:
            raise ValueError(
                f"nothing is left of a {width}x{height} image after trimming {self.border} pixels"
            )
        target_h, target_w = self.size
        if self.mode == "squash":
            return target_w, target_h
        if self.mode == "shorter":
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = target_h, int(target_h * long / short)
            if self.max_size is not None and new_long > self.max_size:
                new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
            return (new_short, new_long) if w <= h else (new_long, new_short)
        if self.mode == "longer":
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = int(target_h * short / long), target_h
            return (new_short, new_long) if w <= h else (new_long, new_short)
        ratio_h, ratio_w = h / target_h, w / target_w
        ratio = max(ratio_h, ratio_w) * self.longest + min(ratio_h, ratio_w) * (1.0 - self.longest)
        return round(w / ratio), round(h / ratio)


def check_image_size(
    width: int,
    height: int,
    name: str,
    *,
    max_pixels: int | None = None,
    max_aspect: float | None = MAX_ASPECT_RATIO,
    resize: ResizeRule | None = None,
    max_resized_pixels: int | None = MAX_RESIZED_PIXELS,
) -> None:
    """Refuse an image from its size alone (read from the header), before any of its pixels is allocated.

    The checks, in order: the input's pixels ``width * height <= max_pixels``; the aspect ratio
    ``max(width, height) / min(width, height) <= max_aspect``; and, with a ``resize`` rule, the resized image
    ``new_width * new_height <= max_resized_pixels``. As the EXIF orientation is not read here (for PNG, Pillow
    would decode the whole file to find it), the resize is checked for both orientations and the larger counts.
    ``None`` switches a check off.

    Raises:
        ImageTooLargeError: a limit is exceeded; the message starts with ``name`` and gives the size and the limit.
        CorruptImageError: the image has no pixels (or none left after the rule's border trim).
    """
    if width < 1 or height < 1:
        raise CorruptImageError(f"{name}: the image is {width}x{height} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}"
        )
    aspect = max(width, height) / min(width, height)
    if max_aspect is not None and aspect > max_aspect:
        shown = f"{aspect:.2f}".rstrip("0").rstrip(".")
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels has an aspect ratio of {shown}:1, over the limit of "
            f"{max_aspect:g}:1 (preprocessing would scale its shorter side up to the model's input size)"
        )
    if resize is None or max_resized_pixels is None:
        return
    if min(resize.trimmed_size(width, height)) < 1:
        raise CorruptImageError(
            f"{name}: nothing is left of the {width}x{height} image after trimming {resize.border} border pixels"
        )
    new_w, new_h = max(
        resize.output_size(width, height), resize.output_size(height, width), key=lambda s: s[0] * s[1]
    )
    if new_w * new_h > max_resized_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels would be resized to {new_w}x{new_h} = {new_w * new_h:,} pixels, "
            f"over the limit of {max_resized_pixels:,}"
        )


def _gray_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float grayscale to ``L`` instead of clipping at 255.

    Pillow's ``convert("L")`` clips these modes, which turns most 16-bit photographs white. The rules:
    ``I;16*`` is 16-bit by definition (scaled by 255/65535); ``I`` (how older Pillow opens 16-bit PNGs) is kept if
    it fits in 0..255, scaled as 16-bit if it fits in 0..65535, else min-max scaled; ``F`` in [0, 1] is scaled by
    255, otherwise clipped to 0..255.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        values = values * (255.0 / 65535.0)
    elif img.mode == "I":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0 or high > 65535:
            values = (values - low) * (255.0 / max(high - low, 1.0))
        elif high > 255:
            values = values * (255.0 / 65535.0)
    else:  # "F"
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to ``RGB``: high bit depths scaled to 8 bits, transparency composited on white, palette,
    grayscale and CMYK converted.

    White, not black, behind transparent pixels: transparent parts of logos and icons are usually meant as
    "background", and black changes an embedding far more than white does.
    """
    if img.mode.startswith("I") or img.mode == "F":
        img = _gray_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
