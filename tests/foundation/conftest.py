"""A tiny random CLIP shared by the foundation tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

# A tiny CLIP (ViT image tower, 1-layer text transformer, 32-d joint space): random weights, built in ms.
TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict[str, Any]:
    """``open_clip.create_model`` overrides that shrink ViT-B-32 to a tiny CLIP."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CLIP.items()}


@pytest.fixture(scope="session")
def clip(tiny_kwargs: dict[str, Any]) -> Any:
    from frugalvision.foundation import create_feature_model

    torch.manual_seed(0)
    return create_feature_model("open_clip:ViT-B-32", pretrained=False, **tiny_kwargs)
