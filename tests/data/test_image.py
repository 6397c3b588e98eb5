"""load_image / image_size: modes, EXIF orientation, corrupt and hostile files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from frugalvision.data import IMAGE_EXTENSIONS, image_size, load_image
from frugalvision.errors import CorruptImageError, ImageFileMissingError

PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def test_rgb_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    # 60 x 40 stored image: left half red, right half blue. Orientation 6 = "rotate 90° clockwise to
    # display", so the upright image is 40 x 60 with red on top, blue below.
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)

    out = load_image(path)
    assert out.size == (40, 60)
    assert image_size(path) == (40, 60)  # header-only size agrees with the decoded image
    px = pixels(out)
    np.testing.assert_allclose(px[5:25].mean(axis=(0, 1)), [255, 0, 0], atol=12)
    np.testing.assert_allclose(px[35:55].mean(axis=(0, 1)), [0, 0, 255], atol=12)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, 77),
        ("1", 1, 255),
        ("I", 200, 200),  # fits in 8 bits: kept
        ("I", 65535, 255),  # 16-bit range: scaled by 255/65535
        ("I;16", 32896, 128),  # 128 * 257
        ("I;16", 200, 1),  # 16-bit by definition: a dark pixel stays dark
        ("F", 0.5, 128),  # float in [0, 1]: scaled by 255
        ("F", 300.0, 255),  # other floats: clipped
    ],
)
def test_grayscale_modes_become_rgb(tmp_path: Path, mode: str, value: float, expected: int) -> None:
    path = tmp_path / f"g_{mode.replace(';', '')}.tif"
    Image.new(mode, (4, 3), value).save(path)
    with Image.open(path) as raw:
        assert raw.mode == mode  # the file really holds that mode
    px = pixels(load_image(path))
    assert px.shape == (3, 4, 3)
    assert (px == expected).all(), (mode, value, np.unique(px))


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "deep.png"))[0, :, 0], [0, 10, 255])


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "pal.png"))[0], [[255, 0, 0], [0, 255, 0]])
    img.save(tmp_path / "pal_t.png", transparency=0)  # palette entry 0 (red) is transparent -> white
    np.testing.assert_array_equal(
        pixels(load_image(tmp_path / "pal_t.png"))[0], [[255, 255, 255], [0, 255, 0]]
    )


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [100, 0, 200, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    px = pixels(load_image(tmp_path / "a.png"))[0]
    # alpha a in [0, 255]: out = (c * a + 255 * (255 - a)) / 255
    expected = [
        [255, 255, 255],
        [0, 0, 0],
        [round((100 * 128 + 255 * 127) / 255), 127, round((200 * 128 + 255 * 127) / 255)],
    ]
    np.testing.assert_allclose(px, expected, atol=1)

    la = np.array([[[50, 0], [50, 255]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "la.png"))[0], [[255] * 3, [50] * 3])


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # pure red in CMYK
    px = pixels(load_image(tmp_path / "c.jpg"))
    np.testing.assert_allclose(px.mean(axis=(0, 1)), [255, 0, 0], atol=8)


def test_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_allclose(
        pixels(load_image(tmp_path / "anim.gif")).mean(axis=(0, 1)), [255, 0, 0], atol=2
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageFileMissingError, match=r"not found: .*nope\.jpg"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageFileMissingError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(FileNotFoundError):  # the built-in base still catches it
        image_size(tmp_path / "nope.jpg")


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "cut.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (64, 64)  # the header alone is intact...
    with pytest.raises(CorruptImageError, match=r"cut\.jpg.*truncated"):
        load_image(path)  # ...but the full decode fails here, not later in a transform
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_extension_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(CorruptImageError, match=r"notes\.jpg.*not a recognised image format"):
        load_image(path)
    with pytest.raises(CorruptImageError, match=r"notes\.jpg"):
        image_size(path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(OSError, match=r"empty\.png"):  # CorruptImageError is an OSError
        load_image(tmp_path / "empty.png")


def test_decompression_bomb_is_refused(tmp_path: Path, write_image, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(tmp_path / "bomb.png", size=(8, 6))  # 48 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # > 2 x limit: Pillow raises
    with pytest.raises(CorruptImageError, match=r"bomb\.png.*decompression bomb"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == 20  # load_image did not lift the guard
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30)  # between 1 and 2 x limit: Pillow only warns
    with pytest.warns(Image.DecompressionBombWarning):
        assert load_image(path).size == (8, 6)


def test_bomb_guard_is_on_by_default() -> None:
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_extensions() -> None:
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def test_loaded_image_is_detached_from_file(tmp_path: Path, write_image) -> None:
    path = write_image(tmp_path / "x.png")
    img = load_image(path)
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ResourceWarning about an unclosed file
        assert img.getpixel((0, 0)) == (200, 30, 40)


@pytest.mark.parametrize("size", [(1, 30000), (6000, 1), (1, 51)])
def test_extreme_aspect_ratio_refused_from_the_header(size: tuple[int, int], long_png, monkeypatch) -> None:
    """Issue 12, item 1: the same check as the runtime's, before any pixel is decoded."""
    from frugalvision.errors import ImageTooLargeError

    path = long_png(*size)

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("the pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    ratio = max(size) // min(size)
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: {size[0]}x{size[1]} pixels has an aspect ratio of "
                                                 rf"{ratio}:1, over the limit of 50:1"):  # fmt: skip
        load_image(path)
    monkeypatch.undo()
    assert load_image(path, max_aspect=None).size == size
    assert load_image(long_png(1, 50)).size == (1, 50)  # 50:1 itself is allowed


def test_resize_rule_is_checked_before_decoding(long_png, monkeypatch) -> None:
    from frugalvision._pixels import ResizeRule
    from frugalvision.errors import ImageTooLargeError

    path = long_png(20, 1000)  # 50:1; a 1000 px shorter side makes it 1000 x 50000
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded"))
    )
    with pytest.raises(ImageTooLargeError, match=r"20x1000 pixels would be resized to 1000x50000 = 50,000,000 "
                                                 r"pixels, over the limit of 40,000,000"):  # fmt: skip
        load_image(path, resize=ResizeRule("shorter", (1000, 1000)))
