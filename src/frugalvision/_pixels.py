"""Torch-free pixel rules shared by every image decoder: any Pillow mode to upright 8-bit RGB.

:func:`frugalvision.data.load_image` (training, evaluation) and :func:`frugalvision.runtime.decode_image`
(the torch-free runtime and the HTTP service) both end in :func:`to_rgb`, so an image looks the same to a deployed
model as it did in training. This module imports only numpy and Pillow: ``frugalvision.data`` cannot be imported
by the runtime, because that package imports torch.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

__all__ = ["DECODE_ERRORS", "to_rgb"]

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
