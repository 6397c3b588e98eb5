"""The single-label ``classification`` task: a softmax classifier on any timm backbone, calibrated.

``frugalvision train --task classification`` (or ``fit(load_config(..., ["task=classification", ...]))``) trains
the model of :func:`~frugalvision.train.engine.build_model` -- backbone, pooling, a linear head with one logit per
class -- on the run scaffold (:mod:`frugalvision.train.run`), with the same data paths as the other tasks:

* **linear probe** (``model.freeze_backbone=true``): pooled features computed once and cached
  (:mod:`frugalvision.train.cache`), only the head trains -- seconds on a CPU: a small head trains on one intra-op
  thread (:class:`~frugalvision.train.cache.SmallHeadThreads`) and checkpoints leave out the frozen backbone;
* **full fine-tune** (the default): every step runs the backbone on augmented images (the recipe's RandAugment,
  dropout ``model.drop_rate`` and stochastic depth ``model.drop_path_rate``, :mod:`frugalvision.train.recipes`);
* **LP-FT** (``model.head_epochs=N``, Kumar et al., ICLR 2022): the first ``N`` epochs train only the head (the
  backbone frozen and in eval mode), then everything.

Loss: cross-entropy on soft targets, ``L = -(1/B) Σ_i Σ_c t_ic log softmax(z_i)_c`` (timm's
``SoftTargetCrossEntropy``), where the targets are label-smoothed one-hot vectors
``t = (1 - ε) onehot(y) + ε / C`` (``loss.kwargs.label_smoothing=ε``, default 0.1; Szegedy et al. 2016) -- equal to
``torch.nn.functional.cross_entropy(z, y, label_smoothing=ε)`` -- or, with ``augment.mixup`` / ``augment.cutmix``
(Beta(α, α) parameters) > 0, timm's ``Mixup`` blend of two such targets ``λ t_i + (1 - λ) t_flip(i)`` with the
images mixed (Mixup, Zhang et al. 2018) or pasted (CutMix, Yun et al. 2019) by the same ``λ``. Every target row
sums to one. ``data.sampler=class_aware`` draws classes uniformly (class-balanced sampling for long-tailed data).

Each epoch the validation images give top-1 / top-5 accuracy, balanced accuracy, macro-F1, NLL and ECE
(:mod:`frugalvision.metrics.classification`); ``best.ckpt`` is the epoch with the best top-1. After training the
temperature ``T`` of temperature scaling (Guo et al., ICML 2017) is fitted on the validation logits of the best
epoch and saved in the bundle (``config.json``: ``temperature``; calibrated probabilities are
``softmax(logits / T)``), with ``report.md`` (per-class table, ECE and NLL before / after), ``confusion_matrix.png``
and ``reliability.png``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from frugalvision.bundle import save_bundle
from frugalvision.data import open_dataset
from frugalvision.metrics import classification as cmetrics
from frugalvision.models.embedding_model import EmbeddingModel
from frugalvision.train.cache import SmallHeadThreads
from frugalvision.train.config import ConfigError, TrainConfig
from frugalvision.train.data import LabelledSplit, labelled_split, split_dataset
from frugalvision.train.engine import (
    FitResult,
    SupervisedRun,
    build_model,
    check_classifier_settings,
    data_record,
    predict_outputs,
)
from frugalvision.train.run import TaskSpec, log_loss_terms, register_task
from frugalvision.train.tasks import SupervisedTask

__all__ = [
    "LOSS_NAMES",
    "ClassificationRun",
    "ClassificationTask",
    "build_mixup",
    "calibration_summary",
    "classification_metrics",
    "smoothed_targets",
]

#: ``loss.name`` values the classification task takes (``auto`` is cross-entropy).
LOSS_NAMES = ("auto", "cross_entropy", "ce")
_LOSS_KWARGS = ("label_smoothing",)
DEFAULT_LABEL_SMOOTHING = 0.1
N_BINS = 15  # ECE / reliability bins
_BACKBONE = "model.backbone."  # state-dict prefix of the backbone in ClassificationTask


def label_smoothing(config: TrainConfig) -> float:
    """``loss.kwargs.label_smoothing`` (default :data:`DEFAULT_LABEL_SMOOTHING`)."""
    return float(config.loss.kwargs.get("label_smoothing", DEFAULT_LABEL_SMOOTHING))


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``(B, C)`` float targets ``(1 - ε) onehot(y) + ε / C`` for class ids ``labels (B,)`` (timm's
    ``mixup_target`` with ``λ = 1``); rows sum to one."""
    return mixup_target(labels, num_classes, lam=1.0, smoothing=smoothing)


