"""``fit``: from a :class:`~frugalvision.train.config.TrainConfig` to a trained model bundle.

One entry point for every registered task (:func:`frugalvision.train.run.task_spec`): ``fit`` resolves the
configuration (:func:`~frugalvision.train.resolve_config`, a no-op for what ``load_config`` returned) and hands the
task's :class:`~frugalvision.train.run.TaskRun` to the run scaffold (:func:`~frugalvision.train.run.run_task`).
This module registers the two built-in tasks, both run by :class:`SupervisedRun` -- ``task="embedding"`` (metric
learning, :class:`~frugalvision.train.tasks.EmbeddingTask`) and ``task="multilabel"`` (tagging,
:class:`~frugalvision.train.tasks.MultilabelTask`; per-class decision thresholds are tuned on the validation images
after training and saved in the bundle) -- with both ways of training:

* **fine-tuning** -- images go through the backbone every step, with the recipe's augmentation;
* **frozen-backbone fast path** (``model.freeze_backbone``) -- pooled features are computed once for the training
  and validation images (no augmentation), cached on disk (:mod:`frugalvision.train.cache`), and only the head and
  the loss train on them: seconds on a CPU.

What a run leaves in ``out``::

    config.yaml          the resolved configuration
    checkpoints/         last.ckpt (every epoch) and best.ckpt (best validation MAP@R / mAP), written atomically
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
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from frugalvision.bundle import save_bundle
from frugalvision.data import open_dataset
from frugalvision.embeddings import default_num_workers
from frugalvision.models.embedding_model import EmbeddingModel, create_embedding_model
from frugalvision.train._checkpoint import read_checkpoint
from frugalvision.train._dist import uses_cuda
from frugalvision.train.cache import cached_features
from frugalvision.train.config import ConfigError, TrainConfig
from frugalvision.train.data import (
    FeatureItems,
    LabelledDataModule,
    LabelledSplit,
    MultilabelSplit,
    check_validation_split,
    collate_labelled,
    labelled_split,
    multilabel_split,
    split_dataset,
)
from frugalvision.train.losses import build_loss
from frugalvision.train.recipes import train_transform
from frugalvision.train.resolve import resolve_config
from frugalvision.train.run import (
    RunResult,
    RunSettings,
    TaskRun,
    TaskSpec,
    register_task,
    resolve_precision,
    run_task,
    task_spec,
)
from frugalvision.train.samplers import SeededItems
from frugalvision.train.tasks import EmbeddingTask, MultilabelTask, SupervisedTask

__all__ = [
    "FitResult",
    "SupervisedRun",
    "build_model",
    "check_classifier_settings",
    "data_record",
    "fit",
    "resolve_precision",
]


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvert())


@dataclass
class FitResult(RunResult[EmbeddingModel]):
    """What :func:`fit` returns (on every process; ``bundle`` is written by rank 0 only).

    Attributes:
        out: the run folder.
        bundle: the model bundle folder (``out/model``), or None on processes other than rank 0.
        model: the trained model, with the best checkpoint's weights.
        metrics: validation metrics of the best epoch (``val/recall@1``, ``val/map@r``, ... for embeddings;
            ``val/map``, ``val/cf1``, ... and ``val/tuned/...`` at the tuned thresholds for multi-label),
            ``best_epoch``.
        baseline: the same metrics for the pretrained backbone alone (pooled features, no head; embeddings only).
        history: one dict per epoch.
        best_checkpoint: path of the best checkpoint.
        thresholds: the multi-label per-class decision thresholds (None for embeddings).
        temperature: the classification task's temperature fitted on the validation images (else None).
    """

    baseline: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    thresholds: list[float] | None = None
    temperature: float | None = None


def build_model(
    config: TrainConfig, num_classes: int | None = None, prior: np.ndarray | None = None
) -> EmbeddingModel:
    """The :class:`~frugalvision.models.EmbeddingModel` a configuration describes (pretrained backbone, new head).

    On the fast path GeM's ``p`` is fixed (features are pooled once) and the backbone's gradients are off.

    For the multi-label task (``num_classes`` required) the head is a classifier with one logit per class and no
    normalisation; its weights start small (normal, std 0.01) and its biases at the log-odds of each class's
    training frequency ``prior`` (clipped to [0.001, 0.5]; 0.01 when not given), so training starts from "predict
    the base rate" instead of a loss dominated by the many negatives (the prior initialisation of the focal-loss
    paper, Lin et al. 2017, Sec. 4.1, per class). For the single-label ``classification`` task the head is the
    same classifier (one logit per class, no normalisation) with weights normal (std 0.01) and zero biases:
    a softmax that starts near uniform.
    """
    config = resolve_config(config)
    m = config.model
    multilabel = config.task == "multilabel"
    classifier = multilabel or config.task == "classification"
    if classifier and not num_classes:
        raise ConfigError(f"the {config.task} task needs the number of classes to build its classifier head")
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
        embedding_size=int(num_classes) if classifier and num_classes else m.embedding_size,
        normalization=m.normalization,
        hidden_size=m.hidden_size,
        dropout=m.drop_rate,
        c=m.hyperbolic_c,
        clip_r=m.hyperbolic_clip_r,
        input_size=m.input_size,
        model_kwargs=model_kwargs,
    )
    if frozen:
        model.backbone.requires_grad_(False)
    if multilabel:
        _init_classifier(model, prior)
    elif classifier:
        _init_classifier(model, None, zero_bias=True)
    return model


def _init_classifier(model: EmbeddingModel, prior: np.ndarray | None, zero_bias: bool = False) -> None:
    last = model.head.out
    if not isinstance(last, torch.nn.Linear):  # pragma: no cover - the classifier head is always linear
        raise ConfigError("the classifier head must end in a linear layer")
    if zero_bias:
        with torch.no_grad():
            torch.nn.init.normal_(last.weight, std=0.01)
            last.bias.zero_()
        return
    p = (
        np.full(last.out_features, 0.01)
        if prior is None
        else np.clip(np.asarray(prior, dtype=np.float64), 1e-3, 0.5)
    )
    with torch.no_grad():
        torch.nn.init.normal_(last.weight, std=0.01)
        last.bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=last.bias.dtype))


Split = LabelledSplit | MultilabelSplit


def _multilabel_splits(
    config: TrainConfig, dataset: Any
) -> tuple[MultilabelSplit, MultilabelSplit | None, Any]:
    d = config.data
    if d.val_data is None:
        train, val = multilabel_split(dataset, d.val_split, d.val_fraction, config.seed)
        return train, val, (dataset, None)
    train, _ = multilabel_split(dataset, "none", d.val_fraction, config.seed)
    val_dataset = open_dataset(d.val_data, format=d.format, on_corrupt=d.on_corrupt)
    return train, align_targets(val_dataset, train.classes, str(d.val_data)), (dataset, val_dataset)


def align_targets(dataset: Any, classes: list[str], source: str) -> MultilabelSplit:
    """``dataset``'s multi-label targets re-ordered to ``classes`` (a model's classes). A class the data set does
    not name is absent from all its images; a class the model does not know raises :class:`ConfigError`."""
    extra = [c for c in dataset.classes if c not in classes]
    if extra:
        raise ConfigError(
            f"{source} has labels the model does not know: {', '.join(extra[:10])}; the model's classes are "
            f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"
        )
    own = dataset.target_matrix()
    targets = np.zeros((len(dataset), len(classes)), dtype=np.float32)
    column = {c: i for i, c in enumerate(dataset.classes)}
    for j, name in enumerate(classes):
        if name in column:
            targets[:, j] = own[:, column[name]]
    return MultilabelSplit(dataset, targets, list(classes), {"split": "val_data", "val_data": source})


def _splits(config: TrainConfig) -> tuple[Split, Split | None, Any]:
    d = config.data
    if d.path is None:
        raise ConfigError("data.path is required: a class-per-folder tree or a manifest (CLI: --data)")
    dataset = open_dataset(d.path, format=d.format, on_corrupt=d.on_corrupt)
    if config.task == "multilabel":
        return _multilabel_splits(config, dataset)
    val_dataset = None
    if d.val_data is not None:
        train = labelled_split(dataset)
        val_dataset = open_dataset(d.val_data, format=d.format, on_corrupt=d.on_corrupt)
        val: LabelledSplit | None = labelled_split(val_dataset, {"split": "val_data", "val_data": d.val_data})
        assert val is not None
        check_validation_split(val, str(d.val_data))
    else:
        train, val = split_dataset(dataset, d.val_split, d.val_fraction, config.seed)
    if d.sampler == "m_per_class" and len(train.classes) < d.batch_size // d.m_per_class:
        raise ConfigError(
            f"data.batch_size: a batch of {d.batch_size} with m_per_class={d.m_per_class} needs "
            f"{d.batch_size // d.m_per_class} training classes, but there are {len(train.classes)}"
        )
    return train, val, (dataset, val_dataset)


def _feature_rows(split: Split, rows: dict[str, int], features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.array([rows.get(str(p), -1) for p in split.dataset.paths], dtype=np.int64)
    keep = index >= 0
    return features[index[keep]], split.labels[keep]


def _cached_items(
    config: TrainConfig, model: EmbeddingModel, train: Split, val: Split | None, sources: Any
) -> tuple[SeededItems, SeededItems | None]:
    d = config.data
    cache_root = Path(d.cache_dir) if d.cache_dir else Path(config.out) / "feature_cache"
    device = "cuda" if uses_cuda(config.trainer.accelerator) else "cpu"
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


class SupervisedRun(TaskRun):
    """The embedding and multi-label tasks as a :class:`~frugalvision.train.run.TaskRun`: labelled splits, a
    pretrained backbone with a new head, a registered loss, the fine-tuning or frozen-backbone data path, and the
    model bundle (with tuned per-class thresholds for multi-label)."""

    config: TrainConfig

    def __init__(self, config: TrainConfig, *, text_encoder: Any | None = None) -> None:
        t = config.trainer
        self.config = config
        self.settings = RunSettings.of(
            t, out=Path(config.out), seed=config.seed, grad_clip=config.optim.grad_clip
        )
        self.multilabel = config.task == "multilabel"
        self.module_class: type[SupervisedTask] = MultilabelTask if self.multilabel else EmbeddingTask
        self.monitor = self.module_class.monitor
        self.patience = t.patience
        self.text_encoder = text_encoder

    def prepare(self, resume: bool) -> None:
        config = self.config
        self.train, self.val, self.sources = _splits(config)
        train = self.train
        prior = None
        if isinstance(train, MultilabelSplit):
            known = np.maximum((train.labels != -1).sum(axis=0), 1)
            prior = train.positives() / known
        self.model = build_model(config, num_classes=len(train.classes), prior=prior)
        loss = build_loss(
            config.loss.name,
            num_classes=len(train.classes),
            embedding_size=self.model.embedding_size,
            class_names=train.classes,
            kwargs=config.loss.kwargs,
            hyperbolic_c=config.model.hyperbolic_c if self.model.normalization == "poincare" else None,
            text_encoder=self.text_encoder,
            class_counts=train.positives().tolist() if isinstance(train, MultilabelSplit) else None,
            num_samples=len(train.labels),
        )
        if self.multilabel and config.loss.partial != "ignore":
            from frugalvision.losses import PartialAnnotationLoss

            try:
                loss = PartialAnnotationLoss(loss, mode=config.loss.partial, **config.loss.partial_kwargs)
            except TypeError as e:
                raise ConfigError(f"loss.partial_kwargs: {e}") from e
        self.loss = loss
        self.has_validation = self.val is not None

    def trainer_options(self, resume: bool) -> dict[str, Any]:
        # The sanity run measures the pretrained backbone alone (embeddings only: a new classifier has no baseline).
        t = self.config.trainer
        sanity = self.has_validation and t.eval_before_training and not resume and not self.multilabel
        return {"num_sanity_val_steps": -1 if sanity else 0}

    def build(self, trainer: pl.Trainer) -> tuple[pl.LightningModule, pl.LightningDataModule]:
        config, model, train, val = self.config, self.model, self.train, self.val
        frozen = config.model.freeze_backbone
        if frozen:
            train_items, val_items = _cached_items(config, model, train, val, self.sources)
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
        self.val_items = val_items
        datamodule, steps = LabelledDataModule.for_run(
            config, trainer, train_items, val_items, num_workers=workers, sampler=config.data.sampler
        )
        task = self.module_class(model, self.loss, config, steps_per_epoch=steps, cached_features=frozen)
        return task, datamodule

    @staticmethod
    def load_best(module: SupervisedTask, best: str | None) -> tuple[EmbeddingModel, dict[str, Any]]:
        """The first step of every ``finish``: the ``best`` checkpoint's weights (read with ``weights_only=True``)
        loaded into ``module``; returns its model, on the CPU in eval mode, and the validation metrics of that
        epoch (of the last epoch without a checkpoint) with ``best_epoch``."""
        best_epoch = None
        if best:
            state = read_checkpoint(best)
            module.load_state_dict(state["state_dict"])
            best_epoch = int(state["epoch"])
        return module.model.cpu().eval(), _epoch_metrics(module.history, best_epoch)

    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> FitResult:
        assert isinstance(module, SupervisedTask)
        config, train, val, out = self.config, self.train, self.val, self.settings.out
        frozen = config.model.freeze_backbone
        model, metrics = self.load_best(module, best)
        result = FitResult(out, None, model, metrics, dict(module.baseline), list(module.history), best)
        extra: dict[str, Any] = {}
        if self.multilabel and trainer.is_global_zero:
            extra = _tune_thresholds(model, self.val_items, train.classes, frozen, config)
            result.metrics.update(extra.pop("metrics"))
            result.thresholds = extra["thresholds"]
        loss_record: dict[str, Any] = {"name": config.loss.name, "kwargs": dict(config.loss.kwargs)}
        if self.multilabel:
            loss_record.update(partial=config.loss.partial, partial_kwargs=dict(config.loss.partial_kwargs))
        if trainer.is_global_zero:
            result.bundle = save_bundle(
                model,
                out / "model",
                task=config.task,
                classes=train.classes,
                thresholds=extra.get("thresholds"),
                per_class=extra.get("per_class"),
                loss=loss_record,
                training=config.to_dict(),
                metrics={**metrics, "baseline": dict(module.baseline)},
                history=module.history,
                data=data_record(config, train, val, frozen),
            )
        return result


def fit(
    config: TrainConfig,
    *,
    resume: bool = False,
    text_encoder: Any | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train the model of ``config.task`` as ``config`` says and save the bundle to ``<config.out>/model``.

    Args:
        config: the configuration (:func:`~frugalvision.train.load_config`; one built otherwise is resolved here).
        resume: continue the run in ``config.out`` from ``checkpoints/last.ckpt``.
        text_encoder: language model ``list[str] -> (n, d)`` for the ``language_guided`` loss (default: the
            offline MiniLM).
        callbacks: extra Lightning callbacks.

    Returns:
        what the task's run returns (:class:`FitResult` for the embedding and multi-label tasks).

    Raises:
        ConfigError: bad settings, a run already in ``out`` without ``resume``, ``resume`` without a checkpoint.
        DataError: data sets that cannot be read or split.
    """
    config = resolve_config(config)
    task = task_spec(config.task).make_run(config, text_encoder=text_encoder)
    return typing.cast(FitResult, run_task(task, resume=resume, callbacks=callbacks))


