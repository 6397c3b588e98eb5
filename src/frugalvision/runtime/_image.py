"""Torch-free image decoding for the runtime and the service: bytes, files or arrays to upright 8-bit RGB.

The pixel rules are those of :func:`frugalvision.data.load_image` -- both end in :func:`frugalvision._pixels.to_rgb`
(EXIF orientation applied, high bit depths scaled to 8 bits, transparency composited on white, first frame of
animations) -- so an image looks the same to a deployed model as it did in training. A test checks that both
decoders agree on every image mode.

Untrusted input (the HTTP service) is checked before any pixel is decoded: the container format against an
allow-list, and the pixel count, the aspect ratio and the size the preprocessing would resize the image to against
limits, from the size in the header (:func:`frugalvision._pixels.check_image_size`) -- so a decompression bomb, or a
1 x 30000 PNG that a resize would turn into 256 x 7,680,000 pixels, is refused without allocating it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from frugalvision._pixels import DECODE_ERRORS as _DECODE_ERRORS
from frugalvision._pixels import MAX_ASPECT_RATIO, MAX_RESIZED_PIXELS, ResizeRule, check_image_size, to_rgb
from frugalvision.errors import (
    CorruptImageError,
    ImageFileMissingError,
    ImageTooLargeError,
    UnsupportedImageError,
)

__all__ = [
    "DEFAULT_FORMATS",
    "ImageInput",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "decode_image",
    "to_rgb",
]

#: Pillow format names accepted by default (``Image.format`` after opening).
DEFAULT_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})

#: What :func:`decode_image` accepts: a file path, encoded bytes, a PIL image or an ``(H, W, 3)`` uint8 RGB array.
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray


def _why(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot be decoded: {str(exc).strip() or type(exc).__name__}"


def decode_image(
    source: ImageInput,
    *,
    max_pixels: int | None = None,
    formats: Collection[str] | None = None,
    name: str | None = None,
    max_aspect: float | None = MAX_ASPECT_RATIO,
    resize: ResizeRule | None = None,
) -> Image.Image:
    """Decode ``source`` to an upright 8-bit ``RGB`` image, as :func:`frugalvision.data.load_image` does.

    Args:
        source: a file path, encoded bytes (JPEG, PNG...), a PIL image, or an ``(H, W, 3)`` uint8 RGB array.
        max_pixels: refuse images with more than this many pixels (width x height read from the header,
            before decoding). ``None``: Pillow's own guard only (``Image.MAX_IMAGE_PIXELS``).
        formats: Pillow format names accepted (e.g. :data:`DEFAULT_FORMATS`); ``None`` accepts any format
            Pillow reads. Checked on the content, never on a file name or a declared content type.
        name: how to name the image in error messages (default: the path, or "image").
        max_aspect: refuse images whose longer side is more than this many times the shorter (default 50);
            ``None``: any.
        resize: the resize step that comes next (``Preprocessor.resize_rule``): refuse images it would bring to more
            than ``max_pixels`` pixels (40 million when ``max_pixels`` is ``None``). Checked before decoding.

    Returns:
        An ``RGB`` image after the EXIF rotation.

    Raises:
        ImageFileMissingError: a path that does not exist.
        UnsupportedImageError: not an image, or a format outside ``formats``.
        ImageTooLargeError: more than ``max_pixels`` pixels, an aspect ratio over ``max_aspect``, a resized size
            over the limit, or refused by Pillow as a decompression bomb.
        CorruptImageError: a recognised image that cannot be decoded (truncated, damaged).
        TypeError / ValueError: ``source`` of another type, or an array that is not ``(H, W, 3)`` uint8.
    """
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if max_aspect is not None and (
        isinstance(max_aspect, bool) or not isinstance(max_aspect, (int, float)) or not max_aspect >= 1
    ):
        raise ValueError(f"max_aspect must be a number >= 1 or None, got {max_aspect!r}")

    def check(width: int, height: int, label: str) -> None:
        check_image_size(
            width,
            height,
            label,
            max_pixels=max_pixels,
            max_aspect=max_aspect,
            resize=resize,
            max_resized_pixels=max_pixels or MAX_RESIZED_PIXELS,
        )

    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(
                f"an image array must be (H, W, 3) uint8 RGB, got shape {source.shape} dtype {source.dtype}"
            )
        check(source.shape[1], source.shape[0], name or "image")
        return Image.fromarray(source, mode="RGB")
    if isinstance(source, Image.Image):
        check(source.width, source.height, name or "image")
        upright = ImageOps.exif_transpose(source)
        return to_rgb(upright if upright is not None else source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image"
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        stream = Path(source)
        label = name or str(stream)
        if not stream.is_file():
            raise ImageFileMissingError(f"image file not found: {stream}")
    else:
        raise TypeError(
            f"an image must be a path, bytes, a PIL image or a uint8 array, got {type(source).__name__}"
        )
    try:
        with Image.open(stream) as img:
            if formats is not None and img.format not in formats:
                raise UnsupportedImageError(
                    f"{label}: image format {img.format} is not accepted; accepted: {', '.join(sorted(formats))}"
                )
            check(img.width, img.height, label)  # from the header: nothing decoded yet
            img.load()
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright if upright is not None else img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(f"{label}: not a recognised image format") from exc
    except CorruptImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"corrupt image {label}: {_why(exc)}") from exc