def build_mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's ``Mixup`` for ``augment.mixup`` / ``augment.cutmix`` (``None`` when both are 0): per batch, Mixup or
    CutMix (probability 0.5 each when both are on) with ``λ ~ Beta(α, α)`` drawn from NumPy's global generator
    (re-seeded every epoch by the run scaffold, so resumed runs draw the same ``λ``), targets label-smoothed."""
    a = config.augment
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=float(a.mixup),
        cutmix_alpha=float(a.cutmix),
        label_smoothing=label_smoothing(config),
        num_classes=int(num_classes),
    )


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """``top1``, ``top5``, ``balanced_accuracy``, ``macro_f1``, ``nll`` (mean ``-log softmax(z)_y``) and ``ece``
    (15 bins) of ``logits (N, C)`` against ``labels (N,)``; ``top5`` is 1 when ``C <= 5``."""
    if len(labels) == 0:
        return {"top1": math.nan}
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    probs = cmetrics.softmax(z)
    top = cmetrics.topk_accuracy(z, y, k=(1, 5))
    nll = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))))
    return {
        "top1": top["top1"],
        "top5": top["top5"],
        "balanced_accuracy": cmetrics.balanced_accuracy(y, z, num_classes),
        "macro_f1": cmetrics.macro_f1(y, z, num_classes),
        "nll": nll,
        "ece": cmetrics.expected_calibration_error(probs, y, N_BINS),
    }


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and NLL of ``softmax(z)`` (``*_before``) and ``softmax(z / T)`` (``*_after``), the (unchanged) top-1,
    and both reliability curves (:func:`~frugalvision.metrics.classification.reliability_bins`, 15 bins)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    out: dict[str, Any] = {"temperature": float(temperature), "n_bins": N_BINS, "images": len(y)}
    for name, t in (("before", 1.0), ("after", float(temperature))):
        p = cmetrics.softmax(z, t)
        out[f"ece_{name}"] = cmetrics.expected_calibration_error(p, y, N_BINS)
        out[f"nll_{name}"] = float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))))
        out[f"reliability_{name}"] = {
            k: v.tolist() for k, v in cmetrics.reliability_bins(p, y, N_BINS).items()
        }
    out["top1"] = float(np.mean(z.argmax(axis=1) == y))
    return out


class ClassificationTask(SupervisedTask):
    """Softmax classifier + soft-target cross-entropy (see the module docstring; arguments of
    :class:`~frugalvision.train.tasks.SupervisedTask`, ``loss`` is unused: the targets carry the smoothing).

    The number of classes is the head's width; Mixup / CutMix come from ``config.augment`` (:func:`build_mixup`;
    not on cached features). The best epoch is the one with the best validation top-1 accuracy.
    """

    monitor = "val/top1"
    progress_metrics = ("top1",)

    def __init__(
        self,
        model: EmbeddingModel,
        loss: torch.nn.Module,
        config: TrainConfig,
        *,
        steps_per_epoch: int,
        cached_features: bool = False,
    ) -> None:
        super().__init__(
            model, loss, config, steps_per_epoch=steps_per_epoch, cached_features=cached_features
        )
        self.num_classes = int(model.embedding_size)
        self.mixup = None if cached_features else build_mixup(config, self.num_classes)
        self.smoothing = label_smoothing(config)
        self.head_epochs = 0 if cached_features or config.model.freeze_backbone else config.model.head_epochs

    def configure_callbacks(self) -> list[Callback]:
        """On cached features, :class:`~frugalvision.train.cache.SmallHeadThreads` for the head's size."""
        if not self.cached_features:
            return []
        d = self.config.data
        params = sum(p.numel() for p in self.model.head.parameters())
        return [SmallHeadThreads(max(d.batch_size, d.eval_batch_size) * params)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """On cached features the backbone never changes (it is rebuilt as it was, pretrained or seeded, when a run
        resumes), so checkpoints hold everything but its weights: a few hundred KiB instead of the whole network
        written twice per epoch."""
        super().on_save_checkpoint(checkpoint)
        if self.cached_features:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(_BACKBONE)}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As ``nn.Module.load_state_dict``; on cached features the backbone's tensors a checkpoint leaves out
        (:meth:`on_save_checkpoint`) keep their current values."""
        if self.cached_features:
            own = {k: v for k, v in self.state_dict().items() if k.startswith(_BACKBONE)}
            state_dict = {**own, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _head_only(self) -> bool:
        """Whether this epoch is an LP-FT head-only epoch."""
        return self.current_epoch < self.head_epochs

    def train(self, mode: bool = True) -> ClassificationTask:
        super().train(mode)
        if mode and self._head_only():
            self.model.backbone.eval()
        return self

    def on_train_epoch_start(self) -> None:
        if (
            self.head_epochs
        ):  # LP-FT: the backbone gets no gradient (AdamW skips it) until head_epochs have passed
            self.model.backbone.requires_grad_(not self._head_only())
        super().on_train_epoch_start()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        self._note_skipped(batch)
        images, labels = batch["image"], batch["label"]
        if images is None or labels.shape[0] < 1:
            return None
        labels = labels.long()
        if self.mixup is not None and labels.shape[0] >= 2:
            if (
                labels.shape[0] % 2
            ):  # timm's batch Mixup pairs image i with B-1-i: an odd batch loses its last
                images, labels = images[:-1], labels[:-1]
            images, targets = self.mixup(images, labels)
        else:
            targets = smoothed_targets(labels, self.num_classes, self.smoothing)
        logits = self(images)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = SoftTargetCrossEntropy()(logits.float(), targets.float())
        terms = {"loss": loss}
        advice = "lower optim.lr, keep optim.grad_clip, or use 32-bit precision (trainer.precision=32-true)"
        log_loss_terms(self, terms, int(labels.shape[0]), batch_idx, advice)
        self._loss_sum += float(loss.detach())
        self._loss_count += 1
        return terms

    def on_validation_epoch_end(self) -> None:
        logits, labels = self._gather_validation(self.num_classes)
        if self.trainer.sanity_checking:
            return
        self._record_epoch(
            classification_metrics(logits.double().numpy(), labels.long().numpy(), self.num_classes)
        )


def _align(val: LabelledSplit, classes: list[str], source: str) -> LabelledSplit:
    """``val``'s labels renumbered to the training ``classes`` (by name); a class training never saw raises."""
    extra = [c for c in val.classes if c not in classes]
    if extra:
        raise ConfigError(
            f"{source} has classes the training data lacks: {', '.join(extra[:10])}; a classifier only predicts "
            "its training classes"
        )
    index = np.array([classes.index(c) for c in val.classes], dtype=np.int64)
    return LabelledSplit(val.dataset, index[val.labels], list(classes), val.info)


