"""decode_image: same pixels as training's load_image on every image mode; refusals before decoding."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from frugalvision.data import load_image
from frugalvision.errors import CorruptImageError, ImageFileMissingError
from frugalvision.runtime import ImageTooLargeError, UnsupportedImageError, decode_image


def _variants(photo: np.ndarray, tmp: Path) -> list[Path]:
    """The same content in many modes and containers."""
    rgb = Image.fromarray(photo[:60, :80])
    rng = np.random.default_rng(0)
    out: list[tuple[str, Image.Image]] = [
        ("rgb.jpg", rgb),
        ("rgb.png", rgb),
        ("l.png", rgb.convert("L")),
        ("one.png", rgb.convert("1")),
        ("la.png", rgb.convert("LA")),
        ("p.gif", rgb.convert("P")),
        ("cmyk.jpg", rgb.convert("CMYK")),
        ("i16.png", Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16))),
        ("f.tif", Image.fromarray(rng.random((30, 40)).astype(np.float32))),
        ("i32.tif", Image.fromarray(rng.integers(-5, 70000, (30, 40)).astype(np.int32))),
    ]
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((rng.random((60, 80)) * 255).astype(np.uint8)))
    out.append(("rgba.png", rgba))
    p_trans = rgb.convert("P")
    p_trans.info["transparency"] = 0
    out.append(("ptrans.png", p_trans))
    paths = []
    for name, img in out:
        paths.append(tmp / name)
        img.save(paths[-1], **({"transparency": 0} if name == "ptrans.png" else {}))
    rotated = tmp / "exif6.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(rotated, exif=exif)
    return [*paths, rotated]


def test_same_pixels_as_training_loader(tmp_path: Path, photos: list) -> None:
    for path in _variants(photos[0], tmp_path):
        expected = np.asarray(load_image(path))
        from_file = np.asarray(decode_image(path))
        from_bytes = np.asarray(decode_image(path.read_bytes()))
        with Image.open(path) as opened:
            from_pil = np.asarray(decode_image(opened))
        for got in (from_file, from_bytes, from_pil):
            np.testing.assert_array_equal(got, expected, err_msg=path.name)
    upright = decode_image(tmp_path / "exif6.jpg")
    assert upright.size == (60, 80)  # the quarter turn of EXIF orientation 6 was applied


def test_array_input(photos: list) -> None:
    img = decode_image(photos[1])
    assert img.mode == "RGB" and img.size == (photos[1].shape[1], photos[1].shape[0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        decode_image(photos[1].astype(np.float32))
    with pytest.raises(TypeError, match="path, bytes"):
        decode_image(3)  # type: ignore[arg-type]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with one compressed row: a decompression bomb's face."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_refusals(tmp_path: Path, photos: list) -> None:
    buf = io.BytesIO()
    Image.fromarray(photos[0]).save(buf, "JPEG")
    jpeg = buf.getvalue()
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        decode_image(b"this is text, not an image")
    with pytest.raises(UnsupportedImageError, match="JPEG is not accepted"):
        decode_image(jpeg, formats={"PNG"})
    with pytest.raises(CorruptImageError, match="truncated") as info:
        decode_image(jpeg[: len(jpeg) // 2], name="half.jpg")
    assert not isinstance(info.value, (UnsupportedImageError, ImageTooLargeError))
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(_png_header_only(8_000, 8_000), max_pixels=50_000_000)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(_png_header_only(60_000, 60_000))  # over twice Pillow's own limit
    with pytest.raises(ImageTooLargeError):
        decode_image(photos[0], max_pixels=100)
    with pytest.raises(ImageFileMissingError):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(jpeg, max_pixels=0)


@pytest.mark.parametrize("size", [(1, 30000), (30000, 1), (1, 51)])
def test_extreme_aspect_ratio_refused_before_decoding(size: tuple[int, int], long_png, monkeypatch) -> None:
    """A 1 x N PNG of ~100 bytes is refused from its header: no pixel is decoded (issue 12, item 1)."""
    path = long_png(*size)
    width, height = size
    pil, array = Image.new("L", size), np.zeros((height, width, 3), np.uint8)

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("the pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    expected = (
        rf"{width}x{height} pixels has an aspect ratio of {max(size) // min(size)}:1, over the limit of 50:1"
    )
    with pytest.raises(ImageTooLargeError, match=rf"^{path.name}: {expected}"):
        decode_image(path.read_bytes(), name=path.name)
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: {expected}"):
        decode_image(path)
    with pytest.raises(ImageTooLargeError, match=expected):
        decode_image(pil)
    with pytest.raises(ImageTooLargeError, match=expected):
        decode_image(array)
    monkeypatch.undo()
    assert decode_image(path, max_aspect=None).size == size  # the limit can be lifted
    with pytest.raises(ValueError, match="max_aspect"):
        decode_image(path, max_aspect=0.5)
