"""Dense patch features for object discovery: ViT attention keys, or a stride-16 CNN feature map.

- Vision transformers: the *keys* of the last block's self-attention, one per patch (prefix tokens such
  as CLS and registers dropped), as in TokenCut (Wang et al., CVPR 2022) and MaskCut (CutLER, Wang et al.,
  CVPR 2023). They are read with a forward hook on ``blocks[-1].attn.qkv`` (or ``attn.k_proj``).
- CNNs: the feature map of the stage with output stride 16 (timm's ``forward_intermediates``), the
  closest analogue of a ViT-S/16 patch grid.

Example:
    >>> bb = create_discovery_backbone("tf_efficientnet_lite0.in1k_offline")
    >>> x = torch.randn(1, 3, 480, 480)
    >>> patch_features(bb, x).shape
    torch.Size([1, 30, 30, 112])
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from frugalvision.models import Backbone, create_backbone

__all__ = ["create_discovery_backbone", "feature_stride", "is_vision_transformer", "patch_features"]

#: Output stride of the CNN stage used for discovery (a ViT-S/16 patch grid has the same resolution).
CNN_STRIDE = 16


def _model(backbone: Backbone | nn.Module) -> nn.Module:
    return backbone.model if isinstance(backbone, Backbone) else backbone


def _key_module(model: nn.Module) -> tuple[nn.Module, str] | None:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    if attn is None or not hasattr(model, "patch_embed"):
        return None
    if isinstance(getattr(attn, "qkv", None), nn.Linear):
        return attn.qkv, "qkv"
    if isinstance(getattr(attn, "k_proj", None), nn.Linear):
        return attn.k_proj, "k"
    return None


def is_vision_transformer(backbone: Backbone | nn.Module) -> bool:
    """True for timm ViT-style models (``patch_embed`` + ``blocks[-1].attn.qkv``): discovery uses their keys."""
    return _key_module(_model(backbone)) is not None


def _patch_size(model: nn.Module) -> int:
    raw: Any = model.patch_embed.patch_size  # type: ignore[union-attr]
    size = tuple(int(v) for v in raw) if isinstance(raw, (tuple, list)) else (int(raw), int(raw))
    if size[0] != size[1]:
        raise ValueError(f"only square patches are supported, got patch size {size}")
    return int(size[0])


def _stride16_index(model: nn.Module) -> tuple[int, int] | None:
    """``(index into feature_info, reduction)`` of the deepest stage with output stride <= 16."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        return None
    reductions = [int(i["reduction"]) for i in info]
    candidates = [k for k, r in enumerate(reductions) if r <= CNN_STRIDE]
    if not candidates:
        return None
    best = max(candidates, key=lambda k: (reductions[k], k))
    return best, reductions[best]


def feature_stride(backbone: Backbone | nn.Module) -> int:
    """Input pixels per feature-grid cell: the patch size of a ViT, 16 (or the nearest stage) for a CNN."""
    model = _model(backbone)
    if is_vision_transformer(model):
        return _patch_size(model)
    found = _stride16_index(model)
    if found is not None:
        return found[1]
    info = getattr(model, "feature_info", None)
    if info:
        return int(info[-1]["reduction"])
    raise ValueError(
        f"cannot tell the feature stride of {type(model).__name__}: it is neither a timm ViT nor a model "
        "with feature_info; pass a timm backbone"
    )


def fixed_input_size(backbone: Backbone | nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` a ViT insists on (built without ``dynamic_img_size``), else ``None`` (any size works)."""
    model = _model(backbone)
    if not is_vision_transformer(model) or getattr(model, "dynamic_img_size", False):
        return None
    embed = model.patch_embed
    if not getattr(embed, "strict_img_size", True) or getattr(embed, "img_size", None) is None:
        return None
    h, w = embed.img_size  # type: ignore[union-attr, misc]
    return int(h), int(w)


def _vit_keys(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    found = _key_module(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no attention block to take keys from")
    module, kind = found
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured["out"] = output

    handle = module.register_forward_hook(hook)
    try:
        model.forward_features(x)  # type: ignore[operator]
    finally:
        handle.remove()
    out = captured["out"]
    attn = model.blocks[-1].attn  # type: ignore[index, union-attr]
    if kind == "qkv":
        width = out.shape[-1] // 3
        keys = out[..., width : 2 * width]
    else:
        keys = out
    k_norm = getattr(attn, "k_norm", None)
    if isinstance(k_norm, nn.Module) and not isinstance(k_norm, nn.Identity):
        heads = int(attn.num_heads)
        b, n, c = keys.shape
        keys = k_norm(keys.reshape(b, n, heads, c // heads)).reshape(b, n, c)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    patch = _patch_size(model)
    h, w = x.shape[-2] // patch, x.shape[-1] // patch
    tokens = keys[:, prefix:]
    if tokens.shape[1] != h * w:
        raise RuntimeError(
            f"expected {h}x{w} = {h * w} patch tokens after {prefix} prefix token(s), got {tokens.shape[1]}"
        )
    return tokens.reshape(x.shape[0], h, w, -1)


def patch_features(backbone: Backbone | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch features of preprocessed images.

    Args:
        backbone: a :class:`~frugalvision.models.Backbone` or a bare timm model, in eval mode.
        x: ``(B, 3, H, W)`` normalised images; for a ViT ``H`` and ``W`` must be multiples of the patch size.

    Returns:
        ``(B, h, w, C)``: attention keys of the last block for ViTs (``h = H / patch``), the stride-16
        feature map for CNNs (``h = ceil(H / 16)`` for "same" padding).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, 3, H, W) image tensor, got {shape}")
    model = _model(backbone)
    if is_vision_transformer(model):
        patch = _patch_size(model)
        if x.shape[-1] % patch or x.shape[-2] % patch:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of the patch size {patch}")
        return _vit_keys(model, x)
    found = _stride16_index(model)
    if found is not None:
        (fmap,) = model.forward_intermediates(  # type: ignore[operator]
            x, indices=[found[0]], intermediates_only=True, stop_early=True
        )
    else:
        fmap = model.forward_features(x)  # type: ignore[operator]
    if fmap.ndim != 4:
        raise ValueError(
            f"{type(model).__name__} returned features of shape {tuple(fmap.shape)}; discovery needs a "
            "(B, C, h, w) map or a ViT"
        )
    return fmap.permute(0, 2, 3, 1)


def create_discovery_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 480,
) -> Backbone:
    """:func:`~frugalvision.models.create_backbone` prepared for discovery at ``image_size`` pixels.

    A ViT built for a fixed input (e.g. 224) has its position embeddings resampled to ``image_size``
    rounded to a multiple of its patch size (timm's ``set_input_size``; DINO/TokenCut interpolate them
    the same way), so that MaskCut sees an ``image_size / patch`` grid; CNNs take any size.
    Self-supervised DINO weights (e.g. ``vit_small_patch16_224.dino``, ``vit_small_patch8_224.dino``) give
    far more object-centric keys than supervised ImageNet models.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    backbone = create_backbone(name, pretrained=pretrained, weights=weights)
    model = backbone.model
    if fixed_input_size(model) is not None:
        patch = _patch_size(model)
        side = max(3, round(image_size / patch)) * patch
        model.set_input_size(img_size=(side, side))  # type: ignore[operator]
    return backbone
