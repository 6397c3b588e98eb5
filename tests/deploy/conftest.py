"""Tiny timm models (random weights, small inputs) for export tests, and a few real-looking images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
               "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=0).eval()


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2).eval()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """12 crops of scikit-image photos in two sub-folders (a labelled class-folder data set)."""
    import skimage.data as data

    root = tmp_path / "images"
    for cls, photo in (("astronaut", data.astronaut()), ("coffee", data.coffee())):
        (root / cls).mkdir(parents=True)
        rng = np.random.default_rng(len(cls))
        for i in range(6):
            y, x = rng.integers(0, 200, 2)
            Image.fromarray(photo[y : y + 160, x : x + 180]).save(root / cls / f"{i}.jpg")
    return root
