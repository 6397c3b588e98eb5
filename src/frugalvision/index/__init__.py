"""A faiss index of embeddings with their paths, labels and info, saved atomically to a directory."""

from frugalvision.index.faiss_index import EmbeddingIndex, SearchResult, default_nlist

__all__ = ["EmbeddingIndex", "SearchResult", "default_nlist"]
