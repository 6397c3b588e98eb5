"""Embedding extraction (backbone over a data set) and the on-disk store of its results."""

from frugalvision.embeddings.extract import (
    default_num_workers,
    embed_images,
    extract_embeddings,
    resolve_device,
)
from frugalvision.embeddings.store import EmbeddingStore

__all__ = ["EmbeddingStore", "default_num_workers", "embed_images", "extract_embeddings", "resolve_device"]
