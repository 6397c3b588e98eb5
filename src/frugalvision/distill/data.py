"""Held-out split and teacher-target items of a distillation run (batches come from the training engine's
:class:`~frugalvision.train.data.LabelledDataModule` with its shuffle sampler)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from frugalvision.data import ImageDataset
from frugalvision.train.config import ConfigError

__all__ = ["TargetItems", "collate_targets", "holdout_split"]


def holdout_split(
    dataset: ImageDataset, how: str, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, held_out)`` of ``dataset``.

    ``how="images"``: of each class with ``n >= 3`` images, ``min(n - 1, max(2, round(fraction * n)))`` go to the
    held-out part (two at least, so each has a same-class neighbour for Recall@1; classes of 2 give one), and
    ``round(fraction * n)`` of the ``n`` unlabeled images (all but one at most). ``how="classes"``: ``round(fraction * C)`` classes (at least 1,
    at most ``C - 1``) with all their images, and ``fraction`` of the unlabeled images. ``how="none"``: no
    held-out part. The choice is random with ``seed``.

    Raises:
        ConfigError: ``"classes"`` on data with fewer than 2 classes.
    """
    n = len(dataset)
    if how == "none":
        return np.arange(n), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    labels = dataset.primary_labels()
    held = np.zeros(n, dtype=bool)
    unlabeled = np.flatnonzero(labels < 0)
    if len(unlabeled):
        take = min(len(unlabeled) - 1, round(fraction * len(unlabeled))) if len(unlabeled) > 1 else 0
        held[rng.choice(unlabeled, size=max(0, take), replace=False)] = True
    present = np.unique(labels[labels >= 0])
    if how == "classes":
        if len(present) < 2:
            raise ConfigError(
                f"val_split=classes holds out whole classes, but {dataset.source} has {len(present)} labelled "
                "class(es); use val_split=images"
            )
        k = min(len(present) - 1, max(1, round(fraction * len(present))))
        held |= np.isin(labels, rng.choice(present, size=k, replace=False))
    elif how == "images":
        for c in present:
            members = np.flatnonzero(labels == c)
            m = len(members)
            take = 1 if m == 2 else (min(m - 1, max(2, round(fraction * m))) if m >= 3 else 0)
            if take:
                held[rng.choice(members, size=take, replace=False)] = True
    else:
        raise ConfigError(f"val_split must be 'images', 'classes' or 'none', got {how!r}")
    return np.flatnonzero(~held), np.flatnonzero(held)


class TargetItems(Dataset):
    """Image ``i`` of a data set with the teacher's embedding ``targets[i]``: ``{"image", "target", "index"}``."""

    def __init__(self, dataset: ImageDataset, targets: np.ndarray) -> None:
        if len(dataset) != len(targets):
            raise ValueError(f"{len(targets)} teacher embeddings for {len(dataset)} images")
        self.dataset = dataset
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[int(index)])
        item["target"] = self.targets[int(index)]
        return item


def collate_targets(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`TargetItems` wrapped in :class:`~frugalvision.train.samplers.SeededItems`; unreadable images
    are dropped with their targets and listed in ``"skipped"`` as ``(index, message)``."""
    keep = [item for item in batch if item["image"] is not None]
    return {
        "image": torch.stack([item["image"] for item in keep]) if keep else None,
        "target": torch.stack([item["target"] for item in keep]) if keep else None,
        "label": torch.tensor([item["label"] for item in keep], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in keep], dtype=torch.long),
        "skipped": [
            (int(item["index"]), str(item.get("error", ""))) for item in batch if item["image"] is None
        ],
    }
