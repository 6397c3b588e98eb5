"""Foundation models as helpers: image/text features, zero-shot labeling from class names.

- :func:`create_feature_model` builds a timm model (``vit_small_patch14_dinov2.lvd142m``) or an open_clip model
  (``open_clip:ViT-B-32/laion2b_s34b_b79k``) as a :class:`FeatureModel` (a ``Backbone`` with
  ``encode_text`` and ``patch_features``); :func:`extract_features` caches its features on disk.
- :func:`zero_shot_classify` labels images from class names with prompt ensembling;
  :func:`write_label_manifest` and :func:`write_review_queue` write the results.
"""

from frugalvision.foundation._data import open_images
from frugalvision.foundation.features import (
    OPEN_CLIP_PREFIX,
    FeatureModel,
    OpenClipFeatureModel,
    TimmFeatureModel,
    check_open_clip_weights_available,
    create_feature_model,
    extract_features,
    feature_model_from_spec,
    parse_open_clip_name,
)
from frugalvision.foundation.prompts import (
    DEFAULT_TEMPLATES,
    SIMPLE_TEMPLATES,
    TEMPLATE_SETS,
    ensemble_text_embeddings,
    format_prompts,
    parse_class_names,
    read_class_names,
    read_templates,
    resolve_templates,
    text_classifier,
)
from frugalvision.foundation.zero_shot import (
    ZeroShotResult,
    write_label_manifest,
    write_review_queue,
    zero_shot_classify,
    zero_shot_probs,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "OPEN_CLIP_PREFIX",
    "SIMPLE_TEMPLATES",
    "TEMPLATE_SETS",
    "FeatureModel",
    "OpenClipFeatureModel",
    "TimmFeatureModel",
    "ZeroShotResult",
    "check_open_clip_weights_available",
    "create_feature_model",
    "ensemble_text_embeddings",
    "extract_features",
    "feature_model_from_spec",
    "format_prompts",
    "open_images",
    "parse_class_names",
    "parse_open_clip_name",
    "read_class_names",
    "read_templates",
    "resolve_templates",
    "text_classifier",
    "write_label_manifest",
    "write_review_queue",
    "zero_shot_classify",
    "zero_shot_probs",
]
