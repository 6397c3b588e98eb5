"""Shared fixtures: the offline EfficientNet-Lite0 discovery backbone and real sample photos."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def effnet():
    """EfficientNet-Lite0 with its real ImageNet weights (offline), built once for the whole folder."""
    from frugalvision.discover import create_discovery_backbone

    torch.manual_seed(0)
    return create_discovery_backbone("tf_efficientnet_lite0.in1k_offline")


@pytest.fixture(scope="session")
def vit():
    """A random-init ViT-S/16 at 224x224: exercises the attention-key path (its keys mean nothing)."""
    from frugalvision.models import create_backbone

    torch.manual_seed(0)
    return create_backbone("vit_small_patch16_224", pretrained=False)


@pytest.fixture(scope="session")
def photo():
    """``photo("chelsea")``: a scikit-image sample photograph as a PIL image."""
    data = pytest.importorskip("skimage.data")

    def _get(name: str) -> Image.Image:
        return Image.fromarray(getattr(data, name)())

    return _get
