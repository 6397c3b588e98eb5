"""Fixtures of the training tests: one torch thread for each test and a fast configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugalvision.train import TrainConfig, load_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every training test runs on one torch thread (``one_thread`` in ``tests/conftest.py``)."""


def _tiny_config(data: Path, out: Path, *overrides: str) -> TrainConfig:
    """A run of a random-init test_efficientnet at 32 px that takes about a second."""
    return load_config(
        None,
        [
            f"data.path={data}",
            f"out={out}",
            "model.name=test_efficientnet",
            "model.pretrained=false",
            "model.input_size=32",
            "model.embedding_size=16",
            "data.batch_size=8",
            "data.m_per_class=2",
            "data.val_fraction=0.25",
            "data.num_workers=0",
            "trainer.epochs=2",
            "trainer.progress=false",
            *overrides,
        ],
    )


@pytest.fixture
def tiny_config():
    """``tiny_config(data, out, "key=value", ...)``: see :func:`_tiny_config`."""
    return _tiny_config
