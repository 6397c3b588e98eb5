"""Fixtures of the runtime tests: the tiny hand-built deploy bundle of :func:`helpers.make_bundle`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import make_bundle


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """``(folder, W)``: a tiny embedding bundle in ``tmp_path / "tiny-onnx"`` and its weight matrix."""
    folder = tmp_path / "tiny-onnx"
    return folder, make_bundle(folder)
