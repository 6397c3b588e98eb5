"""Retrieval metrics for embeddings (Recall@K, Precision@1, R-Precision, MAP@R, NMI) and exact k-NN.

Multi-label tagging metrics (per-class AP, mAP, CP/CR/CF1, OP/OR/OF1, tuned thresholds) are in
:mod:`frugalvision.metrics.multilabel`; the transferability of frozen features to labelled data (LogME) in
:mod:`frugalvision.metrics.transferability`; single-label classification metrics and calibration (top-k and
balanced accuracy, macro-F1, confusion matrix, ECE, temperature scaling) in
:mod:`frugalvision.metrics.classification`; object-detection metrics (COCO mAP through pycocotools or
faster-coco-eval, the detection confusion matrix) in :mod:`frugalvision.metrics.detection`.
"""

from frugalvision.metrics.classification import (
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    reliability_bins,
    softmax,
    topk_accuracy,
)
from frugalvision.metrics.detection import DetectionEvaluation, coco_evaluate, detection_confusion_matrix
from frugalvision.metrics.knn import knn
from frugalvision.metrics.multilabel import (
    average_precision_per_class,
    mean_average_precision,
    multilabel_metrics,
    per_class_report,
    tune_thresholds,
)
from frugalvision.metrics.retrieval import (
    map_at_r,
    nmi,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)
from frugalvision.metrics.transferability import logme

__all__ = [
    "DetectionEvaluation",
    "average_precision_per_class",
    "balanced_accuracy",
    "classification_report",
    "coco_evaluate",
    "confusion_matrix",
    "detection_confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "knn",
    "logme",
    "macro_f1",
    "map_at_r",
    "mean_average_precision",
    "multilabel_metrics",
    "nmi",
    "per_class_report",
    "precision_at_1",
    "r_precision",
    "recall_at_k",
    "reliability_bins",
    "retrieval_metrics",
    "softmax",
    "topk_accuracy",
    "tune_thresholds",
]
