"""A faiss index of embeddings with their paths, labels and info, saved atomically to a directory."""

from frugalvision.index.faiss_index import (
    EmbeddingIndex,
    SearchResult,
    default_ef_search,
    default_nlist,
    default_nprobe,
    default_pq_m,
    default_rerank_factor,
    measure_recall,
)
from frugalvision.index.ondisk import build_on_disk

__all__ = [
    "EmbeddingIndex",
    "SearchResult",
    "build_on_disk",
    "default_ef_search",
    "default_nlist",
    "default_nprobe",
    "default_pq_m",
    "default_rerank_factor",
    "measure_recall",
]
