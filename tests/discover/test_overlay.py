"""Overlay pictures: masks tinted, boxes outlined, sizes checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frugalvision.discover import Discovery, draw_discovery, masks_to_boxes, save_overlay


def _found() -> Discovery:
    masks = np.zeros((1, 40, 60), dtype=bool)
    masks[0, 10:30, 20:50] = True
    return Discovery(
        masks, masks_to_boxes(masks), np.array([0.8], np.float32), np.zeros((1, 2, 2), bool), (60, 40)
    )


def test_masks_are_tinted_and_the_rest_is_untouched(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    out = np.asarray(draw_discovery(image, _found(), alpha=0.5))
    assert out[25, 35].tolist() == [115, 80, 0]  # half of the first palette colour (230, 159, 0)
    assert out[2, 2].tolist() == [0, 0, 0]  # outside mask and box
    assert out[10, 20].tolist() == [230, 159, 0]  # the box frame, drawn opaque
    path = save_overlay(image, _found(), tmp_path / "sub" / "o.png", ground_truth=np.array([[0, 0, 5, 5]]))
    assert Image.open(path).size == (60, 40)


def test_size_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="discovery was made on"):
        draw_discovery(Image.new("RGB", (10, 10)), _found())
