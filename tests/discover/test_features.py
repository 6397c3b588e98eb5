"""Patch features: ViT last-block keys (hooked) equal a manual recomputation; the CNN map has stride 16."""

from __future__ import annotations

import pytest
import torch

from frugalvision.discover import (
    create_discovery_backbone,
    feature_stride,
    is_vision_transformer,
    patch_features,
)
from frugalvision.discover.features import fixed_input_size


def test_vit_keys_equal_a_manual_pass_through_the_last_block(vit) -> None:
    model = vit.model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        keys = patch_features(vit, x)
        # independent route: tokens entering the last block, then its norm1 and the k third of qkv
        ((patches, prefix),) = model.forward_intermediates(
            x,
            indices=[len(model.blocks) - 2],
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        tokens = torch.cat([prefix, patches], dim=1)
        qkv = model.blocks[-1].attn.qkv(model.blocks[-1].norm1(tokens))
        expected = qkv[:, 1:, 384:768].reshape(1, 14, 14, 384)
    assert keys.shape == (1, 14, 14, 384)
    torch.testing.assert_close(keys, expected)
    assert is_vision_transformer(vit) and feature_stride(vit) == 16


def test_fixed_size_vit_is_resampled_to_the_discovery_size() -> None:
    bb = create_discovery_backbone(
        "test_vit3", pretrained=False, image_size=256
    )  # timm test ViT, fixed 160 px
    assert fixed_input_size(bb) == (256, 256)
    with torch.inference_mode():
        assert patch_features(bb, torch.randn(1, 3, 256, 256)).shape == (1, 16, 16, 96)
    rounded = create_discovery_backbone("test_vit3", pretrained=False, image_size=250)
    assert fixed_input_size(rounded) == (256, 256)  # the nearest multiple of the patch size


def test_dynamic_vit_takes_any_multiple_of_the_patch_size() -> None:
    bb = create_discovery_backbone("test_vit", pretrained=False)  # built with dynamic_img_size=True
    assert fixed_input_size(bb) is None
    with torch.inference_mode():
        assert patch_features(bb, torch.randn(1, 3, 96, 128)).shape == (1, 6, 8, 64)
        with pytest.raises(ValueError, match="multiple of the patch size 16"):
            patch_features(bb, torch.randn(1, 3, 90, 128))


def test_cnn_map_is_the_stride_16_stage(effnet) -> None:
    model = effnet.model
    x = torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        feats = patch_features(effnet, x)
        # independent route: stem then the blocks up to the last stride-16 stage (blocks.4)
        y = model.bn1(model.conv_stem(x))
        for block in model.blocks[:5]:
            y = block(y)
    assert feats.shape == (1, 16, 12, 112)
    torch.testing.assert_close(feats, y.permute(0, 2, 3, 1))
    assert not is_vision_transformer(effnet) and feature_stride(effnet) == 16
    assert fixed_input_size(effnet) is None


def test_patch_features_rejects_non_image_tensors(effnet) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        patch_features(effnet, torch.randn(3, 64, 64))
