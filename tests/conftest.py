"""Shared fixtures: real-data location and small generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """``shared_data("caltech101-dev")``: path of a real data set in ``../shared/data``, or skip with the reason."""

    def _get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(
                f"real data {path} not available (it ships beside the project for CI, not in a clone)"
            )
        return path

    return _get


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A class-per-folder data set: 3 classes x 4 small images of distinct colours + noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{name}_{i}.png")
    return root
