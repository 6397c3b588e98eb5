"""Training data: class-disjoint / per-image validation splits (single-label), random image splits (multi-label),
labelled item sets and the Lightning data module."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from frugalvision.data import ImageDataset
from frugalvision.errors import DataError, DataWarning
from frugalvision.train.config import TrainConfig
from frugalvision.train.samplers import (
    ClassAwareSampler,
    MPerClassSampler,
    SeededItems,
    ShardSampler,
    ShuffleSampler,
)

__all__ = [
    "EpochSeeder",
    "FeatureItems",
    "LabelledDataModule",
    "LabelledSplit",
    "MultilabelSplit",
    "collate_labelled",
    "multilabel_split",
    "split_dataset",
]


@dataclass
class _Split:
    """One side of a split: the images, their labels (shape and meaning in the subclass) and the class names."""

    dataset: ImageDataset
    labels: np.ndarray
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Image and class counts, the subclass's label statistics, then ``info``."""
        return {
            "images": len(self.labels),
            "classes": len(self.classes),
            **self._label_summary(),
            **self.info,
        }

    def _label_summary(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class LabelledSplit(_Split):
    """One side of a split: the images, their class ids ``0..C-1`` and the class names.

    ``labels[i]`` is the class of ``dataset.samples[i]`` and indexes ``classes``.
    """

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.dataset):
            raise ValueError(f"{len(self.labels)} labels for {len(self.dataset)} images")

    def _label_summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels, minlength=len(self.classes)) if len(self.labels) else np.zeros(0)
        return {
            "images_per_class_min": int(counts.min()) if counts.size else 0,
            "images_per_class_max": int(counts.max()) if counts.size else 0,
        }


