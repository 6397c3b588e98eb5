"""Embedding extraction (backbone over a data set) and the on-disk store of its results."""

from frugalvision.embeddings.extract import (
    ExtractOptions,
    default_num_workers,
    embed_images,
    extract_embeddings,
    resolve_device,
)
from frugalvision.embeddings.sharding import merge_shards, parse_shard, shard_rows
from frugalvision.embeddings.store import EmbeddingStore

__all__ = [
    "EmbeddingStore",
    "ExtractOptions",
    "default_num_workers",
    "embed_images",
    "extract_embeddings",
    "merge_shards",
    "parse_shard",
    "resolve_device",
    "shard_rows",
]
