"""Object-detection samples for training and evaluation: :class:`DetectionDataset`, :func:`collate_detection`,
the letterbox and its inverse.

A :class:`DetectionDataset` wraps an :class:`~frugalvision.data.ImageDataset` that carries boxes -- whatever reader
made it (``read_coco``, ``read_yolo``, ``discover.read_voc``): there is one reader per format, and this module reads
no annotation file itself. Item ``i`` is ``(image, target, meta)``:

* ``image``: ``(3, S, S)`` float32, ``(pixel / 255 - mean) / std`` (the backbone's normalisation);
* ``target``: ``{"boxes": (n, 4) float32 xyxy in input pixels, "labels": (n,) int64}`` -- torchvision's
  convention; ``n = 0`` for an image without objects (kept as a negative);
* ``meta``: ``{"index", "path", "orig_size": (h, w), "scale", "pad": (pad_x, pad_y), "mosaic"}``.

**Letterbox** (evaluation, and training without mosaic): the image is resized by ``scale = S / max(h, w)`` (aspect
ratio kept) and centred on an ``S x S`` canvas of grey 114 with ``pad = ((S - round(w scale)) // 2,
(S - round(h scale)) // 2)``. A box maps to input pixels as ``box * scale + [pad_x, pad_y, pad_x, pad_y]`` and back
as ``(box - [pad_x, pad_y, pad_x, pad_y]) / scale`` clipped to the image (:func:`boxes_to_original`). In training
``scale`` and ``pad`` describe only the letterbox, not the random geometry that follows it.

**Training augmentation** (``train=True``, settings in :class:`DetectionAugment`), in this order:

1. *mosaic* (YOLOv4, Bochkovskiy et al. 2020, https://arxiv.org/abs/2004.10934; the YOLOX variant, Ge et al. 2021,
   https://arxiv.org/abs/2107.08430): four images, each resized to longer side ``S``, meet at a random centre
   ``(x_c, y_c) ~ U[S/2, 3S/2]^2`` of a ``2S x 2S`` canvas; else the letterbox;
2. *random affine* to the ``S x S`` input: scale ``s ~ U[scale]``, translation ``U[-t, t]`` of ``S``, rotation
   ``U[-degrees, degrees]``, shear ``U[-shear, shear]``, about the canvas centre (for the mosaic this includes the
   crop of its centre); one matrix moves the pixels and the corners of the boxes;
3. *mixup* (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): with probability ``mixup`` the result is blended
   ``r x + (1 - r) x'`` with another augmented image, ``r ~ Beta(32, 32)``, and the two box sets are joined;
4. *HSV jitter*: hue shift ``h U[-1, 1]`` (of a turn), saturation and value factors ``1 + s U[-1, 1]``,
   ``1 + v U[-1, 1]``;
5. *horizontal flip* with probability ``flip`` (torchvision ``transforms.v2`` on the image and a
   ``tv_tensors.BoundingBoxes``).

Boxes are clipped to the image (``clamp_bounding_boxes``); a box is then dropped when less than ``min_area_ratio``
of its area survived (``area_out < ratio * area_in * scale_total^2``: an object cut off by the crop) or a side is
under ``min_box_size`` pixels (``SanitizeBoundingBoxes``). All randomness comes from ``numpy.random.default_rng((seed, epoch, index))``, so an item depends only on
the seed, the epoch and its index -- not on the worker that loads it.

**Mosaic off for the last epochs**: :meth:`DetectionDataset.set_epoch` switches mosaic (and mixup) off from
``DetectionAugment.close_mosaic_epoch`` on. A ``DataLoader`` with ``persistent_workers=True`` keeps its workers'
copies of the dataset, so call ``set_epoch`` before creating each epoch's iterator and leave persistent workers
off (the default).

Image size limits are those of :func:`~frugalvision.data.load_image`: an aspect ratio over 50:1 is refused before
decoding; the letterbox never produces more than ``S x S`` pixels per image (``2S x 2S`` for a mosaic).

Example:
    >>> ds = DetectionDataset(read_coco("train.json"), image_size=416, train=True)  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=collate_detection)  # doctest: +SKIP
    >>> for epoch in range(epochs):  # doctest: +SKIP
    ...     ds.set_epoch(epoch)
    ...     for images, targets, metas, skipped in loader: ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from frugalvision._pixels import ResizeRule
from frugalvision.data._common import short_list
from frugalvision.data._image import load_image
from frugalvision.data.dataset import ImageDataset
from frugalvision.errors import CorruptImageError, DataError, ImageFileMissingError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_VALUE",
    "DetectionAugment",
    "DetectionBatch",
    "DetectionDataset",
    "boxes_to_input",
    "boxes_to_original",
    "check_class_names",
    "collate_detection",
    "letterbox",
    "resize_batch",
]

#: Grey of the letterbox padding and of the parts of an augmented canvas no image covers (YOLO's convention).
PAD_VALUE = 114
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectionAugment:
    """Training augmentation settings of :class:`DetectionDataset` (YOLOX's defaults where it has one).

    Attributes:
        mosaic: probability of a 4-image mosaic (0 switches it off).
        close_mosaic_epoch: from this epoch on (0-based, see :meth:`DetectionDataset.set_epoch`) mosaic and mixup
            are off; ``None``: never. YOLOX trains its last 15 epochs without them.
        mixup: probability of blending with a second augmented image.
        degrees: rotation range ``U[-degrees, degrees]`` (degrees). Box corners are rotated and enclosed, so boxes
            grow: keep it 0 unless objects really appear rotated.
        translate: translation range as a fraction of the side, ``U[-t, t]``.
        scale: range of the random scale factor.
        shear: shear range ``U[-shear, shear]`` (degrees) on each axis.
        hsv: ``(hue, saturation, value)`` gains of the colour jitter; ``(0, 0, 0)`` switches it off.
        flip: probability of a horizontal flip.
        min_box_size: smallest width and height (input pixels, >= 1) a box keeps after augmentation.
        min_area_ratio: smallest fraction of its (scaled) area a box keeps after the crop.
    """

    mosaic: float = 1.0
    close_mosaic_epoch: int | None = None
    mixup: float = 0.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.5, 1.5)
    shear: float = 0.0
    hsv: tuple[float, float, float] = (0.015, 0.7, 0.4)
    flip: float = 0.5
    min_box_size: float = 2.0
    min_area_ratio: float = 0.1

    def __post_init__(self) -> None:
        for name in ("mosaic", "mixup", "flip", "min_area_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DetectionAugment.{name} must lie in [0, 1], got {value}")
        if self.min_box_size < 1:
            raise ValueError(f"DetectionAugment.min_box_size must be >= 1 pixel, got {self.min_box_size}")
        for name in ("degrees", "translate", "shear"):
            if getattr(self, name) < 0:
                raise ValueError(f"DetectionAugment.{name} must be >= 0, got {getattr(self, name)}")
        if self.translate > 0.5:
            raise ValueError(f"DetectionAugment.translate must be <= 0.5 of the side, got {self.translate}")
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(
                f"DetectionAugment.scale must be (low, high) with 0 < low <= high, got {self.scale}"
            )
        if len(self.hsv) != 3 or any(g < 0 for g in self.hsv) or self.hsv[0] > 0.5:
            raise ValueError(f"DetectionAugment.hsv must be 3 gains >= 0 (hue <= 0.5), got {self.hsv}")
        if self.close_mosaic_epoch is not None and self.close_mosaic_epoch < 0:
            raise ValueError(
                f"DetectionAugment.close_mosaic_epoch must be >= 0, got {self.close_mosaic_epoch}"
            )


def letterbox(image: torch.Tensor, size: int) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize a ``(3, h, w)`` uint8 image by ``scale = size / max(h, w)`` and centre it on a ``size x size`` canvas
    of grey :data:`PAD_VALUE`.

    Returns:
        ``(canvas (3, size, size) uint8, scale, (pad_x, pad_y))``; see the module docstring for the box mapping.
    """
    _, h, w = image.shape
    scale, (new_h, new_w), (pad_x, pad_y) = _letterbox_geometry(int(h), int(w), size)
    resized = F.resize(image, [new_h, new_w], antialias=True) if (new_h, new_w) != (h, w) else image
    canvas = F.pad(resized, [pad_x, pad_y, size - new_w - pad_x, size - new_h - pad_y], fill=PAD_VALUE)
    return canvas, scale, (pad_x, pad_y)


def _letterbox_geometry(h: int, w: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """``(scale, (new_h, new_w), (pad_x, pad_y))`` of the letterbox of an ``h x w`` image to ``size``."""
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    return scale, (new_h, new_w), ((size - new_w) // 2, (size - new_h) // 2)


def boxes_to_input(boxes: np.ndarray | torch.Tensor, scale: float, pad: Sequence[float]) -> Any:
    """``boxes * scale + [pad_x, pad_y, pad_x, pad_y]``: ``(n, 4)`` xyxy from original to letterboxed pixels."""
    offset = np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)
    if isinstance(boxes, torch.Tensor):
        return boxes * scale + torch.as_tensor(offset, dtype=boxes.dtype, device=boxes.device)
    return (np.asarray(boxes, dtype=np.float64) * scale + offset).astype(np.float32)


def boxes_to_original(
    boxes: np.ndarray | torch.Tensor, scale: float, pad: Sequence[float], orig_size: Sequence[int]
) -> Any:
    """``(boxes - [pad_x, pad_y, pad_x, pad_y]) / scale`` clipped to the ``orig_size = (h, w)`` image: ``(n, 4)``
    xyxy from letterboxed back to original pixels (the inverse of :func:`boxes_to_input` inside the image)."""
    h, w = float(orig_size[0]), float(orig_size[1])
    offset = np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)
    if isinstance(boxes, torch.Tensor):
        moved = (boxes - torch.as_tensor(offset, dtype=boxes.dtype, device=boxes.device)) / scale
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        return torch.minimum(moved.clamp(min=0), limit)
    out = (np.asarray(boxes, dtype=np.float64) - offset) / scale
    return np.minimum(np.maximum(out, 0.0), np.array([w, h, w, h])).astype(np.float32)


def resize_batch(
    images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], side: int
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``images (B, 3, S, S)`` resized to ``(B, 3, side, side)`` (``torch.nn.functional.interpolate``, bilinear,
    ``align_corners=False``: pixel ``i`` of the output samples input position ``(i + 0.5) S / side - 0.5``, so the
    whole canvas maps onto the whole canvas) and every target's ``boxes`` (xyxy, input pixels) multiplied by
    ``side / S``; the other keys of a target are kept. ``side == S`` returns the inputs unchanged."""
    size = int(images.shape[-1])
    if side == size:
        return images, list(targets)
    factor = side / size
    resized = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    return resized, [{**t, "boxes": t["boxes"] * factor} for t in targets]


def check_class_names(found: Sequence[str], expected: Sequence[str], source: str) -> None:
    """Refuse a data set whose class names differ from the model's (evaluating a bundle on another label set
    would score class ``k`` of one against class ``k`` of the other).

    Raises:
        DataError: naming ``source``, the classes missing from it, those it adds, or the first position where the
            order differs.
    """
    found, expected = list(found), list(expected)
    if found == expected:
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if missing or extra:
        parts = ([f"lacks {short_list(missing)}"] if missing else []) + (
            [f"adds {short_list(extra)}"] if extra else []
        )
        raise DataError(f"{source}: its classes differ from the model's ({'; '.join(parts)})")
    k = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
    raise DataError(
        f"{source}: its classes are the model's in another order (class {k} is {found[k]!r}, the model's "
        f"class {k} is {expected[k]!r}); reorder the data set's class list to {short_list(expected)}"
    )


class _Item(NamedTuple):
    """An image and its boxes while it is being augmented: ``image (3, H, W)`` uint8, ``boxes (n, 4)`` xyxy,
    ``labels (n,)``, ``full_area (n,)`` = each box's area scaled by every resize so far (before any crop)."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    full_area: torch.Tensor


