"""An embedding model: backbone + global pooling + embedding head, with its preprocessing.

This is what the training engine trains and what a model bundle holds::

    from frugalvision.models import create_embedding_model
    model = create_embedding_model("tf_efficientnet_lite0.in1k_offline", pooling="gem", embedding_size=128)
    emb = model(model.transform()(pil_image).unsqueeze(0))     # (1, 128), unit rows

It has the same face as :class:`~frugalvision.models.Backbone` (``transform()``, ``data_config``, ``spec``,
``forward -> (B, D)``), so :func:`~frugalvision.embeddings.extract_embeddings`, the index and the CLI take either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.data import create_transform
from torch import nn

from frugalvision.errors import StoreError
from frugalvision.models.backbone import Backbone, create_backbone
from frugalvision.models.heads import EmbeddingHead, GlobalPool

__all__ = [
    "EmbeddingModel",
    "EmbeddingModelSpec",
    "create_embedding_model",
    "embedding_model_from_description",
    "jsonable_data_config",
]


def jsonable_data_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``data_config`` with tuples as lists (JSON round-trips it unchanged)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}


def _timm_data_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}


@dataclass(frozen=True)
class EmbeddingModelSpec:
    """How to rebuild an :class:`EmbeddingModel`; ``to_dict()`` is what stores and indexes record.

    A model saved as a bundle is rebuilt from its folder (``{"bundle": "/abs/path", "id": ...}``); an unsaved one
    records its architecture only and cannot be rebuilt with its weights.
    """

    description: dict[str, Any] = field(default_factory=dict)
    bundle: str | None = None
    bundle_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.bundle is not None:
            return {"bundle": self.bundle, "id": self.bundle_id, "arch": self.description["backbone"]["name"]}
        return {"embedding_model": self.description}


class EmbeddingModel(nn.Module):
    """Backbone + :class:`~frugalvision.models.heads.GlobalPool` + :class:`~frugalvision.models.heads.EmbeddingHead`.

    ``forward(images (B, 3, H, W)) -> (B, D)`` embeddings; ``features(images) -> (B, F)`` the pooled backbone
    features and ``embed_features(features) -> (B, D)`` the head alone (the frozen-backbone fast path trains
    only the latter on cached features).

    Attributes:
        backbone: the :class:`~frugalvision.models.Backbone`.
        pooling, head: the modules above.
        data_config: timm preprocessing shared by training, evaluation and export.
        model_kwargs: extra ``timm.create_model`` arguments the backbone was built with (e.g. ``img_size``).
        config: the bundle's ``config.json`` once saved or loaded (else ``{}``).
        spec: :class:`EmbeddingModelSpec`.
    """

    def __init__(
        self,
        backbone: Backbone,
        pooling: GlobalPool,
        head: EmbeddingHead,
        *,
        data_config: Mapping[str, Any] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        width = backbone.num_features if pooling.kind == "native" else backbone.map_features
        if head.in_features != width:
            raise ValueError(
                f"head expects {head.in_features} features but backbone {backbone.spec.name!r} with "
                f"{pooling.kind} pooling gives {width}"
            )
        self.backbone = backbone
        self.pooling = pooling
        self.head = head
        self.data_config: dict[str, Any] = _timm_data_config(data_config or backbone.data_config)
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        self.config: dict[str, Any] = {}
        self.bundle_path: str | None = None
        self.bundle_id: str | None = None

    @property
    def num_features(self) -> int:
        """Width of the pooled backbone features."""
        return self.backbone.num_features if self.pooling.kind == "native" else self.backbone.map_features

    @property
    def embedding_size(self) -> int:
        return self.head.embedding_size

    @property
    def normalization(self) -> str:
        return self.head.normalization

    @property
    def spec(self) -> EmbeddingModelSpec:
        return EmbeddingModelSpec(self.describe(), self.bundle_path, self.bundle_id)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, F)`` of preprocessed ``images (B, 3, H, W)``."""
        if self.pooling.kind == "native":
            return self.backbone(images)
        return self.pooling(self.backbone.forward_features(images))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """The head alone: pooled features ``(B, F)`` -> embeddings ``(B, D)``."""
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of preprocessed ``images (B, 3, H, W)``."""
        return self.head(self.features(images))

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]:
        """timm's evaluation preprocessing (``training=True``: timm's default training augmentation; the training
        engine builds its own from a recipe, see :mod:`frugalvision.train.recipes`)."""
        return create_transform(**self.data_config, is_training=training)

    def describe(self) -> dict[str, Any]:
        """JSON-able architecture: enough, with the weights, to rebuild the model offline."""
        return {
            "backbone": {"name": self.backbone.spec.name, "model_kwargs": dict(self.model_kwargs)},
            "num_features": self.num_features,
            "pooling": self.pooling.describe(),
            "head": self.head.describe(),
            "data_config": jsonable_data_config(self.data_config),
        }

    def extra_repr(self) -> str:
        where = f", bundle={self.bundle_path!r}" if self.bundle_path else ""
        return f"embedding_size={self.embedding_size}, normalization={self.normalization!r}{where}"


def create_embedding_model(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    pooling: str = "native",
    gem_p: float = 3.0,
    gem_learnable: bool = True,
    head: str = "linear",
    embedding_size: int | None = 128,
    normalization: str = "l2",
    hidden_size: int | None = None,
    dropout: float = 0.0,
    c: float = 0.1,
    clip_r: float | None = 2.3,
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` on :func:`~frugalvision.models.create_backbone`.

    Args:
        name, pretrained, weights: as for :func:`~frugalvision.models.create_backbone`.
        pooling: ``"native"`` (the backbone's pre-logits: average for CNNs, class token for ViTs), ``"avg"``,
            ``"gem"`` or ``"max"`` (over patch tokens for ViTs).
        gem_p, gem_learnable: GeM exponent and whether it is learned.
        head, embedding_size, normalization, hidden_size, dropout, c, clip_r: see
            :class:`~frugalvision.models.heads.EmbeddingHead`; ``embedding_size=None`` keeps the pooled features'
            width (a linear head then starts as a rotation of the pretrained features).
        input_size: train/evaluate at this square resolution instead of the backbone's default (the
            ``data_config``'s ``input_size``). Models built for one input size (ViTs: their position embeddings)
            are built at this size (timm's ``img_size``, recorded in ``model_kwargs``); CNNs take any size.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``).

    Raises:
        ValueError: unknown names or bad sizes; WeightsError: pretrained weights that cannot be loaded.
    """
    kwargs = dict(model_kwargs or {})
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 8
    ):
        raise ValueError(f"input_size must be an int >= 8 (pixels), got {input_size!r}")
    backbone = None
    if input_size is not None and "img_size" not in kwargs:
        try:  # ViT-style models take img_size (and resample pretrained position embeddings to it)
            backbone = create_backbone(
                name, pretrained=pretrained, weights=weights, img_size=input_size, **kwargs
            )
            kwargs["img_size"] = input_size
        except TypeError as e:  # the model's constructor has no img_size: it takes any input size
            if "img_size" not in str(e):
                raise
    if backbone is None:
        backbone = create_backbone(name, pretrained=pretrained, weights=weights, **kwargs)
    data_config = dict(backbone.data_config)
    if input_size is not None:
        data_config["input_size"] = (3, input_size, input_size)
    timm_model = backbone.model
    pool = GlobalPool(
        pooling,
        gem_p=gem_p,
        gem_learnable=gem_learnable,
        num_prefix_tokens=int(getattr(timm_model, "num_prefix_tokens", 0) or 0),
        channels_last=str(getattr(timm_model, "output_fmt", "NCHW")).upper().endswith("NHWC"),
    )
    width = backbone.num_features if pool.kind == "native" else backbone.map_features
    emb_head = EmbeddingHead(
        width,
        width if embedding_size is None else embedding_size,
        kind=head,
        normalization=normalization,
        hidden_size=hidden_size,
        dropout=dropout,
        c=c,
        clip_r=clip_r,
    )
    return EmbeddingModel(backbone, pool, emb_head, data_config=data_config, model_kwargs=kwargs).eval()


def embedding_model_from_description(description: Mapping[str, Any]) -> EmbeddingModel:
    """Rebuild the architecture recorded by :meth:`EmbeddingModel.describe` with random weights (no network)."""
    try:
        bb, pool, head = description["backbone"], description["pooling"], description["head"]
        model = create_embedding_model(
            bb["name"],
            pretrained=False,
            pooling=pool["kind"],
            gem_p=float(pool.get("gem_p", 3.0)),
            gem_learnable=bool(pool.get("gem_learnable", True)),
            head=head["kind"],
            embedding_size=int(head["embedding_size"]),
            normalization=head["normalization"],
            hidden_size=head.get("hidden_size"),
            dropout=float(head.get("dropout", 0.0)),
            c=float(head.get("c", 0.1)),
            clip_r=head.get("clip_r"),
            model_kwargs=bb.get("model_kwargs") or {},
        )
    except (KeyError, TypeError) as e:
        raise StoreError(f"model description is incomplete or malformed ({e!r}): {dict(description)}") from e
    if "data_config" in description:
        model.data_config = _timm_data_config(description["data_config"])
    return model
