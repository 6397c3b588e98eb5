"""The size checks every decoder runs before decoding: resize geometry equal to timm's and torchvision's, limits."""

from __future__ import annotations

import pytest
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from PIL import Image
from timm.data import create_transform

from frugalvision._pixels import ResizeRule, check_image_size
from frugalvision.data.dataset import _resize_rule
from frugalvision.errors import CorruptImageError, ImageTooLargeError
from frugalvision.runtime import Preprocessor

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
         "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip
CONFIGS = {
    "lite0": LITE0,
    "full-crop": {**LITE0, "crop_pct": 1.0},
    "non-square": {**LITE0, "input_size": (3, 96, 160), "crop_pct": 0.9},
    "squash": {**LITE0, "input_size": (3, 112, 144), "crop_mode": "squash", "crop_pct": 0.95},
    "border": {**LITE0, "input_size": (3, 128, 160), "crop_mode": "border"},
    "crop-border-pixels": {**LITE0, "input_size": (3, 64, 64), "crop_border_pixels": 7},
}
#: (width, height) of the test images: odd sizes, both orientations, small and extreme aspect ratios.
SIZES = [(37, 61), (61, 37), (5, 240), (240, 5), (1, 50), (50, 1), (300, 41), (16, 16), (17, 3000), (70, 43)]


def _resize_step_size(transform: T.Compose, width: int, height: int) -> tuple[int, int]:
    """Output size of ``transform``'s steps up to and including its first resize, run on a real image."""
    image = Image.new("RGB", (width, height))
    for step in transform.transforms:
        image = step(image)
        if "Resize" in type(step).__name__:
            return image.size
    raise AssertionError(f"no resize step in {transform}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rule_equals_what_timm_eval_transform_does(name: str) -> None:
    cfg = CONFIGS[name]
    transform = create_transform(**cfg)
    rule = _resize_rule(transform)
    assert rule == Preprocessor(cfg).resize_rule, (rule, Preprocessor(cfg).resize_rule)
    for width, height in SIZES:
        if min(rule.trimmed_size(width, height)) < 1:
            continue
        assert rule.output_size(width, height) == _resize_step_size(transform, width, height), (width, height)


TORCHVISION_RESIZES = [
    T.Resize(40),
    T.Resize(40, max_size=90),
    T.Resize((30, 70)),
    T2.Resize(40),
    T2.Resize([40], max_size=90),
    T2.Resize((30, 70)),
    T2.Resize(None, max_size=60),
]


@pytest.mark.parametrize("resize", TORCHVISION_RESIZES, ids=repr)
def test_rule_of_torchvision_resize(resize) -> None:
    compose = (T2 if isinstance(resize, T2.Transform) else T).Compose([resize, T.CenterCrop(8)])
    rule = _resize_rule(compose)
    assert rule is not None
    for width, height in SIZES:
        expected = rule.output_size(width, height)
        if min(expected) < 1:  # max_size leaves nothing of the shorter side: Pillow refuses
            continue
        assert expected == resize(Image.new("RGB", (width, height))).size, (width, height)


def test_no_rule_where_the_output_is_bounded_or_unknown() -> None:
    assert _resize_rule(create_transform(224, is_training=True)) is None  # random resized crop first
    assert _resize_rule(None) is None
    assert _resize_rule(lambda image: image) is None
    flip_first = T.Compose([T.RandomHorizontalFlip(), T.Resize(40)])
    assert _resize_rule(flip_first) is None  # only the first step counts


def test_rule_docstring_example() -> None:
    """The size the issue reports: a 1 x 30000 PNG through a 224 model's preprocessing."""
    assert ResizeRule("shorter", (256, 256)).output_size(1, 30000) == (256, 7_680_000)


def test_aspect_ratio_limit() -> None:
    check_image_size(1, 50, "ok.png")  # exactly 50:1 is allowed
    check_image_size(6000, 4000, "photo.jpg")
    with pytest.raises(
        ImageTooLargeError, match=r"^long\.png: 1x51 pixels .*aspect ratio of 51:1.*limit of 50:1"
    ):
        check_image_size(1, 51, "long.png")
    with pytest.raises(ImageTooLargeError, match=r"30000x1 pixels .*30000:1"):
        check_image_size(30000, 1, "wide.png")
    check_image_size(1, 30000, "free.png", max_aspect=None)
    assert issubclass(ImageTooLargeError, CorruptImageError)


def test_resized_size_limit() -> None:
    rule = ResizeRule("shorter", (256, 256))
    # 40 x 2000 (50:1) becomes 256 x 12800 = 3,276,800 pixels
    check_image_size(40, 2000, "a.png", resize=rule, max_resized_pixels=3_276_800)
    with pytest.raises(ImageTooLargeError, match=r"a\.png: 40x2000 pixels would be resized to 256x12800 = "
                                                 r"3,276,800 pixels, over the limit of 3,276,799"):  # fmt: skip
        check_image_size(40, 2000, "a.png", resize=rule, max_resized_pixels=3_276_799)
    # a non-square target: both orientations are checked (the EXIF rotation is not read before decoding)
    wide = ResizeRule("ratio", (100, 1000), longest=0.0)
    assert wide.output_size(1000, 100) == (1000, 100) and wide.output_size(100, 1000) == (1000, 10000)
    with pytest.raises(ImageTooLargeError, match="1000x10000"):
        check_image_size(1000, 100, "rotated.jpg", resize=wide, max_resized_pixels=1_000_000)


def test_input_pixels_and_empty_images() -> None:
    with pytest.raises(
        ImageTooLargeError, match=r"b\.png: 100x100 = 10,000 pixels is over the limit of 9,999"
    ):
        check_image_size(100, 100, "b.png", max_pixels=9_999)
    with pytest.raises(CorruptImageError, match="after trimming 7 border pixels"):
        check_image_size(14, 30, "c.png", resize=ResizeRule("shorter", (64, 64), border=7))