@dataclass
class MultilabelSplit(_Split):
    """One side of a multi-label split: the images, their ``(N, C)`` targets (1 present, 0 absent, -1 unknown) in
    ``labels`` and the class names (all classes of the data set, on both sides)."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.labels.shape != (len(self.dataset), len(self.classes)):
            raise ValueError(
                f"targets of shape {self.labels.shape} for {len(self.dataset)} images and {len(self.classes)} classes"
            )

    def positives(self) -> np.ndarray:
        """``(C,)`` number of images where each class is present."""
        return (self.labels == 1).sum(axis=0).astype(np.int64)

    def _label_summary(self) -> dict[str, Any]:
        pos = self.positives()
        n = len(self.labels)
        return {
            "labels_per_image": float((self.labels == 1).sum() / n) if n else 0.0,
            "positives_per_class_min": int(pos.min()) if pos.size else 0,
            "positives_per_class_max": int(pos.max()) if pos.size else 0,
            "unknown_fraction": float((self.labels == -1).mean()) if n else 0.0,
        }


def multilabel_split(
    dataset: ImageDataset, how: str, fraction: float, seed: int
) -> tuple[MultilabelSplit, MultilabelSplit | None]:
    """Split multi-label data into training and validation images at random (``how="images"``) or not at all
    (``how="none"``). Images without any label and without unknown classes are kept: they are negatives for
    every class. Classes with no positive training image are reported with a :class:`DataWarning`.

    Raises:
        DataError: fewer than 2 images, or ``how="classes"`` (a classifier cannot predict unseen classes).
    """
    targets = dataset.target_matrix()
    full = MultilabelSplit(dataset, targets, dataset.classes, {})
    if how == "none":
        _warn_unseen(full, dataset.source)
        return full, None
    if how != "images":
        raise DataError(f"a multi-label data set is split by images, not {how!r}")
    n = len(dataset)
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DataError(f"{dataset.source} has {n} images: too few to hold out {fraction:.0%} for validation")
    order = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[order[:n_val]] = True
    info = {"split": "images", "fraction": fraction, "seed": seed}
    train = MultilabelSplit(dataset.subset(np.flatnonzero(~is_val)), targets[~is_val], dataset.classes, info)
    val = MultilabelSplit(dataset.subset(np.flatnonzero(is_val)), targets[is_val], dataset.classes, info)
    _warn_unseen(train, dataset.source)
    return train, val


def _warn_unseen(train: MultilabelSplit, source: str) -> None:
    missing = [c for c, n in zip(train.classes, train.positives(), strict=True) if n == 0]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        warnings.warn(
            f"{len(missing)} class(es) of {source} have no positive training image and cannot be learned: {shown}",
            DataWarning,
            stacklevel=3,
        )


def _relabel(
    dataset: ImageDataset, keep: np.ndarray, old_labels: np.ndarray, info: dict[str, Any]
) -> LabelledSplit:
    classes_used = np.unique(old_labels[keep])
    mapping = np.full(len(dataset.classes), -1, dtype=np.int64)
    mapping[classes_used] = np.arange(len(classes_used))
    names = [dataset.classes[c] for c in classes_used]
    return LabelledSplit(dataset.subset(keep), mapping[old_labels[keep]], names, info)


def labelled_split(dataset: ImageDataset, info: dict[str, Any] | None = None) -> LabelledSplit:
    """All labelled images of ``dataset`` (first label of multi-label samples), classes renumbered ``0..C-1``."""
    labels = dataset.primary_labels()
    keep = np.flatnonzero(labels >= 0)
    if len(keep) < len(labels):
        warnings.warn(
            f"{len(labels) - len(keep)} image(s) of {dataset.source} have no label and are left out",
            DataWarning,
            stacklevel=2,
        )
    if dataset.multilabel:
        warnings.warn(
            "multi-label data: the embedding task uses each image's first label", DataWarning, stacklevel=2
        )
    return _relabel(dataset, keep, labels, dict(info or {}))


def split_dataset(
    dataset: ImageDataset, how: str, fraction: float, seed: int, *, require_pairs: bool = True
) -> tuple[LabelledSplit, LabelledSplit | None]:
    """Split into training and validation parts.

    Args:
        dataset: labelled images.
        how: ``"classes"`` -- ``round(fraction * C)`` classes (at least 1, chosen at random with ``seed``) go to
            validation with all their images (class-disjoint, the deep-metric-learning protocol);
            ``"images"`` -- ``round(fraction * n_c)`` images of each class with at least 2 images (at least 1)
            go to validation, classes shared; ``"none"`` -- no validation.
        fraction: share held out, in ``(0, 1)``.
        seed: seed of the random choice.
        require_pairs: check that a validation class has 2 images or more (:func:`check_validation_split`: the
            retrieval metrics need it; a classifier's accuracy does not).

    Raises:
        DataError: too few classes or images for the requested split.
    """
    full = labelled_split(dataset)
    if how == "none":
        return full, None
    labels, n_classes = full.labels, len(full.classes)
    rng = np.random.default_rng(seed)
    if how == "classes":
        n_val = max(1, round(fraction * n_classes))
        if n_classes - n_val < 2 or n_val < 1:
            raise DataError(
                f"a class-disjoint split of {dataset.source} needs at least 2 training classes and 1 validation "
                f"class; it has {n_classes} classes (val_fraction={fraction})"
            )
        val_classes = np.sort(rng.choice(n_classes, size=n_val, replace=False))
        is_val = np.isin(labels, val_classes)
        names = [full.classes[c] for c in val_classes]
        info = {"split": "classes", "fraction": fraction, "seed": seed}
        train = _relabel(full.dataset, np.flatnonzero(~is_val), labels, info)
        val = _relabel(full.dataset, np.flatnonzero(is_val), labels, {**info, "val_classes": names})
    elif how == "images":
        is_val = np.zeros(len(labels), dtype=bool)
        for c in range(n_classes):
            members = np.flatnonzero(labels == c)
            if len(members) >= 2:
                take = min(len(members) - 1, max(1, round(fraction * len(members))))
                is_val[rng.choice(members, size=take, replace=False)] = True
        info = {"split": "images", "fraction": fraction, "seed": seed}
        train = LabelledSplit(
            full.dataset.subset(np.flatnonzero(~is_val)), labels[~is_val], full.classes, info
        )
        val = LabelledSplit(full.dataset.subset(np.flatnonzero(is_val)), labels[is_val], full.classes, info)
    else:
        raise ValueError(f"val_split must be 'classes', 'images' or 'none', got {how!r}")
    if require_pairs:
        check_validation_split(val, dataset.source)
    return train, val


def check_validation_split(val: LabelledSplit, source: str) -> None:
    """Retrieval metrics need a class with at least 2 images; raise :class:`DataError` otherwise."""
    counts = np.bincount(val.labels, minlength=len(val.classes))
    if not (counts >= 2).any():
        raise DataError(
            f"the validation images of {source} ({len(val.labels)} images) have no class with 2 or more images, so "
            "retrieval metrics cannot be computed; raise data.val_fraction or pass data.val_data"
        )


class FeatureItems(Dataset):
    """Rows of a feature matrix as items ``{"image": (F,) tensor, "index": i}`` (the frozen-backbone fast path)."""

    def __init__(self, features: np.ndarray | torch.Tensor) -> None:
        self.features = torch.as_tensor(np.asarray(features, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.features[index], "index": int(index)}


def collate_labelled(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`~frugalvision.train.samplers.SeededItems`; unreadable images are dropped.

    Returns ``{"image": (B', ...) or None, "label": (B',) int64 or (B', C) float32 multi-label targets,
    "index": (B',) int64, "skipped": [(i, msg)]}``.
    """
    keep = [item for item in batch if item["image"] is not None]
    multilabel = bool(batch) and isinstance(batch[0]["label"], torch.Tensor)
    if multilabel:
        width = batch[0]["label"].shape[0]
        labels = torch.stack([item["label"] for item in keep]) if keep else torch.zeros(0, width)
    else:
        labels = torch.tensor([item["label"] for item in keep], dtype=torch.long)
    return {
        "image": torch.stack([item["image"] for item in keep]) if keep else None,
        "label": labels,
        "index": torch.tensor([item["index"] for item in keep], dtype=torch.long),
        "skipped": [
            (int(item["index"]), str(item.get("error", ""))) for item in batch if item["image"] is None
        ],
    }


class LabelledDataModule(pl.LightningDataModule):
    """Training batches from the configured sampler (:class:`MPerClassSampler`, :class:`ShuffleSampler` or
    :class:`ClassAwareSampler`) and sharded validation batches, DDP-aware.

    Lightning's own distributed sampler is switched off (``Trainer(use_distributed_sampler=False)``); the
    samplers here are told the world size and rank by the trainer, and the training sampler starts at the
    trainer's current epoch (so a resumed run draws the same batches as an uninterrupted one). Call
    ``train_sampler.set_epoch(epoch)`` at the start of each epoch (the engine's callback does).
    """

    def __init__(
        self,
        train: SeededItems,
        val: SeededItems | None,
        *,
        batch_size: int,
        m_per_class: int,
        eval_batch_size: int,
        seed: int,
        num_workers: int,
        steps_per_epoch: int | None,
        sampler: str = "m_per_class",
        collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = collate_labelled,
    ) -> None:
        super().__init__()
        if sampler not in ("m_per_class", "shuffle", "class_aware"):
            raise ValueError(f"sampler must be m_per_class, shuffle or class_aware, got {sampler!r}")
        self.train_items, self.val_items = train, val
        self.batch_size, self.m_per_class, self.eval_batch_size = batch_size, m_per_class, eval_batch_size
        self.seed, self.num_workers, self.steps_per_epoch = seed, num_workers, steps_per_epoch
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.train_sampler: MPerClassSampler | ShuffleSampler | ClassAwareSampler | None = None

    @classmethod
    def for_run(
        cls,
        config: TrainConfig,
        trainer: pl.Trainer,
        train: SeededItems,
        val: SeededItems | None,
        *,
        num_workers: int,
        sampler: str,
        collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = collate_labelled,
    ) -> tuple[LabelledDataModule, int]:
        """``(data module, steps per epoch)`` of a training run from its ``config.data`` and ``config.seed``.

        Steps per epoch: ``data.steps_per_epoch``, or ``len(train) // (batch_size * world_size)`` (at least 1);
        the trainer logs at least once an epoch (``log_every_n_steps`` is capped at the steps).
        """
        d = config.data
        steps = d.steps_per_epoch or max(1, len(train) // (d.batch_size * trainer.world_size))
        trainer.log_every_n_steps = min(config.trainer.log_every_n_steps, steps)  # type: ignore[attr-defined]
        module = cls(
            train, val, batch_size=d.batch_size, m_per_class=d.m_per_class, eval_batch_size=d.eval_batch_size,
            seed=config.seed, num_workers=num_workers, steps_per_epoch=steps, sampler=sampler, collate_fn=collate_fn,
        )  # fmt: skip
        return module, steps

    def _world(self) -> tuple[int, int, int]:
        """World size, rank and the epoch the next training iteration belongs to.

        The epoch is Lightning's own count of processed epochs (what it passes to ``set_epoch``): on a resumed run
        it is already the epoch about to start when the dataloader is built, while ``trainer.current_epoch`` can
        still be the last finished one.
        """
        trainer = self.trainer
        if trainer is None:
            return 1, 0, 0
        epoch = int(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]
        return trainer.world_size, trainer.global_rank, epoch

    def make_train_sampler(
        self, world_size: int = 1, rank: int = 0, epoch: int = 0
    ) -> MPerClassSampler | ShuffleSampler | ClassAwareSampler:
        """The training batch sampler for this world size, rank and starting epoch."""
        common: dict[str, Any] = {
            "num_batches": self.steps_per_epoch,
            "num_replicas": world_size,
            "rank": rank,
            "epoch": epoch,
        }
        labels = self.train_items.labels
        if self.sampler == "shuffle":
            return ShuffleSampler(len(labels), self.batch_size, self.seed, **common)
        if self.sampler == "class_aware":
            return ClassAwareSampler(labels, self.batch_size, self.seed, **common)
        return MPerClassSampler(labels, self.m_per_class, self.batch_size, self.seed, **common)

    def train_dataloader(self) -> DataLoader:
        world_size, rank, epoch = self._world()
        self.train_sampler = self.make_train_sampler(world_size, rank, epoch)
        return DataLoader(
            self.train_items,
            batch_sampler=self.train_sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=False,
            generator=_private_generator(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_items is None:
            raise RuntimeError(
                "no validation data: the trainer should have been built with limit_val_batches=0"
            )
        world_size, rank, _ = self._world()
        return DataLoader(
            self.val_items,
            batch_sampler=ShardSampler(len(self.val_items), self.eval_batch_size, world_size, rank),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=False,
            generator=_private_generator(self.seed),
        )


class EpochSeeder(Callback):
    """At each epoch start: the global generators seeded from ``(seed, epoch, rank)`` and the data module's
    ``train_sampler`` told the epoch -- so an epoch's randomness does not depend on what ran before it (the key to
    exact resumption)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, rank = trainer.current_epoch, trainer.global_rank
        derived = int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0])
        random.seed(derived)
        np.random.seed(derived)  # noqa: NPY002  (third-party augmentations draw from the global generator)
        torch.manual_seed(derived)
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _private_generator(seed: int) -> torch.Generator:
    """A DataLoader draws its workers' base seed when an iterator starts; from this generator rather than the global
    one, so that starting an iterator (which Lightning does at different moments in fresh and resumed runs) never
    shifts the global random stream that dropout and stochastic depth draw from."""
    return torch.Generator().manual_seed(seed)
