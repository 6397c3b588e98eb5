"""The frozen-backbone fast path: pooled backbone features computed once, cached on disk, reused by every run.

The cache is an :class:`~frugalvision.embeddings.EmbeddingStore` written by
:func:`~frugalvision.embeddings.extract_embeddings` (so it is resumable and atomic, and corrupt images are skipped
with one warning). Its folder name is a hash of everything that changes the features: the backbone spec (name,
pretrained, weights file), the pooling (kind, and GeM's ``p``, which is fixed on this path), the timm
``model_kwargs``, the preprocessing ``data_config`` and the data set's location. Images are preprocessed with the
evaluation transform (no augmentation), so features are computed exactly once per image.

Training on cached features runs a small head only: :class:`SmallHeadThreads` keeps such a run on one intra-op
thread of the CPU, where splitting microsecond-sized operations across threads costs more than it gains.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from frugalvision.data import ImageDataset
from frugalvision.embeddings import EmbeddingStore, ExtractOptions, extract_embeddings
from frugalvision.errors import StoreError
from frugalvision.models.embedding_model import EmbeddingModel, jsonable_data_config
from frugalvision.train._dist import env_rank

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "SMALL_HEAD_MACS",
    "PooledFeatures",
    "SmallHeadThreads",
    "cached_features",
    "extract_once",
    "feature_cache_key",
    "rows_in_order",
]

#: Largest multiply-accumulate count of one head step (batch size x head parameters) that :class:`SmallHeadThreads`
#: runs on one thread: about 10 ms of single-threaded fp32 work.
SMALL_HEAD_MACS = 1 << 24


@dataclass(frozen=True)
class _FeatureSpec:
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.info))


class PooledFeatures(nn.Module):
    """The backbone and pooling of an :class:`~frugalvision.models.EmbeddingModel`, with a backbone's face
    (``spec``, ``data_config``, ``transform()``) so that :func:`~frugalvision.embeddings.extract_embeddings` can
    run it. ``forward(images) -> (B, F)`` pooled features."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model
        self.data_config = dict(model.data_config)
        self.spec = _FeatureSpec(
            {
                "features_of": model.backbone.spec.to_dict(),
                "pooling": model.pooling.describe(),
                "model_kwargs": dict(model.model_kwargs),
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]:
        return self.model.transform(training=False)


def feature_cache_key(model: EmbeddingModel, source: str) -> str:
    """16 hex digits identifying the features of ``model``'s backbone + pooling on the data at ``source``."""
    settings = {
        **PooledFeatures(model).spec.to_dict(),
        "data_config": jsonable_data_config(model.data_config),
        "source": str(source),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def extract_once(
    model: Any, dataset: ImageDataset, folder: Path, *, what: str, wait_s: float = 3600.0, **kwargs: Any
) -> EmbeddingStore:
    """:func:`~frugalvision.embeddings.extract_embeddings` into ``folder`` by rank 0 only; the other processes of a
    multi-process run wait (up to ``wait_s``) for the finished store instead of racing on the same folder.

    Raises:
        StoreError: the wait timed out (``what`` names the store in the message).
    """
    if env_rank() == 0:
        return extract_embeddings(model, dataset, folder, **kwargs)
    deadline = time.monotonic() + wait_s
    while not (EmbeddingStore.exists(folder) and not (folder / "parts").exists()):
        if time.monotonic() > deadline:
            raise StoreError(
                f"rank {env_rank()} waited {wait_s:.0f} s for rank 0 to write the {what} {folder}"
            )
        time.sleep(1.0)
    return EmbeddingStore.load(folder)


def cached_features(
    model: EmbeddingModel,
    dataset: ImageDataset,
    cache_root: str | os.PathLike[str],
    *,
    source: str,
    wait_s: float = 3600.0,
    **loader: Unpack[ExtractOptions],
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of every image of ``dataset``, from the cache or computed and cached now.

    Args:
        model: its backbone and pooling are used (the head is not).
        dataset: the images.
        cache_root: folder of the cache; one sub-folder per :func:`feature_cache_key`.
        source: where the data set came from (part of the key, so two data sets do not evict each other).
        wait_s: processes of rank > 0 (distributed training) wait this long for rank 0 to fill the cache.
        loader: ``batch_size``, ``num_workers``, ``device``, ``progress``
            (:class:`~frugalvision.embeddings.ExtractOptions`), as for
            :func:`~frugalvision.embeddings.extract_embeddings`.

    Returns:
        ``(features (N', F) float32, kept (N,) bool)``: ``kept[i]`` is False for images that could not be read
        (they are left out of ``features``, which follows the data set's order).
    """
    folder = Path(cache_root) / feature_cache_key(model, source)
    store = extract_once(
        PooledFeatures(model), dataset, folder, what="feature cache", wait_s=wait_s, normalize=False, **loader
    )
    return rows_in_order(store, [str(p) for p in dataset.paths])


def rows_in_order(store: EmbeddingStore, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``store`` for ``paths``, in their order: ``(vectors (N', D), kept (N,) bool)``, ``kept[i]``
    False where the store has no row for ``paths[i]`` (an image its extraction could not read)."""
    rows = {p: i for i, p in enumerate(store.paths)}
    index = np.array([rows.get(p, -1) for p in paths], dtype=np.int64)
    kept = index >= 0
    return store.vectors[index[kept]], kept


class SmallHeadThreads(Callback):
    """One intra-op thread on the CPU while a small head trains on cached features (restored afterwards).

    A step of the frozen-backbone fast path is a few products ``(B, F) @ (F, C)`` and an optimiser update of the
    head: microseconds of work per operation. PyTorch splits every operation of more than 32,768 elements across
    its intra-op threads and waits for all of them; on a CPU whose cores are busy with other processes, each such
    wait lasts until a descheduled thread gets its time slice again, so the loop is bound by scheduling, not by
    arithmetic (on a shared 2-core CPU, ``isfinite`` of a ``(32, 1280)`` tensor took 39 ms with 2 threads against
    0.65 ms with 1). Above :data:`SMALL_HEAD_MACS` multiply-accumulates per step (a wide head, large batches)
    threads pay off and nothing is changed; nor on an accelerator.

    Args:
        macs: multiply-accumulates of one step, ``batch size x head parameters``.

    The thread count is set in ``setup`` and restored in ``teardown`` and on an exception, so a failed run leaves
    the process as it found it.
    """

    def __init__(self, macs: int) -> None:
        self.macs = int(macs)
        self._saved: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (
            self._saved is None
            and self.macs <= SMALL_HEAD_MACS
            and trainer.strategy.root_device.type == "cpu"
        ):
            self._saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            torch.set_num_threads(self._saved)
            self._saved = None