class DetectionBatch(NamedTuple):
    """What :func:`collate_detection` returns.

    Attributes:
        images: ``(B, 3, S, S)`` float32, or ``None`` when every item was skipped.
        targets: ``B`` dicts ``{"boxes": (n, 4) float32, "labels": (n,) int64}``.
        metas: ``B`` meta dicts (see :class:`DetectionDataset`).
        skipped: ``[(index, message), ...]`` for corrupt images left out (``on_corrupt="skip"``); the consumer
            warns once with the count, as for :func:`~frugalvision.data.collate_images`.
    """

    images: torch.Tensor | None
    targets: list[dict[str, torch.Tensor]]
    metas: list[dict[str, Any]]
    skipped: list[tuple[int, str]]


def collate_detection(batch: Sequence[tuple[Any, Any, dict[str, Any]]]) -> DetectionBatch:
    """``collate_fn`` for a ``DataLoader`` over a :class:`DetectionDataset`: stacks the images, keeps the targets
    and metas as lists (their box counts differ), and lists skipped items. Module-level so workers can pickle it."""
    images: list[torch.Tensor] = []
    targets: list[dict[str, torch.Tensor]] = []
    metas: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for image, target, meta in batch:
        if image is None:
            skipped.append((int(meta["index"]), str(meta.get("error", "unknown error"))))
            continue
        images.append(image)
        targets.append(target)
        metas.append(meta)
    return DetectionBatch(torch.stack(images) if images else None, targets, metas, skipped)


_Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (image (3, h, w) uint8, boxes (n, 4), labels (n,))


def _empty_boxes() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros((0, 4), dtype=torch.float32), torch.zeros((0,), dtype=torch.int64)


@dataclass(eq=False)
class DetectionDataset(Dataset):
    """Letterboxed (and, with ``train=True``, augmented) detection samples of an :class:`ImageDataset` with boxes.

    Args:
        dataset: the images and their boxes (``Sample.boxes`` in pixels of the upright image); a sample whose
            ``boxes`` is ``None`` counts as an image without objects. Its ``on_corrupt`` policy applies: with
            ``"skip"`` a corrupt image gives ``(None, None, meta)`` with ``meta["error"]``, which
            :func:`collate_detection` lists in ``skipped`` (a corrupt *partner* of a mosaic or mixup is replaced by
            an empty grey tile, and listed in ``meta["skipped_partners"]``).
        image_size: side ``S`` of the square network input, a multiple of 32.
        train: augment (see :class:`DetectionAugment`); ``False``: letterbox only.
        augment: augmentation settings (``DetectionAugment()`` when ``None`` and ``train``).
        mean, std: per-channel normalisation of ``pixel / 255`` (the backbone's; timm's ``resolve_data_config``).
        class_agnostic: every label becomes 0 (one class, ``"object"``).
        seed: base seed of the augmentation.

    Raises:
        DataError: the data set carries no boxes, or ``image_size`` is not a positive multiple of 32.
    """

    dataset: ImageDataset
    image_size: int = 416
    train: bool = False
    augment: DetectionAugment | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_agnostic: bool = False
    seed: int = 0
    epoch: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, ImageDataset):
            raise TypeError(f"dataset must be an ImageDataset, got {type(self.dataset).__name__}")
        if not self.dataset.has_boxes:
            raise DataError(
                f"{self.dataset.source}: no sample carries boxes; detection needs a COCO, YOLO or VOC data set"
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            raise DataError(f"image_size must be a positive multiple of 32, got {self.image_size!r}")
        if self.image_size % 32:
            raise DataError(
                f"image_size must be a multiple of 32 (the largest stride), got {self.image_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std must hold 3 values, std > 0; got {self.mean}, {self.std}")
        if self.train and self.augment is None:
            self.augment = DetectionAugment()
        self._rule = ResizeRule("longer", (self.image_size, self.image_size))
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1) * 255.0

    @property
    def classes(self) -> list[str]:
        """Class names; ``["object"]`` when class-agnostic."""
        return ["object"] if self.class_agnostic else self.dataset.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: it seeds the augmentation and, from ``augment.close_mosaic_epoch`` on, turns mosaic and
        mixup off."""
        self.epoch = int(epoch)

    @property
    def mosaic_enabled(self) -> bool:
        """Whether mosaic (and mixup) are on at the current epoch."""
        aug = self.augment
        if not self.train or aug is None:
            return False
        return aug.close_mosaic_epoch is None or self.epoch < aug.close_mosaic_epoch

    def __len__(self) -> int:
        return len(self.dataset)

    # --- loading ---------------------------------------------------------------------------------
    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image ``index`` as ``(3, h, w)`` uint8 plus its boxes and labels (original pixels), degenerate boxes
        dropped. Raises the loader's ``CorruptImageError`` / ``ImageFileMissingError``."""
        sample = self.dataset.samples[index]
        image = F.pil_to_tensor(load_image(sample.path, resize=self._rule))
        if sample.boxes is None or sample.box_labels is None or len(sample.boxes) == 0:
            boxes, labels = _empty_boxes()
        else:
            _, h, w = image.shape
            boxes = torch.from_numpy(np.array(sample.boxes, dtype=np.float32))
            boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
            labels = torch.from_numpy(np.array(sample.box_labels, dtype=np.int64))
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        return image, boxes, labels

    def _load_or_blank(
        self, index: int, skipped: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return self._load(index)
        except (CorruptImageError, ImageFileMissingError) as exc:
            if self.dataset.on_corrupt == "fail":
                raise
            skipped.append(str(exc))
            blank = torch.full((3, self.image_size, self.image_size), PAD_VALUE, dtype=torch.uint8)
            return (blank, *_empty_boxes())

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() - self._mean) / self._std

    def __getitem__(
        self, index: int
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None, dict[str, Any]]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        index %= len(self)
        meta: dict[str, Any] = {"index": index, "path": str(self.dataset.samples[index].path)}
        try:
            raw = self._load(index)
        except (CorruptImageError, ImageFileMissingError) as exc:
            if self.dataset.on_corrupt == "fail":
                raise
            meta["error"] = str(exc)
            return None, None, meta
        image, boxes, labels = raw
        _, h, w = image.shape
        scale, _, pad = _letterbox_geometry(int(h), int(w), self.image_size)
        meta.update(orig_size=(int(h), int(w)), scale=float(scale), pad=pad, mosaic=False)
        if not self.train:
            canvas, scale, pad = letterbox(image, self.image_size)
            boxes = boxes_to_input(boxes, scale, pad)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target = {"boxes": boxes[keep].float(), "labels": labels[keep]}
            return self._normalise(canvas), target, meta
        item, used_mosaic, partners_skipped = self._augment(index, raw)
        meta["mosaic"] = used_mosaic
        if partners_skipped:
            meta["skipped_partners"] = partners_skipped
        return self._normalise(item.image), {"boxes": item.boxes.float(), "labels": item.labels}, meta

    # --- augmentation ----------------------------------------------------------------------------
    def _augment(self, index: int, raw: _Raw) -> tuple[_Item, bool, list[str]]:
        aug = self.augment
        assert aug is not None  # set in __post_init__ when train
        rng = np.random.default_rng((self.seed, self.epoch, index))
        skipped: list[str] = []
        use_mosaic = self.mosaic_enabled and rng.random() < aug.mosaic
        item = self._geometric(index, raw, rng, use_mosaic, skipped)
        if self.mosaic_enabled and aug.mixup > 0 and rng.random() < aug.mixup:
            other = int(rng.integers(len(self)))
            partner = self._geometric(other, None, rng, use_mosaic, skipped)
            r = float(rng.beta(32.0, 32.0))
            blended = (item.image.float() * r + partner.image.float() * (1.0 - r)).round().clamp(0, 255)
            item = _Item(
                blended.to(torch.uint8),
                torch.cat([item.boxes, partner.boxes]),
                torch.cat([item.labels, partner.labels]),
                torch.cat([item.full_area, partner.full_area]),
            )
        image = self._hsv(item.image, rng, aug.hsv)
        boxes = item.boxes
        if rng.random() < aug.flip:
            image = F.horizontal_flip(image)
            boxes = _plain(F.horizontal_flip(_bb(boxes, image)))
        return _Item(image, boxes, item.labels, item.full_area), use_mosaic, skipped

    def _geometric(
        self, index: int, raw: _Raw | None, rng: np.random.Generator, mosaic: bool, skipped: list[str]
    ) -> _Item:
        """Mosaic or letterbox, then the random affine to ``S x S``, then the box filter.
        ``raw``: image ``index`` already loaded, or ``None`` to load it (a corrupt one becomes a grey tile)."""
        size = self.image_size
        if raw is None:
            raw = self._load_or_blank(index, skipped)
        if mosaic:
            others = [self._load_or_blank(int(i), skipped) for i in rng.integers(len(self), size=3)]
            item = self._mosaic([raw, *others], rng)
        else:
            image, boxes, labels = raw
            canvas, scale, pad = letterbox(image, size)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * scale**2
            item = _Item(canvas, boxes_to_input(boxes, scale, pad).float(), labels, area.float())
        return self._filter(self._affine(item, rng))

    def _mosaic(self, parts: list[_Raw], rng: np.random.Generator) -> _Item:
        """Four images, each resized to longer side ``S``, around a random centre of a ``2S x 2S`` grey canvas:
        image ``k`` has its inner corner at the centre (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right);
        what falls beyond the canvas is cut off."""
        size = self.image_size
        side = 2 * size
        canvas = torch.full((3, side, side), PAD_VALUE, dtype=torch.uint8)
        xc, yc = (int(v) for v in rng.uniform(0.5 * size, 1.5 * size, size=2))
        all_boxes, all_labels, all_area = [], [], []
        for k, (image, boxes, labels) in enumerate(parts):
            _, h, w = image.shape
            r = size / max(h, w)
            nh, nw = max(1, min(size, round(h * r))), max(1, min(size, round(w * r)))
            image = F.resize(image, [nh, nw], antialias=True) if (nh, nw) != (h, w) else image
            # (x1a, y1a, x2a, y2a): where the tile lands on the canvas; (x1b, y1b): its top-left in the image.
            x1a = max(xc - nw, 0) if k in (0, 2) else xc
            x2a = xc if k in (0, 2) else min(xc + nw, side)
            y1a = max(yc - nh, 0) if k in (0, 1) else yc
            y2a = yc if k in (0, 1) else min(yc + nh, side)
            x1b = nw - (x2a - x1a) if k in (0, 2) else 0
            y1b = nh - (y2a - y1a) if k in (0, 1) else 0
            canvas[:, y1a:y2a, x1a:x2a] = image[:, y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
            sx, sy = nw / w, nh / h
            dx, dy = x1a - x1b, y1a - y1b
            placed = boxes * torch.tensor([sx, sy, sx, sy]) + torch.tensor(
                [dx, dy, dx, dy], dtype=torch.float32
            )
            all_area.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * (sx * sy))
            all_boxes.append(placed.clamp(0, side))
            all_labels.append(labels)
        return _Item(canvas, torch.cat(all_boxes), torch.cat(all_labels), torch.cat(all_area))

    def _affine(self, item: _Item, rng: np.random.Generator) -> _Item:
        """The random affine of an ``H x W`` canvas to the ``S x S`` input: ``q = A (p - c_in) + c_out + t`` with
        ``A = s R(angle) Sh(shear_x, shear_y)``, ``c_in`` the canvas centre, ``c_out = (S/2, S/2)`` and ``t`` the
        translation in pixels (for a ``2S`` mosaic canvas this is the affine about its centre followed by the
        centre crop). One matrix moves the pixels (Pillow's C ``Image.transform``, bilinear: 5x faster than
        ``transforms.v2.functional.affine`` on a ``2S`` canvas, measured) and the four corners of every box (the
        enclosing box of the moved corners), so they cannot disagree."""
        aug = self.augment
        assert aug is not None
        size = self.image_size
        angle = math.radians(float(rng.uniform(-aug.degrees, aug.degrees)))
        scale = float(rng.uniform(*aug.scale))
        tx, ty = (float(v) * size for v in rng.uniform(-aug.translate, aug.translate, size=2))
        shx, shy = (math.radians(float(v)) for v in rng.uniform(-aug.shear, aug.shear, size=2))
        _, h, w = item.image.shape
        if (h, w) == (size, size) and angle == shx == shy == tx == ty == 0 and scale == 1:
            return item
        rotation = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        shear = np.array([[1.0, math.tan(shx)], [math.tan(shy), 1.0]])
        a = scale * rotation @ shear
        c_in, c_out = np.array([w / 2, h / 2]), np.array([size / 2 + tx, size / 2 + ty])
        inverse = np.linalg.inv(a)
        offset = c_in - inverse @ c_out
        pil = _to_pil(item.image)
        moved = pil.transform(
            (size, size),
            Image.Transform.AFFINE,
            (*inverse[0], offset[0], *inverse[1], offset[1]),
            resample=Image.Resampling.BILINEAR,
            fillcolor=(PAD_VALUE,) * 3,
        )
        image = torch.from_numpy(np.array(moved)).permute(2, 0, 1).contiguous()
        boxes = item.boxes.double().numpy()
        corners = boxes[:, [[0, 1], [2, 1], [0, 3], [2, 3]]]  # (n, 4 corners, xy)
        corners = (corners - c_in) @ a.T + c_out
        moved_boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).reshape(-1, 4)
        return _Item(image, torch.from_numpy(moved_boxes).float(), item.labels, item.full_area * scale**2)

    def _filter(self, item: _Item) -> _Item:
        """Clip boxes to the image, then drop those with less than ``min_area_ratio`` of their scaled area left
        and those with a side under ``min_box_size`` (torchvision's ``SanitizeBoundingBoxes``)."""
        aug = self.augment
        assert aug is not None
        boxes = F.clamp_bounding_boxes(_bb(item.boxes, item.image))
        plain = _plain(boxes)
        enough = (plain[:, 2] - plain[:, 0]) * (
            plain[:, 3] - plain[:, 1]
        ) >= aug.min_area_ratio * item.full_area
        out = v2.SanitizeBoundingBoxes(
            min_size=aug.min_box_size, labels_getter=lambda d: (d["labels"], d["full_area"])
        )(
            {
                "boxes": _bb(plain[enough], item.image),
                "labels": item.labels[enough],
                "full_area": item.full_area[enough],
            }
        )
        return _Item(item.image, _plain(out["boxes"]), out["labels"], out["full_area"])

    @staticmethod
    def _hsv(
        image: torch.Tensor, rng: np.random.Generator, gains: tuple[float, float, float]
    ) -> torch.Tensor:
        """In HSV (Pillow's 8-bit conversion): hue shifted by ``h U[-1, 1]`` of a turn, saturation and value
        multiplied by ``1 + s U[-1, 1]`` and ``1 + v U[-1, 1]`` (clipped to 255), through lookup tables."""
        hue, sat, val = (float(g * u) for g, u in zip(gains, rng.uniform(-1, 1, size=3), strict=True))
        if not (hue or sat or val):
            return image
        levels = np.arange(256, dtype=np.float64)
        tables = [
            (levels + round(hue * 256)) % 256,
            np.clip(levels * (1.0 + sat), 0, 255),
            np.clip(levels * (1.0 + val), 0, 255),
        ]
        channels = _to_pil(image).convert("HSV").split()
        shifted = [
            c.point(np.rint(t).astype(np.uint8).tolist()) for c, t in zip(channels, tables, strict=True)
        ]
        rgb = Image.merge("HSV", shifted).convert("RGB")
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def _bb(boxes: torch.Tensor, image: torch.Tensor) -> tv_tensors.BoundingBoxes:
    """``boxes (n, 4)`` xyxy as torchvision's ``BoundingBoxes`` on the canvas of ``image (3, H, W)``."""
    return tv_tensors.BoundingBoxes(
        boxes, format="XYXY", canvas_size=(int(image.shape[-2]), int(image.shape[-1]))
    )


def _to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` uint8 to an RGB ``PIL.Image`` (made contiguous first: Pillow copies a strided array slowly)."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def _plain(boxes: torch.Tensor) -> torch.Tensor:
    return boxes.as_subclass(torch.Tensor)
