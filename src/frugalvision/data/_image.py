"""Decode one image file into an RGB ``PIL.Image``, whatever its mode, orientation or defects.

Every reader and :class:`~frugalvision.data.ImageDataset` goes through :func:`load_image`, so all of them
agree on what an image looks like (upright, RGB, 8 bits per channel) and on which files count as corrupt.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from frugalvision._pixels import DECODE_ERRORS, MAX_ASPECT_RATIO, ResizeRule, check_image_size, to_rgb
from frugalvision.errors import CorruptImageError, ImageFileMissingError

__all__ = ["image_size", "load_image"]


# What Pillow raises on damaged or hostile files (see frugalvision._pixels), and the decompression-bomb guard.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (*DECODE_ERRORS, Image.DecompressionBombError)

# EXIF orientations 5-8 include a quarter turn: width and height swap once the image is made upright.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


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


def load_image(
    path: str | os.PathLike[str],
    *,
    resize: ResizeRule | None = None,
    max_aspect: float | None = MAX_ASPECT_RATIO,
) -> Image.Image:
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

    Before decoding, the size read from the header is checked (:func:`frugalvision._pixels.check_image_size`): an
    aspect ratio over ``max_aspect`` is refused, and so is an image that ``resize`` -- the resize step of the
    preprocessing that comes next -- would bring to more than 40 million pixels (``MAX_RESIZED_PIXELS``).

    Args:
        path: image file.
        resize: the resize step the image goes through next (:class:`ImageDataset` finds it in its transform),
            or ``None``.
        max_aspect: longest side / shorter side allowed (default 50); ``None``: any.

    Returns:
        An RGB image of size ``(width, height)`` after the EXIF rotation.

    Raises:
        ImageFileMissingError: ``path`` does not exist or is not a file.
        ImageTooLargeError: an aspect ratio over ``max_aspect``, or a resized size over the limit (a
            :class:`CorruptImageError`).
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
        with Image.open(path) as img:  # reads the header only
            check_image_size(img.width, img.height, str(path), max_aspect=max_aspect, resize=resize)
            img.load()
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright if upright is not None else img)
    except CorruptImageError:
        raise
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
