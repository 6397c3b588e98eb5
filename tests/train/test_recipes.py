from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from frugalvision.train import RECIPES, load_config, train_transform

DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_gives_model_sized_tensors(recipe: str, photo: Image.Image) -> None:
    cfg = load_config(overrides={"recipe": recipe})
    tf = train_transform(DATA_CONFIG, cfg.augment)
    out = tf(photo)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_none_is_the_evaluation_transform_and_light_is_random(photo: Image.Image) -> None:
    from timm.data import create_transform

    none = train_transform(DATA_CONFIG, load_config(overrides={"recipe": "none"}).augment)
    torch.testing.assert_close(none(photo), create_transform(**DATA_CONFIG)(photo))
    light = train_transform(DATA_CONFIG, load_config().augment)
    torch.manual_seed(0)
    outs = [light(photo) for _ in range(3)]
    assert not torch.equal(outs[0], outs[1])


def test_user_settings_win_over_the_recipe() -> None:
    cfg = load_config(overrides=["recipe=strong", "augment.re_prob=0", "model.drop_rate=0.05"])
    assert cfg.augment.re_prob == 0 and cfg.model.drop_rate == 0.05
    assert cfg.augment.auto_augment == RECIPES["strong"]["augment.auto_augment"]
