"""Fixtures of the service tests: the hand-built tiny deploy bundle of ``tests/runtime/conftest.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "runtime" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_frugalvision_tiny_bundle", _path)
assert _spec is not None and _spec.loader is not None
tiny = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tiny
_spec.loader.exec_module(tiny)

make_bundle, reference, DATA_CONFIG = tiny.make_bundle, tiny.reference, tiny.DATA_CONFIG


@pytest.fixture
def photos() -> list:
    import skimage.data as data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