class ClassificationRun(SupervisedRun):
    """The ``classification`` task on the run scaffold: labelled splits, :func:`build_model`'s classifier, the
    fine-tuning / frozen-backbone data paths of :class:`~frugalvision.train.engine.SupervisedRun`, then
    temperature scaling, the report and the bundle."""

    def __init__(self, config: TrainConfig, **options: Any) -> None:
        super().__init__(config, **options)
        self.module_class = ClassificationTask
        self.monitor = ClassificationTask.monitor
        self.multilabel = False

    def prepare(self, resume: bool) -> None:
        config, d = self.config, self.config.data
        if d.path is None:
            raise ConfigError("data.path is required: a class-per-folder tree or a manifest (CLI: --data)")
        dataset = open_dataset(d.path, format=d.format, on_corrupt=d.on_corrupt)
        val_dataset = None
        if d.val_data is not None:
            train = labelled_split(dataset)
            val_dataset = open_dataset(d.val_data, format=d.format, on_corrupt=d.on_corrupt)
            own = labelled_split(val_dataset, {"split": "val_data", "val_data": d.val_data})
            val: LabelledSplit | None = _align(own, train.classes, str(d.val_data))
        else:
            train, val = split_dataset(dataset, d.val_split, d.val_fraction, config.seed, require_pairs=False)
        if len(train.classes) < 2:
            raise ConfigError(f"{d.path}: a classifier needs at least 2 classes, found {len(train.classes)}")
        self.train, self.val, self.sources = train, val, (dataset, val_dataset)
        self.model = build_model(config, num_classes=len(train.classes))
        self.loss = torch.nn.Identity()  # the soft-target cross-entropy lives in ClassificationTask
        self.has_validation = val is not None

    def trainer_options(self, resume: bool) -> dict[str, Any]:
        return {"num_sanity_val_steps": 0}

    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> FitResult:
        assert isinstance(module, ClassificationTask)
        config, train, val, out = self.config, self.train, self.val, self.settings.out
        frozen = config.model.freeze_backbone
        model, metrics = self.load_best(module, best)
        model.backbone.requires_grad_(not frozen)
        result = FitResult(out, None, model, metrics, {}, list(module.history), best)
        if not trainer.is_global_zero:
            return result
        temperature, per_class, figures = 1.0, None, {}
        if self.val_items is not None and len(self.val_items):
            logits, labels = predict_outputs(
                model, self.val_items, cached_features=frozen, batch_size=config.data.eval_batch_size
            )
            labels = labels.astype(np.int64)
            if len(labels):
                temperature = cmetrics.fit_temperature(logits, labels)
                calibration = calibration_summary(logits, labels, temperature)
                report = cmetrics.classification_report(
                    labels, logits.argmax(axis=1), len(train.classes), train.classes
                )
                per_class = report["per_class"]
                metrics["calibration"] = calibration
                figures = _figures(report["confusion_matrix"], train.classes, calibration)
        result.metrics = metrics
        result.temperature = temperature
        result.bundle = save_bundle(
            model,
            out / "model",
            task="classification",
            classes=train.classes,
            temperature=temperature,
            per_class=per_class,
            loss={"name": "cross_entropy", "kwargs": {"label_smoothing": label_smoothing(config)}},
            training=config.to_dict(),
            metrics=metrics,
            history=module.history,
            data=data_record(config, train, val, frozen),
            figures=figures,
        )
        return result


