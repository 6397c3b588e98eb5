"""Backbones (timm models as feature extractors), where their weights come from, and embedding models."""

from frugalvision.models.backbone import (
    Backbone,
    BackboneSpec,
    backbone_from_spec,
    create_backbone,
    list_offline_backbones,
)
from frugalvision.models.embedding_model import (
    EmbeddingModel,
    EmbeddingModelSpec,
    create_embedding_model,
    embedder_from_spec,
    embedding_model_from_description,
)
from frugalvision.models.heads import EmbeddingHead, GeM, GlobalPool

__all__ = [
    "Backbone",
    "BackboneSpec",
    "EmbeddingHead",
    "EmbeddingModel",
    "EmbeddingModelSpec",
    "GeM",
    "GlobalPool",
    "backbone_from_spec",
    "create_backbone",
    "create_embedding_model",
    "embedder_from_spec",
    "embedding_model_from_description",
    "list_offline_backbones",
]
