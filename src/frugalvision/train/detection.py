"""The detection task: ``frugalvision train --task detection --data DATA`` (COCO JSON, YOLO or PASCAL-VOC folder).

A :class:`~frugalvision.train.run.TaskRun` on the shared run scaffold (checkpoints, exact resume, DDP, logs):

* data -- the data set's boxes (``open_dataset``: COCO / YOLO; a VOC folder through ``discover.read_voc``), split
  into training and validation images (``data.val_split=images`` with ``data.val_fraction``, or ``data.val_data``;
  a VOC folder with ``ImageSets/Main/train.txt`` and ``val.txt`` uses its own split); images without boxes stay in as
  negatives. :class:`~frugalvision.data.detection.DetectionDataset` letterboxes them to ``detection.image_size``
  and, for training, applies mosaic (``detection.mosaic``), random affine, mixup (``detection.mixup``), HSV and
  flips (``augment.hflip``), seeded by ``(seed, epoch, index)``; mosaic and mixup are off for the last
  ``detection.close_mosaic`` epochs; with ``detection.multi_scale = r > 0`` each training batch is then resized
  to a side drawn from the multiples of 32 in ``[S (1 - r), S (1 + r)]`` (:func:`multi_scale_side`,
  :func:`~frugalvision.data.detection.resize_batch`), validation staying at ``S``;
* model -- :class:`~frugalvision.models.detection.Detector` (``model.name`` backbone, ``detection.size`` / ``head``
  / ``repconv`` / ``aux_head`` / ``dfl_bins``); with ``head=anchor`` the anchors are chosen on the training boxes
  (:func:`~frugalvision.models.detection.choose_anchors`: YOLOv3's when their best possible recall is >= 0.98,
  else k-means);
* loss -- ``loss.name`` from the registry's detection losses (default ``yolo``: task-aligned assignment,
  varifocal + CIoU; ``loss.kwargs`` go to it);
* weights -- AdamW, backbone at ``optim.lr`` and neck / heads at ``optim.lr * optim.head_lr_multiplier``, warm-up
  + cosine; an exponential moving average of the weights (timm's ``ModelEmaV3``, decay ``detection.ema_decay``
  with warm-up) is what validation scores and the bundle keeps;
* validation -- COCO mAP@[.5:.95], AP50, AP75, AP small / medium / large of the EMA model on the validation images
  (:func:`~frugalvision.metrics.coco_evaluate`, pycocotools), boxes after
  :func:`~frugalvision.models.detection.postprocess` (its evaluation defaults) mapped back to original pixels and
  scored against the images' own boxes; ``val/map`` picks ``best.ckpt``;
* bundle -- ``out/model`` via :func:`frugalvision.bundle.save_detection_bundle`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from frugalvision.bundle import save_detection_bundle
from frugalvision.data import ImageDataset, Sample, open_dataset
from frugalvision.data.detection import (
    DetectionAugment,
    DetectionDataset,
    boxes_to_original,
    collate_detection,
    resize_batch,
)
from frugalvision.embeddings import default_num_workers
from frugalvision.errors import CorruptImageError, DataError, ImageFileMissingError
from frugalvision.losses import create_loss
from frugalvision.metrics.detection import coco_evaluate
from frugalvision.models.backbone import create_backbone
from frugalvision.models.detection import Detector, DetectorConfig, choose_anchors, postprocess
from frugalvision.train.config import ConfigError, TrainConfig
from frugalvision.train.data import LabelledDataModule
from frugalvision.train.optim import WarmupCosine, split_decay
from frugalvision.train.run import (
    HistoryCheckpoint,
    RunResult,
    RunSettings,
    TaskRun,
    TaskSpec,
    log_loss_terms,
    read_checkpoint,
    register_task,
    warn_skipped,
)
from frugalvision.train.samplers import SeededItems

__all__ = [
    "DetectionModule",
    "DetectionResult",
    "DetectionRun",
    "collate_detection_items",
    "multi_scale_side",
]

CHECKPOINT_KEY = "frugalvision"

#: The detector's largest stride: a multi-scale side is a multiple of it.
STRIDE = 32


# ------------------------------------------------------------------------------------------------- data
class _Items(torch.utils.data.Dataset):
    """A :class:`~frugalvision.data.detection.DetectionDataset` whose items are dicts (``image``, ``target``,
    ``meta``), as :class:`~frugalvision.train.samplers.SeededItems` and the shared data module expect. The
    augmentation seeds itself from ``(seed, epoch, index)``; :meth:`set_epoch` passes the epoch on."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, target, meta = self.dataset[int(index)]
        return {"image": image, "target": target, "meta": meta}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def collate_detection_items(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`~frugalvision.data.detection.collate_detection` over :class:`_Items`: ``{"image": (B, 3, S, S) or
    None, "targets": [dict], "meta": [dict], "skipped": [(index, message)]}``."""
    out = collate_detection([(b["image"], b["target"], b["meta"]) for b in batch])
    return {"image": out.images, "targets": out.targets, "meta": out.metas, "skipped": out.skipped}


# ---------------------------------------------------------------------------------------------- multi-scale
def multi_scale_side(image_size: int, ratio: float, seed: int, step: int, stride: int = STRIDE) -> int:
    """The training side of optimisation step ``step`` with ``detection.multi_scale = ratio``.

    Uniform over the multiples of ``stride`` in ``[S (1 - r), S (1 + r)]`` (``S = image_size``, itself a multiple
    of ``stride``, so ``S`` is always among them), drawn from ``numpy.random.default_rng((seed, step))``: the same
    ``(seed, step)`` gives the same side, whichever process or resumed run asks. ``ratio = 0`` gives ``S``.
    """
    if ratio <= 0:
        return int(image_size)
    eps = 1e-9  # a bound that is a multiple of stride up to rounding (800 * 1.16 = 927.99...) counts as one
    low = max(stride, math.ceil(image_size * (1 - ratio) / stride - eps) * stride)
    high = math.floor(image_size * (1 + ratio) / stride + eps) * stride
    sides = np.arange(low, high + 1, stride)
    rng = np.random.default_rng((int(seed), int(step)))
    return int(sides[rng.integers(len(sides))])


# ----------------------------------------------------------------------------------------------- module
class DetectionModule(HistoryCheckpoint, pl.LightningModule):
    """Detector + loss + EMA as a ``LightningModule`` (see the module docstring).

    :attr:`history` holds one dict per epoch (``epoch``, ``train/loss``, ``lr``, ``val/map``, ``val/ap50``,
    ``val/ap75``) and travels in checkpoints with the EMA weights (``ema.*`` in the state dict).
    """

    checkpoint_key = CHECKPOINT_KEY

    monitor = "val/map"

    def __init__(
        self, detector: Detector, loss: nn.Module, config: TrainConfig, *, steps_per_epoch: int
    ) -> None:
        super().__init__()
        from timm.utils import ModelEmaV3

        self.detector = detector
        self.loss = loss
        self.config = config
        self.steps_per_epoch = int(steps_per_epoch)
        self.ema = ModelEmaV3(detector, decay=config.detection.ema_decay, use_warmup=True)
        self.ema.requires_grad_(False)
        self.history: list[dict[str, Any]] = []
        self._preds: list[dict[str, Any]] = []
        self.val_samples: Sequence[Sample] | None = (
            None  # set by the run: the boxes validation scores against
        )
        self.class_names: list[str] = []
        self._loss_sum, self._loss_count = 0.0, 0
        self._skipped: set[int] = set()

    def forward(self, images: torch.Tensor) -> Any:
        return self.detector(images)

    # ------------------------------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        # the augmentation's epoch (its seed, and mosaic off for the last detection.close_mosaic epochs); set
        # before the epoch's loader iterator starts its (non-persistent) workers
        datamodule = getattr(self.trainer, "datamodule", None)
        items = getattr(getattr(datamodule, "train_items", None), "dataset", None)
        if isinstance(items, _Items):
            items.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        warn_skipped(self._skipped, batch)
        images = batch["image"]
        if images is None:
            return None
        targets = batch["targets"]
        det = self.config.detection
        if det.multi_scale > 0:
            side = multi_scale_side(det.image_size, det.multi_scale, self.config.seed, self.global_step)
            images, targets = resize_batch(images, targets, side)
        outputs = self.detector(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            terms = self.loss(outputs, targets)
        advice = "lower optim.lr, keep optim.grad_clip, or use 32-bit precision (trainer.precision=32-true)"
        log_loss_terms(self, terms, int(images.shape[0]), batch_idx, advice)
        self._loss_sum += float(terms["loss"].detach())
        self._loss_count += 1
        return terms["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update(self.detector, step=self.global_step)

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        parts = [
            ("backbone", self.detector.backbone, o.lr),
            ("neck", self.detector.neck, o.lr * o.head_lr_multiplier),
            ("head", self.detector.head, o.lr * o.head_lr_multiplier),
        ]
        if self.detector.aux_head is not None:
            parts.append(("aux_head", self.detector.aux_head, o.lr * o.head_lr_multiplier))
        groups: list[dict[str, Any]] = []
        for name, module, lr in parts:
            decay, no_decay = split_decay(list(module.named_parameters()))
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": o.weight_decay})
            groups.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))  # type: ignore[arg-type]
        total = self.config.trainer.epochs * self.steps_per_epoch
        warmup = min(round(o.warmup_epochs * self.steps_per_epoch), max(0, total - 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._preds = []

    def evaluate(self, preds: list[dict[str, Any]]) -> dict[str, float]:
        """COCO metrics (:func:`~frugalvision.metrics.coco_evaluate`, pycocotools) of ``preds`` (original pixels,
        ``index`` into the validation images) against the validation images' own boxes: ``map``, ``ap50``,
        ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large`` (NaN where undefined)."""
        samples = self.val_samples
        if not preds or samples is None:
            return {"map": math.nan, "ap50": math.nan, "ap75": math.nan}
        targets = []
        for p in preds:
            s = samples[int(p["index"])]
            boxes = np.zeros((0, 4), np.float32) if s.boxes is None else np.asarray(s.boxes, np.float32)
            labels = np.zeros(0, np.int64) if s.box_labels is None else np.asarray(s.box_labels, np.int64)
            targets.append({"boxes": boxes, "labels": labels})
        result = coco_evaluate(
            [{k: p[k].numpy() for k in ("boxes", "scores", "labels")} for p in preds],
            targets,
            self.class_names,
            class_agnostic=self.config.detection.class_agnostic,
        )
        keys = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
        return {k: float(getattr(result, k)) for k in keys}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if images is None:
            return
        boxes, scores = self.ema.module(images)
        for det, meta in zip(postprocess(boxes, scores), batch["meta"], strict=True):
            det = {k: v.detach().float().cpu() for k, v in det.items()}
            det["boxes"] = boxes_to_original(det["boxes"], meta["scale"], meta["pad"], meta["orig_size"])
            self._preds.append({**det, "index": meta["index"]})

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        preds, self._preds = self._preds, []
        if self.trainer.world_size > 1:  # every rank scores the whole validation set (its shard is a part)
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(gathered, preds)
            preds = sorted((p for part in gathered for p in part), key=lambda p: int(p["index"]))
        metrics = self.evaluate(preds)
        sync = self.trainer.world_size > 1
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name in ("map", "ap50"), sync_dist=sync)
        loss = self._loss_sum / max(1, self._loss_count)
        row: dict[str, Any] = {"epoch": int(self.current_epoch), "train/loss": float(loss)}
        if self.trainer.optimizers:
            row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        row.update({f"val/{k}": v for k, v in metrics.items()})
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]


# -------------------------------------------------------------------------------------------------- run
@dataclass
class DetectionResult(RunResult[Detector]):
    """What a detection run returns: ``out``, the ``bundle`` folder (rank 0), the EMA ``model`` with the best
    checkpoint's weights, the best epoch's ``metrics``, the ``history`` and the ``best_checkpoint``."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    baseline: dict[str, float] = field(default_factory=dict)  # none for a detector (read by the CLI summary)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train, val)`` image indices, ``round(n * fraction)`` (at least 1) held out."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(n * fraction)))
    return np.sort(order[k:]), np.sort(order[:k])