def _figures(matrix: list[list[int]], classes: list[str], calibration: dict[str, Any]) -> dict[str, Any]:
    from frugalvision.plots import save_confusion_matrix, save_reliability_diagram

    t = calibration["temperature"]
    curves = {
        f"T = 1 (ECE {calibration['ece_before']:.3f})": calibration["reliability_before"],
        f"T = {t:.3f} (ECE {calibration['ece_after']:.3f})": calibration["reliability_after"],
    }
    return {
        "confusion_matrix.png": lambda path: save_confusion_matrix(
            matrix, classes, path, title=f"validation confusion matrix (top-1 {calibration['top1']:.3f})"
        ),
        "reliability.png": lambda path: save_reliability_diagram(
            curves, path, title="validation reliability, before / after temperature scaling"
        ),
    }


def _check_classification(config: TrainConfig) -> None:
    loss = config.loss
    if loss.name.strip().lower() not in LOSS_NAMES:
        raise ConfigError(
            f"loss.name={loss.name!r}: the classification task trains with cross-entropy on (label-smoothed, "
            "Mixup/CutMix) soft targets; use auto or cross_entropy"
        )
    unknown = sorted(set(loss.kwargs) - set(_LOSS_KWARGS))
    if unknown:
        raise ConfigError(
            f"loss.kwargs.{unknown[0]}: unknown setting of the classification loss; it takes "
            + ", ".join(_LOSS_KWARGS)
        )
    ls = loss.kwargs.get("label_smoothing", DEFAULT_LABEL_SMOOTHING)
    if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
        raise ConfigError(f"loss.kwargs.label_smoothing must be a number in [0, 1), got {ls!r}")
    if loss.partial != "ignore" or loss.partial_kwargs:
        raise ConfigError("loss.partial / loss.partial_kwargs apply to the multilabel task only")
    check_classifier_settings(config)


register_task(
    TaskSpec(
        "classification",
        ClassificationRun,
        defaults={"data.sampler": "shuffle", "data.val_split": "images", "model.normalization": "none"},
        check=_check_classification,
    )
)
