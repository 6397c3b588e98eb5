"""Training batch samplers, deterministic per epoch: m images of each of ``batch_size / m`` classes (metric
learning), a plain shuffle, and class-aware sampling (multi-label tagging of long-tailed classes).

A batch sampler yields lists of ``(index, item_seed)`` pairs: ``item_seed`` fixes the random augmentation of that
image (see :class:`SeededItems`), so an epoch's batches *and* their augmentations depend only on
``(seed, epoch)`` -- not on the number of data-loading workers, nor on whether the run was interrupted and
resumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ClassAwareSampler", "MPerClassSampler", "SeededItems", "ShardSampler", "ShuffleSampler"]


class EpochOptions(TypedDict, total=False):
    """The keyword options every epoch sampler takes (their defaults and meaning: :class:`MPerClassSampler`)."""

    num_batches: int | None
    num_replicas: int
    rank: int
    epoch: int


class _EpochBatches(Sampler[list[tuple[int, int]]]):
    """Shared mechanics: ``num_batches`` per rank, drawn from ``(seed, epoch)``, ranks taking disjoint slices of
    one global sequence of batches; subclasses say which indices an epoch visits (:meth:`_draw`) or build the
    batches themselves (:meth:`global_batches`)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        *,
        num_batches: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if size < 1:
            raise ValueError("there are no training items to sample")
        self.size, self.batch_size, self.seed = int(size), int(batch_size), int(seed)
        self.num_replicas, self.rank, self.epoch = int(num_replicas), int(rank), int(epoch)
        if num_batches is None:
            num_batches = max(1, self.size // (self.batch_size * self.num_replicas))
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = int(num_batches)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        raise NotImplementedError

    def global_batches(self) -> list[list[tuple[int, int]]]:
        """All ranks' batches of the current epoch, in order (rank ``r`` gets ``[r::num_replicas]``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.num_replicas
        order = self._draw(rng, total * self.batch_size)
        seeds = rng.integers(0, 2**31 - 1, size=len(order))
        pairs = [(int(i), int(s)) for i, s in zip(order, seeds, strict=True)]
        return [pairs[b * self.batch_size : (b + 1) * self.batch_size] for b in range(total)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.global_batches()[self.rank :: self.num_replicas]


class MPerClassSampler(_EpochBatches):
    """Batches of ``batch_size // m`` distinct classes with ``m`` images each (pytorch-metric-learning's scheme).

    Classes are drawn from a shuffled list of all classes (reshuffled when used up), so every class is seen
    equally often whatever its size; within a class, images come from a shuffled cycle of its images, so no
    image repeats within a batch unless the class has fewer than ``m`` images.

    Under data-parallel training every rank builds the same global sequence of ``num_batches * num_replicas``
    batches from ``(seed, epoch)`` and keeps every ``num_replicas``-th one starting at ``rank``: the ranks get
    disjoint slices of one epoch, each of ``num_batches`` batches.

    Args:
        labels: ``(N,)`` class of each item; negative labels (unlabeled) are never sampled.
        m: images per class in a batch (``>= 1``).
        batch_size: images per batch on each rank, a multiple of ``m``.
        seed: base seed; batches depend only on ``(seed, epoch)``.
        num_batches: batches per epoch on each rank (default: ``labelled items // (batch_size * num_replicas)``,
            at least 1).
        num_replicas, rank: data-parallel world size and this process's rank.
        epoch: the first epoch (call :meth:`set_epoch` at the start of every epoch).

    Yields:
        lists of ``batch_size`` pairs ``(index, item_seed)``.

    Raises:
        ValueError: ``batch_size`` not a multiple of ``m``, fewer labelled classes than ``batch_size // m``, a bad
            ``rank``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        m: int,
        batch_size: int,
        seed: int = 0,
        **options: Unpack[EpochOptions],
    ) -> None:
        labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if labels_np.size and not np.issubdtype(labels_np.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels_np.dtype}")
        if m < 1 or batch_size < 1 or batch_size % m:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        classes = np.unique(labels_np[labels_np >= 0])
        if len(classes) < batch_size // m:
            raise ValueError(
                f"a batch of {batch_size} with m={m} needs {batch_size // m} classes, but the labels have "
                f"{len(classes)}; lower batch_size or raise m"
            )
        super().__init__(int((labels_np >= 0).sum()), batch_size, seed, **options)
        self.m = int(m)
        self.classes_per_batch = self.batch_size // self.m
        self._members = [np.flatnonzero(labels_np == c) for c in classes]

    def global_batches(self) -> list[list[tuple[int, int]]]:
        """All ranks' batches of the current epoch, in order (rank ``r`` gets ``[r::num_replicas]``)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.num_replicas
        n_classes = len(self._members)
        class_queue: list[int] = []
        cycles = [rng.permutation(idx) for idx in self._members]
        cursor = [0] * n_classes
        batches: list[list[tuple[int, int]]] = []
        for _ in range(total):
            chosen: list[int] = []
            while len(chosen) < self.classes_per_batch:
                if not class_queue:
                    class_queue = rng.permutation(n_classes).tolist()
                c = class_queue.pop()
                if c in chosen:  # only possible across a reshuffle; put it back for later
                    class_queue.insert(0, c)
                    continue
                chosen.append(c)
            batch: list[int] = []
            for c in chosen:
                taken: list[int] = []
                for _ in range(self.m):
                    if cursor[c] == len(cycles[c]):  # a new cycle; this batch's images of c go last in it
                        fresh = rng.permutation(self._members[c])
                        cycles[c] = np.concatenate(
                            [fresh[~np.isin(fresh, taken)], fresh[np.isin(fresh, taken)]]
                        )
                        cursor[c] = 0
                    taken.append(int(cycles[c][cursor[c]]))
                    cursor[c] += 1
                batch.extend(taken)
            seeds = rng.integers(0, 2**31 - 1, size=len(batch))
            batches.append([(i, int(s)) for i, s in zip(batch, seeds, strict=True)])
        return batches


class ShuffleSampler(_EpochBatches):
    """Batches of ``batch_size`` items from a fresh random permutation of all items (more permutations are
    chained when an epoch asks for more items than there are), deterministic in ``(seed, epoch)``.

    Args:
        size: number of items.
        batch_size, seed, num_batches, num_replicas, rank, epoch: as for :class:`MPerClassSampler`.
    """

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        rounds = -(-count // self.size)
        return np.concatenate([rng.permutation(self.size) for _ in range(rounds)])[:count]


class ClassAwareSampler(_EpochBatches):
    """Class-aware sampling for long-tailed (multi-label) data (Shen et al., "Relay Backpropagation", ECCV 2016):
    each draw picks a class uniformly from a shuffled cycle of the classes, then the next image of that class from
    a shuffled cycle of its images. Every class is seen about equally often, so head classes stop dominating.

    Args:
        targets: ``(N, C)`` multi-label targets (1 present, 0 absent, -1 unknown) or ``(N,)`` class ids; an item
            belongs to the classes where it is present. Classes without items are never drawn.
        batch_size, seed, num_batches, num_replicas, rank, epoch: as for :class:`MPerClassSampler`.
    """

    def __init__(
        self,
        targets: np.ndarray | torch.Tensor,
        batch_size: int,
        seed: int = 0,
        **options: Unpack[EpochOptions],
    ) -> None:
        t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
        if t.ndim == 1:
            members = [np.flatnonzero(t == c) for c in np.unique(t[t >= 0])]
        elif t.ndim == 2:
            members = [np.flatnonzero(t[:, c] == 1) for c in range(t.shape[1])]
        else:
            raise ValueError(
                f"targets must be (N,) class ids or (N, C) multi-label targets, got shape {t.shape}"
            )
        self._members = [m for m in members if len(m)]
        if not self._members:
            raise ValueError("class-aware sampling needs at least one class with a positive item")
        super().__init__(len(t), batch_size, seed, **options)

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        n_classes = len(self._members)
        cycles = [rng.permutation(m) for m in self._members]
        cursor = [0] * n_classes
        out = np.empty(count, dtype=np.int64)
        queue: list[int] = []
        for k in range(count):
            if not queue:
                queue = rng.permutation(n_classes).tolist()
            c = queue.pop()
            if cursor[c] == len(cycles[c]):
                cycles[c], cursor[c] = rng.permutation(self._members[c]), 0
            out[k] = cycles[c][cursor[c]]
            cursor[c] += 1
        return out


class ShardSampler(Sampler[list[int]]):
    """Sequential evaluation batches of this rank's shard ``rank, rank + R, rank + 2R, ...`` (no padding, so
    every item is evaluated exactly once across ranks)."""

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        if size < 0 or batch_size < 1:
            raise ValueError(f"size must be >= 0 and batch_size >= 1, got {size}, {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.indices = list(range(rank, size, num_replicas))
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start : start + self.batch_size]


class SeededItems(Dataset):
    """Wrap a data set so that item ``(index, seed)`` is produced under ``seed``: Python's, NumPy's and torch's
    global generators are seeded before ``dataset[index]`` (timm's augmentations draw from them) and restored after.

    ``item = dataset[index]`` must be a dict; ``{"label": labels[index]}`` is added: an ``int`` class id for
    ``(N,)`` labels, a ``(C,)`` float32 tensor for ``(N, C)`` multi-label targets. ``seeded=False`` skips the
    seeding (for items without randomness, e.g. cached features or evaluation images).
    """

    def __init__(self, dataset: Any, labels: Sequence[int] | np.ndarray, seeded: bool = True) -> None:
        self.dataset = dataset
        self.seeded = bool(seeded)
        array = np.asarray(labels)
        self.labels = array.astype(np.float32) if array.ndim == 2 else array.astype(np.int64)
        if len(self.labels) != len(dataset):
            raise ValueError(f"{len(self.labels)} labels for a data set of {len(dataset)} items")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, None) if isinstance(key, (int, np.integer)) else key
        if seed is None or not self.seeded:
            item = dict(self.dataset[int(index)])
        else:
            py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            torch.manual_seed(seed)
            try:
                item = dict(self.dataset[int(index)])
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002
                torch.set_rng_state(torch_state)
        item["index"] = int(index)
        row = self.labels[int(index)]
        item["label"] = torch.from_numpy(row.copy()) if self.labels.ndim == 2 else int(row)
        return item
