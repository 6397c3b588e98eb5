"""Fixtures for the data tests: tiny images written with PIL into ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

ImageWriter = Callable[..., Path]


@pytest.fixture
def write_image() -> ImageWriter:
    """``write_image(path, size=(8, 6), color=(200, 30, 40), mode="RGB")`` writes an image and returns its path."""

    def _write(
        path: Path, size: tuple[int, int] = (8, 6), color: object = (200, 30, 40), mode: str = "RGB"
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path)  # type: ignore[arg-type]
        return path

    return _write