class DetectionRun(TaskRun):
    """The detection task as a :class:`~frugalvision.train.run.TaskRun` (see the module docstring)."""

    monitor = DetectionModule.monitor
    config: TrainConfig

    def __init__(self, config: TrainConfig, **_: Any) -> None:
        self.config = config
        t = config.trainer
        self.settings = RunSettings.of(
            t, out=Path(config.out), seed=config.seed, grad_clip=config.optim.grad_clip
        )
        self.patience = t.patience

    def _open(self, path: str, split: str | None = None) -> ImageDataset:
        """The data set at ``path``: COCO JSON / YOLO folder (``open_dataset``), or a PASCAL-VOC folder
        (``JPEGImages/`` + ``Annotations/``; its ``ImageSets/Main/<split>.txt`` list when there is one)."""
        d = self.config.data
        root = Path(path)
        if d.format == "auto" and (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
            from frugalvision.discover import read_voc

            listed = split is not None and (root / "ImageSets" / "Main" / f"{split}.txt").is_file()
            dataset = read_voc(root, split if listed else None)
        else:
            dataset = open_dataset(path, format=d.format, on_corrupt=d.on_corrupt)
        if not dataset.has_boxes:
            raise DataError(
                f"{path} has no boxes: the detection task reads COCO JSON, YOLO or PASCAL-VOC data"
            )
        return dataset

    def _voc_val_split(self) -> bool:
        """A VOC folder with both ``train`` and ``val`` lists: its own split is used."""
        main = Path(str(self.config.data.path)) / "ImageSets" / "Main"
        return (
            (main / "train.txt").is_file()
            and (main / "val.txt").is_file()
            and (main.parent.parent / "Annotations").is_dir()
        )

    def prepare(self, resume: bool) -> None:
        config, d, det = self.config, self.config.data, self.config.detection
        if d.path is None:
            raise ConfigError("data.path is required: a COCO JSON file, a YOLO or VOC folder (CLI: --data)")
        voc_split = d.val_data is None and d.val_split != "none" and self._voc_val_split()
        dataset = self._open(str(d.path), "train" if voc_split else None)
        samples = list(dataset.samples)
        self.source_classes = dataset.classes
        self.classes = ["object"] if det.class_agnostic else dataset.classes
        if d.val_data is not None or voc_split:
            source = str(d.val_data) if d.val_data is not None else f"{d.path} (ImageSets/Main/val.txt)"
            val_set = self._open(str(d.val_data or d.path), None if d.val_data is not None else "val")
            extra = [c for c in val_set.classes if c not in dataset.classes]
            if extra and not det.class_agnostic:
                raise ConfigError(
                    f"data.val_data: {source} has classes the training data lacks: {extra[:10]}"
                )
            remap = np.array(
                [dataset.classes.index(c) if c in dataset.classes else 0 for c in val_set.classes]
            )
            self.train_samples = samples
            self.val_samples: list[Sample] | None = [_relabel(s, remap) for s in val_set.samples]
        elif d.val_split == "none":
            self.train_samples, self.val_samples = samples, None
        else:
            if len(samples) < 2:
                raise ConfigError(
                    f"data.path: {d.path} has {len(samples)} image(s); a validation split needs 2"
                )
            train_idx, val_idx = _split(len(samples), d.val_fraction, config.seed)
            self.train_samples = [samples[i] for i in train_idx]
            self.val_samples = [samples[i] for i in val_idx]
        self.has_validation = self.val_samples is not None
        self.detector = self._build_detector()
        kwargs = {"num_classes": len(self.classes), **config.loss.kwargs}
        try:
            self.loss = create_loss(config.loss.name, **kwargs)
        except TypeError as e:
            raise ConfigError(f"loss.kwargs: {e}") from None

    def _build_detector(self) -> Detector:
        config, m, det = self.config, self.config.model, self.config.detection
        backbone = create_backbone(m.name, pretrained=m.pretrained, weights=m.weights, **m.model_kwargs)
        anchors = None
        if det.head == "anchor":
            anchors, self.anchor_bpr = choose_anchors(
                _letterboxed_wh(self.train_samples, det.image_size), det.image_size, seed=config.seed
            )
        architecture = {
            k: getattr(det, k)
            for k in ("size", "image_size", "head", "repconv", "aux_head", "dfl_bins", "depthwise")
        }
        spec = DetectorConfig(
            num_classes=len(self.classes), backbone=m.name, pretrained=m.pretrained, anchors=anchors,
            backbone_kwargs=dict(m.model_kwargs), **architecture,
        )  # fmt: skip
        return Detector(spec, backbone)

    def _items(self, samples: Sequence[Sample], train: bool) -> SeededItems:
        config, det, dc = self.config, self.config.detection, self.detector.data_config
        images = ImageDataset(
            samples,
            self.source_classes,
            on_corrupt=config.data.on_corrupt,
            multilabel=True,
            source=str(config.data.path),
        )
        augment = None
        if train:
            close = config.trainer.epochs - det.close_mosaic
            augment = DetectionAugment(
                mosaic=det.mosaic,
                mixup=det.mixup,
                flip=config.augment.hflip,
                close_mosaic_epoch=max(0, close),
            )
        dataset = DetectionDataset(
            images,
            image_size=det.image_size,
            train=train,
            augment=augment,
            mean=tuple(dc["mean"]),
            std=tuple(dc["std"]),
            class_agnostic=det.class_agnostic,
            seed=config.seed,
        )
        return SeededItems(_Items(dataset), np.zeros(len(samples), np.int64), seeded=False)

    def build(self, trainer: pl.Trainer) -> tuple[pl.LightningModule, pl.LightningDataModule]:
        d = self.config.data
        train_items = self._items(self.train_samples, True)
        val_items = self._items(self.val_samples, False) if self.val_samples is not None else None
        workers = default_num_workers() if d.num_workers is None else d.num_workers
        datamodule, steps = LabelledDataModule.for_run(
            self.config, trainer, train_items, val_items, num_workers=workers, sampler="shuffle",
            collate_fn=collate_detection_items,
        )  # fmt: skip
        module = DetectionModule(self.detector, self.loss, self.config, steps_per_epoch=steps)
        module.val_samples, module.class_names = self.val_samples, list(self.classes)
        return module, datamodule

    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> DetectionResult:
        assert isinstance(module, DetectionModule)
        best_epoch = None
        if best:
            state = read_checkpoint(best)
            module.load_state_dict(state["state_dict"])
            best_epoch = int(state["epoch"])
        model = module.ema.module.cpu().eval()
        rows = [h for h in module.history if h["epoch"] == best_epoch] or module.history[-1:]
        metrics = (
            {"best_epoch": rows[0]["epoch"], **{k: v for k, v in rows[0].items() if k.startswith("val/")}}
            if rows
            else {}
        )
        result = DetectionResult(self.settings.out, None, model, metrics, list(module.history), best)
        if trainer.is_global_zero:
            config = self.config
            data: dict[str, Any] = {
                "source": str(config.data.path),
                "train": _summary(self.train_samples),
                "val": _summary(self.val_samples) if self.val_samples is not None else None,
            }
            if config.detection.head == "anchor":
                data["anchor_bpr"] = float(self.anchor_bpr)
            result.bundle = save_detection_bundle(
                model,
                self.settings.out / "model",
                classes=self.classes,
                loss={"name": config.loss.name, "kwargs": dict(config.loss.kwargs)},
                training=config.to_dict(),
                metrics=metrics,
                history=module.history,
                data=data,
            )
        return result


def _relabel(sample: Sample, remap: np.ndarray) -> Sample:
    if sample.box_labels is None or len(sample.box_labels) == 0:
        return sample
    labels = remap[np.asarray(sample.box_labels)]
    return Sample(sample.path, tuple(sorted(set(labels.tolist()))), sample.boxes, labels)


def _letterboxed_wh(samples: Sequence[Sample], size: int) -> np.ndarray:
    """Box widths and heights ``(n, 2)`` in letterboxed input pixels (image sizes read from the headers)."""
    from frugalvision.data import image_size

    rows = []
    for s in samples:
        if s.boxes is None or len(s.boxes) == 0:
            continue
        try:
            w, h = image_size(s.path)
        except (CorruptImageError, ImageFileMissingError, OSError):
            continue
        scale = size / max(w, h)
        rows.append((np.asarray(s.boxes)[:, 2:] - np.asarray(s.boxes)[:, :2]) * scale)
    return np.concatenate(rows) if rows else np.zeros((0, 2))


def _summary(samples: Sequence[Sample]) -> dict[str, int]:
    boxes = [0 if s.boxes is None else len(s.boxes) for s in samples]
    return {"images": len(samples), "boxes": int(sum(boxes)), "negatives": sum(1 for b in boxes if b == 0)}


def _default_dfl_bins(config: TrainConfig) -> int:
    """``detection.dfl_bins="auto"``: 16 bins of distribution focal loss with the anchor-free head, 0 with anchors.
    Test mAP at 320 px (``benchmarks/detection_table.py``): BCCD 0.462 -> 0.524 (3 epochs, where it was chosen);
    digits pasted into CIFAR-10 photos 0.101 -> 0.140 (3 epochs) and 0.259 -> 0.381 (8 epochs)."""
    return 16 if config.detection.head == "anchor_free" else 0


def _check_detection(config: TrainConfig) -> None:
    det, d = config.detection, config.data
    if det.image_size < 32 or det.image_size % 32:
        raise ConfigError(f"detection.image_size must be a positive multiple of 32, got {det.image_size}")
    if not 0 <= det.ema_decay < 1:
        raise ConfigError(f"detection.ema_decay must be in [0, 1), got {det.ema_decay}")
    if not (0 <= det.mosaic <= 1 and 0 <= det.mixup <= 1):
        raise ConfigError(
            f"detection.mosaic / detection.mixup must be in [0, 1], got {det.mosaic} / {det.mixup}"
        )
    if not 0 <= det.multi_scale <= 0.5:
        raise ConfigError(
            f"detection.multi_scale must be in [0, 0.5] (a fraction of detection.image_size), got {det.multi_scale}"
        )
    if det.close_mosaic < 0:
        raise ConfigError(f"detection.close_mosaic must be >= 0, got {det.close_mosaic}")
    if not isinstance(det.dfl_bins, int) or det.dfl_bins < 0 or det.dfl_bins == 1:
        raise ConfigError(
            f"detection.dfl_bins must be 0 (off) or >= 2 (bins of each side's distance), got {det.dfl_bins}"
        )
    if det.dfl_bins and det.head != "anchor_free":
        raise ConfigError(
            f"detection.dfl_bins needs detection.head=anchor_free (got {det.head}): the anchor head decodes centre "
            "and size, not side distances"
        )
    if d.val_split == "classes":
        raise ConfigError(
            "data.val_split=classes holds out whole classes, which a detector cannot find; use images"
        )
    if d.sampler not in ("shuffle", "auto"):
        raise ConfigError(f"data.sampler={d.sampler!r}: the detection task draws shuffled images (shuffle)")
    if config.model.freeze_backbone:
        raise ConfigError("model.freeze_backbone: the detection task has no frozen-backbone fast path")


register_task(
    TaskSpec(
        "detection",
        DetectionRun,
        defaults={
            "loss.name": "yolo",
            "data.sampler": "shuffle",
            "data.val_split": "images",
            "model.normalization": "none",
            "detection.dfl_bins": _default_dfl_bins,
        },
        check=_check_detection,
    )
)
