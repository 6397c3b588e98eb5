"""Fixtures of the training tests: a small labelled image folder and a fast configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frugalvision.train import TrainConfig, load_config


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models on 2 shared cores run many times faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_labelled_folder(root: Path, classes: int = 8, per_class: int = 5, size: int = 24) -> Path:
    """``classes`` folders of ``per_class`` noisy images around a class colour and pattern."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(40, 215, 3)
        stripes = (np.arange(size) // (2 + c % 4) % 2)[None, :, None] * 40
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(colour + stripes + rng.normal(0, 45, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c:02d}" / f"img{i}.png")
    return root


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_labelled_folder(tmp_path_factory.mktemp("labelled") / "data")


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
