"""The in-memory description of an image data set: :class:`Sample`, :class:`ImageDataset`, :func:`collate_images`.

Readers (``read_folder``, ``read_manifest``, ``read_coco``, ``read_yolo``) only parse annotations and check
that files exist; pixels are decoded lazily in ``ImageDataset.__getitem__``.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from frugalvision._checks import check_choice
from frugalvision._pixels import ResizeRule
from frugalvision.data._image import load_image
from frugalvision.errors import CorruptImageError, ImageFileMissingError

__all__ = ["ImageDataset", "OnCorrupt", "Sample", "collate_images"]

OnCorrupt = Literal["skip", "fail"]
_ON_CORRUPT: tuple[str, ...] = ("skip", "fail")


@dataclass(frozen=True, eq=False)
class Sample:
    """One image of a data set and its annotations.

    Attributes:
        path: image file.
        labels: class indices into ``ImageDataset.classes``, first = primary label. Empty means unlabeled
            or, for detection data, an image with no objects.
        boxes: ``(N, 4)`` float32 boxes ``(x0, y0, x1, y1)`` in pixels of the upright image, or ``None``
            when the data set has no boxes. Read-only.
        box_labels: ``(N,)`` int64 class index of each box, or ``None`` exactly when ``boxes`` is ``None``.
        unknown: classes whose presence was not annotated for this image (partial annotation, multi-label
            data): neither positive nor negative. Every class in neither ``labels`` nor ``unknown`` is absent.
    """

    path: Path
    labels: tuple[int, ...] = ()
    boxes: np.ndarray | None = field(default=None, repr=False)
    box_labels: np.ndarray | None = field(default=None, repr=False)
    unknown: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        labels = tuple(self.labels)
        for label in labels:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise TypeError(f"Sample labels must be integer class indices, got {self.labels!r}")
        object.__setattr__(self, "labels", tuple(int(label) for label in labels))
        unknown = tuple(self.unknown)
        for label in unknown:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise TypeError(f"Sample unknown must hold integer class indices, got {self.unknown!r}")
        overlap = sorted(set(unknown) & set(self.labels))
        if overlap:
            raise ValueError(f"Sample {self.path}: class {overlap[0]} is both a label and unknown")
        object.__setattr__(self, "unknown", tuple(int(label) for label in unknown))
        if (self.boxes is None) != (self.box_labels is None):
            raise ValueError("Sample boxes and box_labels must both be given or both be None")
        if self.boxes is not None and self.box_labels is not None:
            boxes = np.array(self.boxes, dtype=np.float32)
            if boxes.size == 0:
                boxes = boxes.reshape(0, 4)
            box_labels = np.array(self.box_labels, dtype=np.int64).reshape(-1)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"Sample boxes must have shape (N, 4), got {boxes.shape} for {self.path}")
            if box_labels.shape[0] != boxes.shape[0]:
                raise ValueError(
                    f"Sample box_labels must have shape (N,) = ({boxes.shape[0]},), got {box_labels.shape} "
                    f"for {self.path}"
                )
            boxes.setflags(write=False)
            box_labels.setflags(write=False)
            object.__setattr__(self, "boxes", boxes)
            object.__setattr__(self, "box_labels", box_labels)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        if self.path != other.path or self.labels != other.labels or self.unknown != other.unknown:
            return False
        if self.boxes is None or other.boxes is None:
            return self.boxes is None and other.boxes is None
        return np.array_equal(self.boxes, other.boxes) and np.array_equal(
            np.asarray(self.box_labels), np.asarray(other.box_labels)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays: not hashable


def _classes(module: str, *names: str) -> tuple[type, ...]:
    """Classes ``names`` of ``module`` if it is already imported (a transform made from them implies it is)."""
    found = sys.modules.get(module)
    return tuple(c for c in (getattr(found, n, None) for n in names) if isinstance(c, type))


def _is(obj: Any, classes: tuple[type, ...]) -> bool:
    return isinstance(obj, classes)  # a bool: mypy keeps ``obj`` as Any (the classes come from sys.modules)


def _resize_rule(transform: Any) -> ResizeRule | None:
    """The resize step that opens ``transform`` (a torchvision ``Compose`` as timm's ``create_transform`` builds),
    as a :class:`~frugalvision._pixels.ResizeRule` -- so an image it would blow up is refused before decoding.

    Recognised: torchvision's ``Resize`` (v1 and v2) and timm's ``ResizeKeepRatio``, after any ``TrimBorder``.
    ``None`` when the first geometric step is another one: timm's training transform starts with a random
    resized crop, whose output has a fixed size and whose crop is no larger than the input.
    """
    composes = _classes("torchvision.transforms", "Compose") + _classes(
        "torchvision.transforms.v2", "Compose"
    )
    resizes = _classes("torchvision.transforms", "Resize") + _classes("torchvision.transforms.v2", "Resize")
    keep_ratio = _classes("timm.data.transforms", "ResizeKeepRatio")
    trims = _classes("timm.data.transforms", "TrimBorder")
    steps: list[Any] = [transform]
    border = 0
    while steps:
        step = steps.pop(0)
        if _is(step, composes):
            steps = list(step.transforms) + steps
        elif _is(step, trims):
            border += int(step.border_size)
        elif _is(step, resizes):
            size, max_size = step.size, step.max_size
            if isinstance(size, int) or (size is not None and len(size) == 1):
                side = int(size if isinstance(size, int) else size[0])
                return ResizeRule("shorter", (side, side), max_size=max_size, border=border)
            if size is None:  # v2: the longer side to max_size
                return ResizeRule("longer", (int(max_size), int(max_size)), border=border)
            return ResizeRule("squash", (int(size[0]), int(size[1])), border=border)
        elif _is(step, keep_ratio):
            h, w = step.size
            return ResizeRule("ratio", (int(h), int(w)), longest=float(step.longest), border=border)
        else:
            return None
    return None


def load_for_transform(path: str | os.PathLike[str], transform: Callable[[Any], Any] | None) -> Any:
    """``transform(load_image(path))``, with the image's size checked against the resize step that opens
    ``transform`` before any pixel is decoded (a 1 x 30000 PNG is refused instead of being resized to gigabytes).

    For single images outside an :class:`ImageDataset` (search queries, a tagger's inputs). Raises
    :class:`~frugalvision.errors.CorruptImageError` (``ImageTooLargeError`` for the size) naming the file.
    """
    image: Any = load_image(path, resize=_resize_rule(transform))
    return transform(image) if transform is not None else image


def collate_images(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` for a ``DataLoader`` over an :class:`ImageDataset` that may skip images.

    Args:
        batch: items returned by ``ImageDataset.__getitem__``; valid items hold a ``(3, H, W)`` tensor
            (the dataset needs a transform that returns tensors of one size).

    Returns:
        ``{"image": (B', 3, H, W) tensor, or None if every item was skipped, "index": (B',) int64 tensor
        of the valid items' data-set indices, "skipped": [(index, message), ...]}``.

    The function lives at module level so worker processes can pickle it.
    """
    images: list[torch.Tensor] = []
    indices: list[int] = []
    skipped: list[tuple[int, str]] = []
    for item in batch:
        if item["image"] is None:
            skipped.append((int(item["index"]), str(item.get("error", "unknown error"))))
            continue
        if not isinstance(item["image"], torch.Tensor):
            raise TypeError(
                "collate_images needs tensor images, got "
                f"{type(item['image']).__name__}; give the ImageDataset a transform that returns a tensor"
            )
        images.append(item["image"])
        indices.append(int(item["index"]))
    return {
        "image": torch.stack(images) if images else None,
        "index": torch.tensor(indices, dtype=torch.long),
        "skipped": skipped,
    }


class ImageDataset(Dataset):
    """A list of :class:`Sample` plus class names, readable by a ``torch.utils.data.DataLoader``.

    ``dataset[i]`` decodes image ``i`` with :func:`~frugalvision.data.load_image` and returns
    ``{"image": transform(image) (the PIL image if transform is None), "index": i}``.

    Corrupt or missing images: with ``on_corrupt="fail"`` the :class:`~frugalvision.errors.CorruptImageError`
    or :class:`~frugalvision.errors.ImageFileMissingError` is raised. With ``on_corrupt="skip"`` the item is
    ``{"image": None, "index": i, "error": "<message naming the file>"}``; :func:`collate_images` drops it
    from the batch and lists it in ``batch["skipped"]``. The dataset cannot warn by itself (each
    ``DataLoader`` worker holds its own copy), so **the consumer must aggregate ``batch["skipped"]`` and
    warn once with the count and the files** -- ``frugalvision.embeddings`` does. Call
    :meth:`find_corrupt` to list bad files up front.

    Images whose shape would make preprocessing allocate without bound count as corrupt too
    (:class:`~frugalvision.errors.ImageTooLargeError`, raised from the header before decoding): an aspect ratio
    over 50:1, or -- when the transform opens with a resize (timm's evaluation transform) -- a resized size over
    40 million pixels. A 1 x 30000 PNG would otherwise become 256 x 7,680,000 pixels.

    Args:
        samples: the images and their annotations.
        classes: class names; ``Sample.labels`` and ``Sample.box_labels`` index into it.
        transform: callable applied to the RGB ``PIL.Image`` (e.g. a timm/torchvision transform).
        on_corrupt: ``"skip"`` or ``"fail"``, see above.
        multilabel: whether a sample may carry several labels.
        source: where the data came from, shown by ``repr``.

    Raises:
        ValueError: a label is out of range, class names repeat, or a single-label data set has a
            sample with several labels.
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        classes: Sequence[str],
        *,
        transform: Callable[[Any], Any] | None = None,
        on_corrupt: OnCorrupt = "skip",
        multilabel: bool = False,
        source: str = "in-memory",
    ) -> None:
        check_choice(on_corrupt, _ON_CORRUPT, "on_corrupt")
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a sequence of strings, got {classes!r:.200}")
        self._classes = list(classes)
        if len(set(self._classes)) != len(self._classes):
            dupes = sorted({c for c in self._classes if self._classes.count(c) > 1})
            raise ValueError(f"class names must be unique, repeated: {dupes}")
        self._samples = tuple(samples)
        n_classes = len(self._classes)
        for i, s in enumerate(self._samples):
            if not isinstance(s, Sample):
                raise TypeError(f"samples[{i}] must be a Sample, got {type(s).__name__}")
            bad = [c for c in (*s.labels, *s.unknown) if not 0 <= c < n_classes]
            if s.box_labels is not None:
                bad += [int(c) for c in s.box_labels if not 0 <= c < n_classes]
            if bad:
                raise ValueError(
                    f"samples[{i}] ({s.path}) has class index {bad[0]} outside [0, {n_classes}) "
                    f"for {n_classes} classes"
                )
            if not multilabel and len(s.labels) > 1:
                raise ValueError(
                    f"samples[{i}] ({s.path}) has {len(s.labels)} labels but multilabel=False; "
                    "pass multilabel=True"
                )
        self.transform = transform
        self.on_corrupt: OnCorrupt = on_corrupt
        self.multilabel = bool(multilabel)
        self.source = source

    # --- torch Dataset protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        index %= len(self)
        path = self._samples[index].path
        try:
            image: Any = load_image(path, resize=_resize_rule(self.transform))
        except (CorruptImageError, ImageFileMissingError) as exc:
            if self.on_corrupt == "fail":
                raise
            return {"image": None, "index": index, "error": str(exc)}
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "index": index}

    # --- description ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class names; label ``k`` means ``classes[k]``."""
        return list(self._classes)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """All samples, in data-set order."""
        return self._samples

    @property
    def paths(self) -> list[Path]:
        """Image file of each sample."""
        return [s.path for s in self._samples]

    @property
    def has_boxes(self) -> bool:
        """True if the samples carry boxes (detection data)."""
        return any(s.boxes is not None for s in self._samples)

    def label_names(self, index: int) -> tuple[str, ...]:
        """Class names of sample ``index``, primary first."""
        return tuple(self._classes[c] for c in self._samples[index].labels)

    def primary_labels(self) -> np.ndarray:
        """``(N,)`` int64: the first label of each sample, ``-1`` where it has none."""
        return np.array([s.labels[0] if s.labels else -1 for s in self._samples], dtype=np.int64)

    def label_matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """``(N, C)`` multi-hot matrix: ``[i, c] = 1`` if sample ``i`` has label ``c``."""
        out = np.zeros((len(self._samples), len(self._classes)), dtype=dtype)
        for i, s in enumerate(self._samples):
            out[i, list(s.labels)] = 1
        return out

    def target_matrix(self) -> np.ndarray:
        """``(N, C)`` float32 multi-label targets: 1 = present (``labels``), -1 = unknown (``unknown``), 0 = absent.

        The target format of the multi-label losses (``task="multilabel"`` in :mod:`frugalvision.losses`) and metrics.
        """
        out = self.label_matrix(np.float32)
        for i, s in enumerate(self._samples):
            if s.unknown:
                out[i, list(s.unknown)] = -1
        return out

    @property
    def has_unknown(self) -> bool:
        """True if some sample marks classes as unknown (partially annotated multi-label data)."""
        return any(s.unknown for s in self._samples)

    def class_counts(self) -> dict[str, int]:
        """Number of images carrying each class, in class order (zero counts included)."""
        counts = self.label_matrix(np.int64).sum(axis=0)
        return {name: int(n) for name, n in zip(self._classes, counts, strict=True)}

    def __repr__(self) -> str:
        kind = "multi-label" if self.multilabel else "single-label"
        unlabeled = sum(1 for s in self._samples if not s.labels)
        extra = f", {unlabeled} without labels" if unlabeled else ""
        boxes = ", with boxes" if self.has_boxes else ""
        return (
            f"ImageDataset({len(self)} images, {len(self._classes)} classes, {kind}{boxes}{extra}, "
            f"source={self.source!r}, on_corrupt={self.on_corrupt!r})"
        )

    # --- derived data sets -----------------------------------------------------------------------
    def with_transform(self, transform: Callable[[Any], Any] | None) -> ImageDataset:
        """Shallow copy sharing the samples, with another transform."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Data set of the samples at ``indices`` (same classes, transform and policy)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers or a boolean mask, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices must lie in [-{len(self)}, {len(self)}), got {idx.min()}..{idx.max()}")
        out = copy.copy(self)
        out._samples = tuple(self._samples[int(i)] for i in idx)
        out.source = f"{self.source} [subset of {idx.size}]"
        return out

    def find_corrupt(self, progress: bool = True) -> list[tuple[Path, str]]:
        """Decode every image and return ``[(path, reason), ...]`` for those that cannot be loaded."""
        bad: list[tuple[Path, str]] = []
        rule = _resize_rule(self.transform)
        for s in tqdm(self._samples, desc="checking images", unit="img", disable=not progress):
            try:
                load_image(s.path, resize=rule)
            except (CorruptImageError, ImageFileMissingError) as exc:
                bad.append((s.path, str(exc)))
        return bad
