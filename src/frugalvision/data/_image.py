"""Decode one image file into an RGB ``PIL.Image``, whatever its mode, orientation or defects.

Every reader and :class:`~frugalvision.data.ImageDataset` goes through :func:`load_image`, so all of them
agree on what an image looks like (upright, RGB, 8 bits per channel) and on which files count as corrupt.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from frugalvision.errors import CorruptImageError, ImageFileMissingError

__all__ = ["IMAGE_EXTENSIONS", "image_size", "is_image_file", "load_image", "normalize_extensions"]

#: File extensions read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Exceptions Pillow's decoders are known to raise on damaged or hostile files. ``OSError`` covers
# "image file is truncated", ``UnidentifiedImageError`` and unreadable files; plugins raise the others
# on malformed headers. A programming error elsewhere (``NameError``, ``AttributeError``) still propagates.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)

# EXIF orientations 5-8 include a quarter turn: width and height swap once the image is made upright.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


def normalize_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """Return ``extensions`` lower-cased with a leading dot (``"JPG"`` and ``".jpg"`` both give ``".jpg"``)."""
    if isinstance(extensions, str):
        raise TypeError(
            f"extensions must be a sequence of strings such as ('.jpg', '.png'), got {extensions!r}"
        )
    out = set()
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip(".").strip():
            raise ValueError(f"extensions must be non-empty strings such as '.jpg', got {ext!r}")
        out.add("." + ext.strip().lstrip(".").lower())
    if not out:
        raise ValueError("extensions must name at least one file extension, got an empty sequence")
    return frozenset(out)


def is_image_file(path: Path, extensions: frozenset[str]) -> bool:
    """True if ``path`` is a visible regular file whose extension (any case) is in ``extensions``."""
    return not path.name.startswith(".") and path.suffix.lower() in extensions and path.is_file()


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ImageFileMissingError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageFileMissingError(f"expected an image file, found a directory or special file: {path}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = str(exc).strip() or type(exc).__name__
    return f"cannot be decoded: {text}"


def _high_bit_depth_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float grayscale to 8 bits instead of clipping at 255.

    Pillow's ``convert("L")`` clips these modes, which turns most 16-bit photographs white. The rules:
    ``I;16*`` is 16-bit by definition (scaled by 255/65535); ``I`` (how older Pillow opens 16-bit PNGs) is
    kept if it fits in 0..255, scaled as 16-bit if it fits in 0..65535, else min-max scaled; ``F`` in
    [0, 1] is scaled by 255, otherwise clipped to 0..255.
    """
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr * (255.0 / 65535.0)
    elif img.mode == "I":
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255:
            scaled = arr
        elif lo >= 0 and hi <= 65535:
            scaled = arr * (255.0 / 65535.0)
        else:
            scaled = (arr - lo) * (255.0 / max(hi - lo, 1.0))
    else:  # "F"
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            arr = arr * 255.0
        scaled = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        img, mode = _high_bit_depth_to_8bit(img), "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        # Composite on white: transparent pixels of logos and icons are usually meant as "background",
        # and black (what a plain convert would give) changes the embedding far more than white does.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr...


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Load an image as an upright 8-bit RGB ``PIL.Image``.

    The file is fully decoded here (``Image.load``), so a truncated file fails now, not inside a
    transform. The EXIF orientation is applied (``ImageOps.exif_transpose``). Grayscale (``1``, ``L``,
    ``I``, ``I;16``, ``F``) becomes three equal channels, 16-bit and float data scaled to 8 bits;
    palette images are expanded; images with an alpha channel or a transparent colour (``RGBA``, ``LA``,
    ``P`` with transparency) are composited on white; ``CMYK`` is converted to RGB. Multi-frame files
    (GIF, TIFF) give their first frame.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is left as the user set it: images
    over twice the limit are refused, those between one and two times the limit load with Pillow's
    ``DecompressionBombWarning``.

    Args:
        path: image file.

    Returns:
        An RGB image of size ``(width, height)`` after the EXIF rotation.

    Raises:
        ImageFileMissingError: ``path`` does not exist or is not a file.
        CorruptImageError: the file is not an image, is truncated or damaged, or is a decompression bomb.
            The message names the file and the reason.

    Example:
        >>> img = load_image("photos/cat.jpg")  # doctest: +SKIP
        >>> img.mode
        'RGB'
    """
    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _to_rgb(upright if upright is not None else img)
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"corrupt image {path}: {_reason(exc)}") from exc


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Return ``(width, height)`` of the upright image, reading only the header (no pixel decoding).

    Width and height are swapped when the EXIF orientation includes a quarter turn, so the size matches
    what :func:`load_image` returns.

    Raises:
        ImageFileMissingError: ``path`` does not exist or is not a file.
        CorruptImageError: the header cannot be read.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"corrupt image {path}: {_reason(exc)}") from exc
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)
