"""Retrieval metrics for embeddings (Recall@K, Precision@1, R-Precision, MAP@R, NMI) and exact k-NN."""

from frugalvision.metrics.knn import knn
from frugalvision.metrics.retrieval import (
    map_at_r,
    nmi,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)

__all__ = [
    "knn",
    "map_at_r",
    "nmi",
    "precision_at_1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]
