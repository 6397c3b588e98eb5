"""``fit``: from a :class:`~frugalvision.train.config.TrainConfig` to a trained model bundle.

One entry point for both ways of training an embedding model:

* **fine-tuning** -- images go through the backbone every step, with the recipe's augmentation;
* **frozen-backbone fast path** (``model.freeze_backbone``) -- pooled features are computed once for the training
  and validation images (no augmentation), cached on disk (:mod:`frugalvision.train.cache`), and only the head and
  the loss train on them: seconds on a CPU.

What a run leaves in ``out``::

    config.yaml          the resolved configuration
    checkpoints/         last.ckpt (every epoch) and best.ckpt (best validation MAP@R), written atomically
    logs/, tensorboard/  CSV and TensorBoard logs (Lightning's CSVLogger and TensorBoardLogger)
    feature_cache/       pooled features of the fast path (unless data.cache_dir points elsewhere)
    model/               the bundle: config.json, model.safetensors, report.md, curves.png

Resuming (``resume=True``) continues from ``checkpoints/last.ckpt`` (read with ``weights_only=True``) and reaches
the same result as an uninterrupted run: batches and augmentations depend only on ``(seed, epoch)`` (see
:mod:`frugalvision.train.samplers`) and the global generators are re-seeded from ``(seed, epoch, rank)`` at the
start of every epoch.

Several GPUs or nodes: ``trainer.strategy="ddp"`` with ``trainer.devices=N`` (and ``trainer.num_nodes``) uses
Lightning's DDP. Every process draws the same global sequence of m-per-class batches and keeps its own slice, so
one epoch covers ``N`` times as many batches of ``data.batch_size`` images (the batch size is per device);
validation embeddings are gathered from every process and the metrics computed on the whole validation set. On one
machine the launcher re-runs the command once per device; on a cluster start it with ``torchrun`` or SLURM as
Lightning documents. ``accelerator="cpu"`` with ``strategy="ddp"`` runs the same code on CPU processes (gloo).
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from frugalvision.bundle import save_bundle
from frugalvision.data import open_dataset
from frugalvision.embeddings import default_num_workers
from frugalvision.models.embedding_model import EmbeddingModel, create_embedding_model
from frugalvision.train._checkpoint import AtomicCheckpointIO
from frugalvision.train.cache import cached_features
from frugalvision.train.config import ConfigError, TrainConfig, validate
from frugalvision.train.data import (
    EmbeddingDataModule,
    FeatureItems,
    LabelledSplit,
    check_validation_split,
    labelled_split,
    split_dataset,
)
from frugalvision.train.losses import HYPERBOLIC_LOSSES, build_loss, canonical_loss_name
from frugalvision.train.recipes import train_transform
from frugalvision.train.samplers import SeededItems
from frugalvision.train.tasks import EmbeddingTask

__all__ = ["FitResult", "fit", "resolve_precision"]

MONITOR = "val/map@r"
# Lightning notices that are expected here: workers are chosen on purpose, validation metrics are computed on the
# gathered set (identical on every rank), the frozen backbone / BatchNorm layers are in eval mode on purpose.
_QUIET = (
    ".*does not have many workers.*",
    ".*sync_dist=True.*",
    ".*module\\(s\\) in eval mode.*",
    ".*LeafSpec.*",
    ".*smaller than the logging interval.*",
    ".*exists and is not empty.*",
)


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvert())


@dataclass
class FitResult:
    """What :func:`fit` returns (on every process; ``bundle`` is written by rank 0 only).

    Attributes:
        out: the run folder.
        bundle: the model bundle folder (``out/model``), or None on processes other than rank 0.
        model: the trained model, with the best checkpoint's weights.
        metrics: validation metrics of the best epoch (``val/recall@1``, ``val/map@r``, ...), ``best_epoch``.
        baseline: the same metrics for the pretrained backbone alone (pooled features, no head).
        history: one dict per epoch.
        best_checkpoint: path of the best checkpoint.
    """

    out: Path
    bundle: Path | None
    model: EmbeddingModel
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None


def _env_rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` -> ``"bf16-mixed"`` on a bfloat16-capable CUDA device, else ``"32-true"``."""
    if precision != "auto":
        return precision
    if _uses_cuda(accelerator) and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _devices(value: int | str) -> int | str:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


