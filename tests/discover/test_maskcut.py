"""MaskCut end to end: real photos with ImageNet CNN features, and the ViT attention-key path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frugalvision.discover import (
    Discovery,
    ImageTooSmallError,
    box_iou,
    maskcut,
    masks_to_boxes,
    upsample_masks,
)
from frugalvision.errors import CorruptImageError, ImageFileMissingError

# Approximate object boxes (x0, y0, x1, y1) set by eye on the photos, independently of any model output:
# the cat's head and chest fill chelsea except the blurred window on the right; coffee's object is the cup
# on its saucer with the spoon.
HAND_BOXES = {"chelsea": (0, 0, 385, 300), "coffee": (75, 15, 480, 390)}


def _check_consistent(found: Discovery, size: tuple[int, int], grid: tuple[int, int]) -> None:
    k = len(found)
    w, h = size
    assert found.masks.shape == (k, h, w) and found.masks.dtype == bool
    assert found.boxes.shape == (k, 4) and found.scores.shape == (k,)
    assert found.patch_masks.shape == (k, *grid)
    assert ((found.scores >= 0) & (found.scores <= 1)).all()
    assert found.masks.reshape(k, -1).any(axis=1).all()  # no empty mask is returned
    assert (found.patch_masks.sum(axis=0) <= 1).all()  # objects never share patches
    np.testing.assert_array_equal(found.boxes, masks_to_boxes(found.masks))
    assert found.image_size == size


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_first_object_of_a_photo_matches_the_hand_box(effnet, photo, name: str) -> None:
    image = photo(name)
    found = maskcut(image, effnet, num_objects=3)
    _check_consistent(found, image.size, (30, 30))
    assert len(found) >= 1
    iou = box_iou(found.boxes[:1], np.array([HAND_BOXES[name]]))[0, 0]
    assert iou >= 0.6, f"{name}: first box {found.boxes[0].tolist()} has IoU {iou:.2f} with the hand box"
    # the object covers a real share of the picture, not a sliver and not everything
    assert 0.2 < found.masks[0].mean() < 0.9


def test_random_vit_runs_the_attention_key_path(vit, photo) -> None:
    image = photo("coffee")
    found = maskcut(image, vit, num_objects=3)  # a fixed 224 ViT: its own input size is used
    _check_consistent(found, image.size, (14, 14))
    again = maskcut(image, vit, num_objects=3)
    np.testing.assert_array_equal(found.masks, again.masks)
    np.testing.assert_array_equal(found.scores, again.scores)
    with pytest.raises(ValueError, match="create_discovery_backbone"):
        maskcut(image, vit, image_size=480)


def test_nearest_and_bilinear_upsampling_share_the_patch_edges() -> None:
    patch = np.zeros((1, 4, 4), dtype=bool)
    patch[0, 1:3, 1:3] = True
    nearest = upsample_masks(patch, (64, 64), "nearest")[0]
    bilinear = upsample_masks(patch, (64, 64), "bilinear")[0]
    expected = np.zeros((64, 64), dtype=bool)
    expected[16:48, 16:48] = True
    np.testing.assert_array_equal(nearest, expected)
    np.testing.assert_array_equal(masks_to_boxes(bilinear[None]), [[16, 16, 48, 48]])
    assert bilinear.sum() < nearest.sum()  # the same box, with rounded corners
    assert not bilinear[16, 16] and bilinear[32, 32]


def test_masks_to_boxes_is_exclusive_at_the_far_edge() -> None:
    m = np.zeros((2, 5, 7), dtype=bool)
    m[0, 1:3, 2:6] = True
    np.testing.assert_array_equal(masks_to_boxes(m), [[2, 1, 6, 3], [0, 0, 0, 0]])


def test_an_image_smaller_than_one_patch_is_refused_by_name(effnet, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (12, 40), (10, 200, 30)).save(tiny)
    with pytest.raises(ImageTooSmallError, match=r"tiny\.png is 12x40 pixels, smaller than one 16x16"):
        maskcut(tiny, effnet)


def test_missing_and_non_image_files_are_named(effnet, tmp_path: Path) -> None:
    with pytest.raises(ImageFileMissingError, match=r"absent\.jpg"):
        maskcut(tmp_path / "absent.jpg", effnet)
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    with pytest.raises(CorruptImageError, match=r"notes\.jpg"):
        maskcut(fake, effnet)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_objects": 0}, "num_objects"),
        ({"upsample": "cubic"}, "upsample"),
        ({"tau": 2.0}, "tau"),
        ({"image_size": 20}, "at least 3 patches"),
    ],
)
def test_bad_arguments_are_explained(effnet, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        maskcut(Image.new("RGB", (64, 64)), effnet, **kwargs)
