"""Fixtures of the export tests: a few real-looking images (tiny timm models: ``helpers.tiny_cnn``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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