class _EpochSeeder(Callback):
    """At each epoch start: global generators seeded from ``(seed, epoch, rank)`` and the batch sampler told the
    epoch -- so an epoch's randomness does not depend on what ran before it (the key to exact resumption)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, rank = trainer.current_epoch, trainer.global_rank
        derived = int(np.random.SeedSequence([self.seed, epoch, rank]).generate_state(1)[0])
        random.seed(derived)
        np.random.seed(derived)  # noqa: NPY002  (third-party augmentations draw from the global generator)
        torch.manual_seed(derived)
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        if isinstance(datamodule, EmbeddingDataModule) and datamodule.train_sampler is not None:
            datamodule.train_sampler.set_epoch(epoch)


def _normalization(config: TrainConfig) -> str:
    norm = config.model.normalization
    hyperbolic = canonical_loss_name(config.loss.name) in HYPERBOLIC_LOSSES
    if norm == "auto":
        return "poincare" if hyperbolic else "l2"
    if hyperbolic and norm == "none":
        raise ConfigError(
            f"model.normalization=none with loss {config.loss.name!r}: the hyperbolic loss needs embeddings inside "
            "the Poincaré ball; use poincare (or auto)"
        )
    return norm


def build_model(config: TrainConfig) -> EmbeddingModel:
    """The :class:`~frugalvision.models.EmbeddingModel` a configuration describes (pretrained backbone, new head).

    On the fast path GeM's ``p`` is fixed (features are pooled once) and the backbone's gradients are off.
    """
    m = config.model
    frozen = m.freeze_backbone
    model_kwargs = dict(m.model_kwargs)
    if m.drop_path_rate > 0 and not frozen:
        model_kwargs.setdefault("drop_path_rate", m.drop_path_rate)
    model = create_embedding_model(
        m.name,
        pretrained=m.pretrained,
        weights=m.weights,
        pooling=m.pooling,
        gem_p=m.gem_p,
        gem_learnable=m.gem_learnable and not frozen,
        head=m.head,
        embedding_size=m.embedding_size,
        normalization=_normalization(config),
        hidden_size=m.hidden_size,
        dropout=m.drop_rate,
        c=m.hyperbolic_c,
        clip_r=m.hyperbolic_clip_r,
        input_size=m.input_size,
        model_kwargs=model_kwargs,
    )
    if frozen:
        model.backbone.requires_grad_(False)
    return model


def _splits(config: TrainConfig) -> tuple[LabelledSplit, LabelledSplit | None, Any]:
    d = config.data
    if d.path is None:
        raise ConfigError("data.path is required: a class-per-folder tree or a manifest (CLI: --data)")
    dataset = open_dataset(d.path, format=d.format, on_corrupt=d.on_corrupt)
    val_dataset = None
    if d.val_data is not None:
        train = labelled_split(dataset)
        val_dataset = open_dataset(d.val_data, format=d.format, on_corrupt=d.on_corrupt)
        val: LabelledSplit | None = labelled_split(val_dataset, {"split": "val_data", "val_data": d.val_data})
        assert val is not None
        check_validation_split(val, str(d.val_data))
    else:
        train, val = split_dataset(dataset, d.val_split, d.val_fraction, config.seed)
    if len(train.classes) < config.data.batch_size // config.data.m_per_class:
        raise ConfigError(
            f"data.batch_size: a batch of {d.batch_size} with m_per_class={d.m_per_class} needs "
            f"{d.batch_size // d.m_per_class} training classes, but there are {len(train.classes)}"
        )
    return train, val, (dataset, val_dataset)


def _feature_rows(
    split: LabelledSplit, rows: dict[str, int], features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    index = np.array([rows.get(str(p), -1) for p in split.dataset.paths], dtype=np.int64)
    keep = index >= 0
    return features[index[keep]], split.labels[keep]


def _cached_items(
    config: TrainConfig, model: EmbeddingModel, train: LabelledSplit, val: LabelledSplit | None, sources: Any
) -> tuple[SeededItems, SeededItems | None]:
    d = config.data
    cache_root = Path(d.cache_dir) if d.cache_dir else Path(config.out) / "feature_cache"
    device = "cuda" if _uses_cuda(config.trainer.accelerator) else "cpu"
    common: dict[str, Any] = {"batch_size": d.eval_batch_size, "num_workers": d.num_workers, "device": device}
    progress = config.trainer.progress
    dataset, val_dataset = sources
    feats, kept = cached_features(model, dataset, cache_root, source=str(d.path), progress=progress, **common)
    rows = {str(p): i for i, p in enumerate(np.asarray(dataset.paths, dtype=object)[kept])}
    train_x, train_y = _feature_rows(train, rows, feats)
    train_items = SeededItems(FeatureItems(train_x), train_y, seeded=False)
    if val is None:
        return train_items, None
    if val_dataset is not None:
        vfeats, vkept = cached_features(
            model, val_dataset, cache_root, source=str(d.val_data), progress=progress, **common
        )
        vrows = {str(p): i for i, p in enumerate(np.asarray(val_dataset.paths, dtype=object)[vkept])}
        val_x, val_y = _feature_rows(val, vrows, vfeats)
    else:
        val_x, val_y = _feature_rows(val, rows, feats)
    return train_items, SeededItems(FeatureItems(val_x), val_y, seeded=False)


def fit(
    config: TrainConfig,
    *,
    resume: bool = False,
    text_encoder: Any | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train an embedding model as ``config`` says and save the bundle to ``<config.out>/model``.

    Args:
        config: the resolved configuration (:func:`~frugalvision.train.config.load_config`).
        resume: continue the run in ``config.out`` from ``checkpoints/last.ckpt``.
        text_encoder: language model ``list[str] -> (n, d)`` for the ``language_guided`` loss (default: the
            offline MiniLM).
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`FitResult`.

    Raises:
        ConfigError: bad settings, a run already in ``out`` without ``resume``, ``resume`` without a checkpoint.
        DataError: data sets that cannot be read or split.
    """
    validate(config)
    if config.task != "embedding":
        raise ConfigError(f"task {config.task!r} is not supported by this engine; use task=embedding")
    out = Path(config.out)
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: no checkpoint at {last} (start the run without --resume)")
    if not resume and last.is_file():
        raise ConfigError(
            f"{out} already holds a training run ({last}); pass --resume to continue it, or choose another --out"
        )
    if _env_rank() == 0:
        config.save_yaml(out / "config.yaml")
    random.seed(config.seed)
    np.random.seed(config.seed)  # noqa: NPY002  (third-party augmentations draw from the global generator)
    torch.manual_seed(config.seed)

    train, val, sources = _splits(config)
    model = build_model(config)
    frozen = config.model.freeze_backbone
    loss = build_loss(
        config.loss.name,
        num_classes=len(train.classes),
        embedding_size=model.embedding_size,
        class_names=train.classes,
        kwargs=config.loss.kwargs,
        hyperbolic_c=config.model.hyperbolic_c if model.normalization == "poincare" else None,
        text_encoder=text_encoder,
    )

    t = config.trainer
    accelerator = "gpu" if _uses_cuda(t.accelerator) and t.accelerator == "auto" else t.accelerator
    # Two checkpoints: best.ckpt (best validation MAP@R) and last.ckpt (every epoch, for --resume).
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=MONITOR if val is not None else None,
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    latest = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False
    )
    all_callbacks: list[Callback] = [_EpochSeeder(config.seed), checkpoint, latest, *callbacks]
    if val is not None and t.patience is not None:
        all_callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience))
    no_validation: dict[str, Any] = {} if val is not None else {"limit_val_batches": 0}
    trainer = pl.Trainer(
        max_epochs=t.epochs,
        accelerator=accelerator,
        devices=_devices(t.devices),
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),  # type: ignore[arg-type]
        gradient_clip_val=config.optim.grad_clip,
        callbacks=all_callbacks,
        logger=[
            CSVLogger(out, name="logs"),
            TensorBoardLogger(out, name="tensorboard", default_hp_metric=False),
        ],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=-1 if (val is not None and t.eval_before_training and not resume) else 0,
        **no_validation,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress,
        enable_model_summary=t.progress,
        default_root_dir=out,
    )

    if frozen:
        train_items, val_items = _cached_items(config, model, train, val, sources)
        workers = 0
    else:
        train_items = SeededItems(
            train.dataset.with_transform(train_transform(model.data_config, config.augment)), train.labels
        )
        val_items = (
            SeededItems(val.dataset.with_transform(model.transform()), val.labels, seeded=False)
            if val
            else None
        )
        workers = default_num_workers() if config.data.num_workers is None else config.data.num_workers
    steps = config.data.steps_per_epoch or max(
        1, len(train_items) // (config.data.batch_size * trainer.world_size)
    )
    trainer.log_every_n_steps = min(t.log_every_n_steps, steps)  # type: ignore[attr-defined]
    datamodule = EmbeddingDataModule(
        train_items,
        val_items,
        batch_size=config.data.batch_size,
        m_per_class=config.data.m_per_class,
        eval_batch_size=config.data.eval_batch_size,
        seed=config.seed,
        num_workers=workers,
        steps_per_epoch=steps,
    )
    task = EmbeddingTask(model, loss, config, steps_per_epoch=steps, cached_features=frozen)
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)

    best = checkpoint.best_model_path or (str(last) if last.is_file() else "")
    best_epoch = None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)
        task.load_state_dict(state["state_dict"])
        best_epoch = int(state["epoch"])
    model = task.model.cpu().eval()
    metrics = _epoch_metrics(task.history, best_epoch)
    result = FitResult(out, None, model, metrics, dict(task.baseline), list(task.history), best or None)
    if trainer.is_global_zero:
        result.bundle = save_bundle(
            model,
            out / "model",
            task="embedding",
            classes=train.classes,
            loss={"name": canonical_loss_name(config.loss.name), "kwargs": dict(config.loss.kwargs)},
            training=config.to_dict(),
            metrics={**metrics, "baseline": dict(task.baseline)},
            history=task.history,
            data={
                "source": str(config.data.path),
                "train": train.summary(),
                "val": val.summary() if val is not None else None,
                "fast_path": frozen,
            },
        )
    return result


def _epoch_metrics(history: list[dict[str, Any]], epoch: int | None) -> dict[str, Any]:
    """The validation metrics of ``epoch`` (the best checkpoint's), else of the last epoch."""
    rows = [h for h in history if h["epoch"] == epoch] or history[-1:]
    if not rows:
        return {}
    return {"best_epoch": rows[0]["epoch"], **{k: v for k, v in rows[0].items() if k.startswith("val/")}}
