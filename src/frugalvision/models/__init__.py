"""Backbones (timm models as feature extractors) and where their weights come from."""

from frugalvision.models.backbone import (
    Backbone,
    BackboneSpec,
    backbone_from_spec,
    create_backbone,
    list_offline_backbones,
)

__all__ = ["Backbone", "BackboneSpec", "backbone_from_spec", "create_backbone", "list_offline_backbones"]
