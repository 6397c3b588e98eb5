"""Metric-learning losses: ``loss(embeddings (B, D), labels (B,), **extra) -> scalar``.

Every loss is an ``nn.Module`` holding its own learnable parameters (proxies, class weights) and is
registered by name with what it needs (its task, the space its inputs live in, class names or a text model, a
loss it wraps): ``create_loss("proxynca++", num_classes=100, embedding_size=512)``; ``list_losses()`` gives the
names, ``loss_entry(name)`` a loss's registered traits (aliases resolve to their canonical entry) and
``loss_param_groups(loss, base_lr)`` the optimiser groups for its parameters.
"""

from frugalvision.losses._registry import (
    LOSS_NEEDS,
    LOSS_SPACES,
    LOSS_TASKS,
    LossEntry,
    create_loss,
    get_loss_class,
    list_losses,
    loss_entry,
    loss_param_groups,
    loss_task,
    register_loss,
)
from frugalvision.losses.angular_margin import (
    ArcFaceLoss,
    CosFaceLoss,
    SphereFaceLoss,
    arcface_loss,
    cosface_loss,
    cosine_logits,
    sphereface_loss,
)
from frugalvision.losses.distances import pairwise_distance
from frugalvision.losses.miners import all_triplets, hard_triplets, positive_pairs, semihard_triplets
from frugalvision.losses.proxy_nca import (
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    proxy_nca_loss,
    proxy_nca_plus_plus_loss,
)
from frugalvision.losses.quadruplet import QuadrupletLoss, quadruplet_loss
from frugalvision.losses.reducers import masked_reduce
from frugalvision.losses.triplet import TripletMarginLoss, triplet_margin_loss

__all__ = [
    "LOSS_NEEDS",
    "LOSS_SPACES",
    "LOSS_TASKS",
    "ArcFaceLoss",
    "CosFaceLoss",
    "LossEntry",
    "ProxyNCALoss",
    "ProxyNCAPlusPlusLoss",
    "QuadrupletLoss",
    "SphereFaceLoss",
    "TripletMarginLoss",
    "all_triplets",
    "arcface_loss",
    "cosface_loss",
    "cosine_logits",
    "create_loss",
    "get_loss_class",
    "hard_triplets",
    "list_losses",
    "loss_entry",
    "loss_param_groups",
    "loss_task",
    "masked_reduce",
    "pairwise_distance",
    "positive_pairs",
    "proxy_nca_loss",
    "proxy_nca_plus_plus_loss",
    "quadruplet_loss",
    "register_loss",
    "semihard_triplets",
    "sphereface_loss",
    "triplet_margin_loss",
]

# Modern metric-learning losses: intra-batch message passing, hyperbolic (Hyp-ViT), language guidance, SigLIP.
from frugalvision.losses.hyperbolic import HyperbolicPairwiseCELoss, hyperbolic_pairwise_ce_loss
from frugalvision.losses.intra_batch import IntraBatchLoss, intra_batch_loss
from frugalvision.losses.language_guided import (
    LanguageGuidanceLoss,
    embed_class_names,
    imagenet_class_names,
    language_guidance_loss,
    minilm_text_encoder,
    pseudo_label_embeddings,
    pseudo_label_names,
)
from frugalvision.losses.siglip import SigLIPLoss, siglip_loss

__all__ += [
    "HyperbolicPairwiseCELoss",
    "IntraBatchLoss",
    "LanguageGuidanceLoss",
    "SigLIPLoss",
    "embed_class_names",
    "hyperbolic_pairwise_ce_loss",
    "imagenet_class_names",
    "intra_batch_loss",
    "language_guidance_loss",
    "minilm_text_encoder",
    "pseudo_label_embeddings",
    "pseudo_label_names",
    "siglip_loss",
]

# Distillation: student vs teacher embeddings (no labels, so not in the label-based registry).
from frugalvision.losses.distillation import DistillationLoss, distillation_loss  # noqa: E402

__all__ += ["DistillationLoss", "distillation_loss"]

# Multi-label losses on sigmoid logits (targets 1 / 0 / -1 unknown) and the partial-annotation wrapper.
from frugalvision.losses.asymmetric import AsymmetricLoss, asymmetric_loss  # noqa: E402
from frugalvision.losses.bce import BinaryCrossEntropyLoss, bce_loss  # noqa: E402
from frugalvision.losses.distribution_balanced import (  # noqa: E402
    DistributionBalancedLoss,
    distribution_balanced_loss,
)
from frugalvision.losses.focal import FocalLoss, focal_loss  # noqa: E402
from frugalvision.losses.partial import PartialAnnotationLoss  # noqa: E402

__all__ += [
    "AsymmetricLoss",
    "BinaryCrossEntropyLoss",
    "DistributionBalancedLoss",
    "FocalLoss",
    "PartialAnnotationLoss",
    "asymmetric_loss",
    "bce_loss",
    "distribution_balanced_loss",
    "focal_loss",
]

# Object detection (task="detection"): box losses, the task-aligned assigner and the detector's loss.
from frugalvision.losses.box_iou import box_iou_loss, ciou_loss, giou_loss, paired_box_iou  # noqa: E402
from frugalvision.losses.detection import DetectionLoss, pad_targets, varifocal_loss  # noqa: E402
from frugalvision.losses.detection_assigner import (  # noqa: E402
    Assignment,
    TaskAlignedAssigner,
    pairwise_box_iou,
)
from frugalvision.losses.detection_dfl import distribution_focal_loss, side_distances  # noqa: E402

__all__ += [
    "Assignment",
    "DetectionLoss",
    "TaskAlignedAssigner",
    "box_iou_loss",
    "ciou_loss",
    "distribution_focal_loss",
    "giou_loss",
    "pad_targets",
    "paired_box_iou",
    "pairwise_box_iou",
    "side_distances",
    "varifocal_loss",
]
