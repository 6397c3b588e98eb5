"""Backbones (timm models as feature extractors), where their weights come from, and embedding models."""

from frugalvision.models._weights import _in_hf_cache as in_hf_cache
from frugalvision.models._weights import load_into, read_state_dict, require_download
from frugalvision.models.backbone import (
    Backbone,
    BackboneSpec,
    backbone_from_spec,
    create_backbone,
    list_offline_backbones,
    offline_architecture,
)
from frugalvision.models.embedding_model import (
    EmbeddingModel,
    EmbeddingModelSpec,
    create_embedding_model,
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
    "embedding_model_from_description",
    "in_hf_cache",
    "list_offline_backbones",
    "load_into",
    "offline_architecture",
    "read_state_dict",
    "require_download",
]