def predict_outputs(
    model: EmbeddingModel, items: SeededItems, *, cached_features: bool, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (or only its head, on cached features) over ``items``: ``(outputs (N', D), labels)`` for the
    readable items, in order."""
    loader = torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_labelled
    )
    outputs, labels = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            if batch["image"] is None:
                continue
            x = batch["image"]
            outputs.append((model.embed_features(x) if cached_features else model(x)).float().numpy())
            labels.append(batch["label"].numpy())
    if not outputs:
        return np.zeros((0, model.embedding_size), np.float32), np.zeros(
            (0, model.embedding_size), np.float32
        )
    return np.concatenate(outputs), np.concatenate(labels)


def decision_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class thresholds maximising F1 on validation ``scores (N, C)`` (probabilities) and ``targets`` in
    {1, 0, -1}. A class without a known positive cannot be tuned: it gets the one threshold that maximises F1 over
    all known entries pooled (0.5 would leave rare classes -- whose probabilities start at their low base rate --
    silent); 0.5 if there is no positive at all."""
    from frugalvision.metrics import tune_thresholds

    pooled = tune_thresholds(scores.reshape(-1, 1), targets.reshape(-1, 1), default=0.5)[0]
    return tune_thresholds(scores, targets, default=float(pooled))


def _tune_thresholds(
    model: EmbeddingModel,
    val_items: SeededItems | None,
    classes: list[str],
    cached: bool,
    config: TrainConfig,
) -> dict[str, Any]:
    """Per-class F1-maximising thresholds on the validation images (classes without a validation positive: the
    threshold that maximises F1 over all classes pooled; 0.5 without validation data), the metrics at those
    thresholds (``val/tuned/...``: optimistic, as tuned on the same images) and the per-class report."""
    from frugalvision.metrics import multilabel_metrics, per_class_report

    if val_items is None:
        return {"thresholds": [0.5] * len(classes), "metrics": {}, "per_class": None}
    logits, targets = predict_outputs(
        model, val_items, cached_features=cached, batch_size=config.data.eval_batch_size
    )
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    thresholds = decision_thresholds(scores, targets)
    k = min(config.trainer.eval_top_k, len(classes))
    tuned = multilabel_metrics(scores, targets, thresholds=thresholds, top_k=k)
    metrics = {f"val/tuned/{name}": float(tuned[name]) for name in ("cp", "cr", "cf1", "op", "or", "of1")}
    report = per_class_report(scores, targets, classes, thresholds)
    return {"thresholds": [float(t) for t in thresholds], "metrics": metrics, "per_class": report}


def _epoch_metrics(history: list[dict[str, Any]], epoch: int | None) -> dict[str, Any]:
    """The validation metrics of ``epoch`` (the best checkpoint's), else of the last epoch."""
    rows = [h for h in history if h["epoch"] == epoch] or history[-1:]
    if not rows:
        return {}
    return {"best_epoch": rows[0]["epoch"], **{k: v for k, v in rows[0].items() if k.startswith("val/")}}


def _check_embedding(config: TrainConfig) -> None:
    d = config.data
    if d.sampler != "m_per_class":
        raise ConfigError(
            f"data.sampler={d.sampler!r}: metric-learning losses need several images of each class in a "
            "batch; the embedding task uses m_per_class (or auto)"
        )
    if config.loss.partial != "ignore" or config.loss.partial_kwargs:
        raise ConfigError("loss.partial / loss.partial_kwargs apply to the multilabel task only")


def data_record(config: TrainConfig, train: Split, val: Split | None, fast_path: bool) -> dict[str, Any]:
    """A bundle's ``data`` record: where the images came from, each side's summary, whether the fast path ran."""
    return {
        "source": str(config.data.path),
        "train": train.summary(),
        "val": val.summary() if val is not None else None,
        "fast_path": fast_path,
    }


def check_classifier_settings(config: TrainConfig, what: str = "classifier") -> None:
    """The data and model settings a task that outputs one logit per class (``what``) cannot use: whole classes
    held out for validation, m-per-class batches, normalised outputs.

    Raises:
        ConfigError: naming the key and the value to use instead.
    """
    d = config.data
    if d.val_split == "classes":
        raise ConfigError(
            f"data.val_split=classes holds out whole classes, which a {what} cannot predict; use images (or auto)"
        )
    if d.sampler == "m_per_class":
        raise ConfigError("data.sampler=m_per_class is for the embedding task; use shuffle or class_aware")
    if config.model.normalization != "none":
        raise ConfigError(
            f"model.normalization={config.model.normalization!r}: a {what} outputs raw logits; use auto"
        )


def _check_multilabel(config: TrainConfig) -> None:
    check_classifier_settings(config, "multi-label classifier")


register_task(
    TaskSpec(
        "embedding",
        SupervisedRun,
        defaults={
            "loss.name": "proxynca++",
            "data.sampler": "m_per_class",
            "data.val_split": "classes",
            "model.embedding_size": 128,
        },
        check=_check_embedding,
    )
)
register_task(
    TaskSpec(
        "multilabel",
        SupervisedRun,
        defaults={
            "loss.name": "asl",
            "data.sampler": "shuffle",
            "data.val_split": "images",
            "model.normalization": "none",
        },
        check=_check_multilabel,
    )
)
