"""The runtime's numpy + Pillow preprocessing equals timm's eval transform (what training and evaluation use)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform

from frugalvision.errors import ImageTooLargeError
from frugalvision.runtime import Preprocessor

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
         "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CONFIGS = {
    "lite0": LITE0,
    "bilinear-full-crop": {**LITE0, **IMAGENET, "interpolation": "bilinear", "crop_pct": 1.0},
    "non-square": {**LITE0, "input_size": (3, 96, 160), "crop_pct": 0.9},
    "squash": {**LITE0, "input_size": (3, 112, 144), "crop_mode": "squash", "crop_pct": 0.95},
    "border": {**LITE0, **IMAGENET, "input_size": (3, 128, 160), "crop_mode": "border"},
    "lanczos": {**LITE0, "input_size": (3, 192, 192), "interpolation": "lanczos", "crop_pct": 1.0},
    "crop-border-pixels": {**LITE0, "input_size": (3, 64, 64), "crop_border_pixels": 7},
}


def _images(photos: list, shared_data) -> list[Image.Image]:
    images = [Image.fromarray(p) for p in photos[:3]]
    images.append(Image.fromarray(photos[0][:37, :61]))  # small: upscaled, odd sizes
    images.append(Image.fromarray(photos[1][:300, :41]))  # very tall
    return images


@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_timm_eval_transform_on_photos(name: str, photos: list, shared_data) -> None:
    cfg = CONFIGS[name]
    timm_tf, ours = create_transform(**cfg), Preprocessor(cfg)
    for image in _images(photos, shared_data):
        expected = timm_tf(image).numpy()
        got = ours(image)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_equals_backbone_transform_on_caltech(shared_data) -> None:
    """Real data set photos (JPEG, mixed sizes, some grayscale) through load_image, as training sees them."""
    from frugalvision.data import load_image
    from frugalvision.models import create_backbone

    root = shared_data("caltech101-dev")
    paths = [sorted(d.glob("*.jpg"))[0] for d in sorted(root.iterdir())[::5]]
    backbone = create_backbone("tf_efficientnet_lite0.in1k_offline")
    tf, ours = backbone.transform(), Preprocessor(backbone.data_config)
    expected = np.stack([tf(load_image(p)).numpy() for p in paths])
    np.testing.assert_allclose(ours.batch(paths), expected, rtol=0, atol=1e-6)


def test_batch_accepts_every_input_kind(tmp_path, photos: list) -> None:
    pre = Preprocessor(LITE0)
    path = tmp_path / "a.png"
    Image.fromarray(photos[2]).save(path)
    one = pre(photos[2])
    batch = pre.batch([photos[2], Image.fromarray(photos[2]), path, path.read_bytes(), str(path)])
    assert batch.shape == (5, 3, 224, 224) and batch.flags["C_CONTIGUOUS"]
    for row in batch:
        np.testing.assert_array_equal(row, one)
    assert pre.batch([]).shape == (0, 3, 224, 224)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"input_size": (224, 224)}, "input_size"),
        ({"input_size": (1, 224, 224)}, "input_size"),
        ({"interpolation": "random"}, "interpolation"),
        ({"crop_mode": "middle"}, "crop_mode"),
        ({"crop_pct": -1.0}, "crop_pct"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
    ],
)
def test_bad_config_is_refused(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocessor({**LITE0, **change})


def test_wrong_argument_types() -> None:
    pre = Preprocessor(LITE0)
    with pytest.raises(TypeError, match="sequence"):
        pre.batch("a.jpg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RGB"):
        pre.resize_crop(Image.new("L", (10, 10)))
    with pytest.raises(TypeError, match="mapping"):
        Preprocessor([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(1, 30000), (30000, 1), (1, 6000), (1, 2000)])
def test_long_images_are_refused_before_resizing(size: tuple[int, int], long_png, bounded_resize) -> None:
    """Before the fix a 1 x 30000 PNG was resized to 256 x 7,680,000 pixels (issue 12, item 1)."""
    path = long_png(*size)
    pre = Preprocessor(LITE0)
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: {size[0]}x{size[1]} pixels has an aspect ratio"):
        pre(path)
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: "):
        pre.batch([path])
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        pre(Image.new("RGB", size))


def test_resized_size_over_the_limit_is_refused(long_png, bounded_resize) -> None:
    path = long_png(40, 1600)  # 40:1 is allowed; LITE0 resizes it to 256 x 10240 = 2,621,440 pixels
    assert Preprocessor(LITE0)(path).shape == (3, 224, 224)
    small = Preprocessor(LITE0, max_pixels=1_000_000)  # input 64,000 pixels: only the resize is over
    message = "40x1600 pixels would be resized to 256x10240 = 2,621,440 pixels, over the limit of 1,000,000"
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: {message}"):
        small(path)
    with pytest.raises(ImageTooLargeError, match=rf"^photo 3: {message}"):
        small.resize_crop(Image.new("RGB", (40, 1600)), name="photo 3")
    # without max_pixels the resize is held to 40 million pixels: 45 x 2000 to 1024 x 45511 at 512 px, crop 0.5
    big = Preprocessor({**LITE0, "input_size": (3, 512, 512), "crop_pct": 0.5})
    with pytest.raises(
        ImageTooLargeError, match=r"1024x45511 = 46,603,264 pixels, over the limit of 40,000,000"
    ):
        big(long_png(45, 2000))
