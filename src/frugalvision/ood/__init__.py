"""Out-of-distribution detection: scores (higher = more in-distribution), metrics, a fitted detector.

- :mod:`~frugalvision.ood.scores`: MSP, max logit, energy, feature norm, negative-aware norm, block
  FeatureNorm + NormRatio, kNN distance, Mahalanobis, as pure functions on tensors.
- :mod:`~frugalvision.ood.metrics`: AUROC, AUPR-In/Out, FPR@95TPR (scikit-learn's definitions).
- :class:`OODDetector`: fit on ID outputs, score, save/load (defaults that adapt to the fit set: kNN ``k`` from
  :func:`auto_knn_k`, Ledoit-Wolf covariance shrinkage); :func:`extract_ood_inputs` computes and caches
  the outputs a model gives for a data set.
"""

from frugalvision.ood.detector import SCORES, OODDetector, auto_knn_k
from frugalvision.ood.extract import OODInputs, extract_ood_inputs, jigsaw_block_norms
from frugalvision.ood.metrics import aupr, auroc, fpr_at_tpr, ood_metrics
from frugalvision.ood.scores import (
    block_feature_norm,
    energy,
    feature_norm,
    fit_class_gaussians,
    jigsaw,
    knn_score,
    knn_score_report,
    ledoit_wolf_shrinkage,
    mahalanobis_score,
    max_logit,
    msp,
    negative_aware_norm,
    norm_ratio,
)

__all__ = [
    "SCORES",
    "OODDetector",
    "OODInputs",
    "aupr",
    "auroc",
    "auto_knn_k",
    "block_feature_norm",
    "energy",
    "extract_ood_inputs",
    "feature_norm",
    "fit_class_gaussians",
    "fpr_at_tpr",
    "jigsaw",
    "jigsaw_block_norms",
    "knn_score",
    "knn_score_report",
    "ledoit_wolf_shrinkage",
    "mahalanobis_score",
    "max_logit",
    "msp",
    "negative_aware_norm",
    "norm_ratio",
    "ood_metrics",
]
