"""Lightning modules: the thin loop around a plain ``nn.Module`` model and loss.

Both tasks share one base (:class:`SupervisedTask`: train/eval modes of frozen parts, the optimiser, skipped-image
warnings, per-epoch history in checkpoints, gathering validation outputs across processes) and differ in what the
model outputs and how validation scores it:

* :class:`EmbeddingTask` trains an :class:`~frugalvision.models.EmbeddingModel` with any metric-learning loss:
  the model returns embeddings, the loss scores them. Validation embeds the held-out images and computes
  Recall@K, MAP@R and NMI on the whole validation set (:func:`frugalvision.metrics.retrieval_metrics`, cosine
  similarity -- also for Poincaré-ball embeddings, compared by direction as the faiss index and
  ``frugalvision search`` compare them; the hyperbolic distance also weighs their norms).
* :class:`MultilabelTask` trains the same model with a classifier head (one logit per class) and a multi-label
  loss on targets in {1, 0, -1}; validation computes mAP and CF1/OF1 at 0.5 and at top-k
  (:func:`frugalvision.metrics.multilabel_metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from frugalvision.metrics import retrieval_metrics
from frugalvision.models.embedding_model import EmbeddingModel
from frugalvision.train.config import TrainConfig
from frugalvision.train.losses import loss_terms
from frugalvision.train.optim import build_optimizer
from frugalvision.train.run import all_gather_rows, log_loss_terms, warn_skipped

__all__ = ["EmbeddingTask", "MultilabelTask", "SupervisedTask"]

CHECKPOINT_KEY = "frugalvision"


class SupervisedTask(pl.LightningModule):
    """What the embedding and multi-label tasks share: model + loss as a ``LightningModule``.

    Args:
        model: backbone + pooling + head.
        loss: ``loss(outputs, labels)`` module (its parameters, e.g. proxies, are trained too).
        config: the run's resolved configuration (stored JSON-primitive in the checkpoint's hyper-parameters).
        steps_per_epoch: optimiser steps per epoch (for the warm-up + cosine schedule).
        cached_features: inputs are cached pooled features (frozen-backbone fast path): only the head runs.

    :attr:`history` holds one dict per epoch (``epoch``, ``train/loss``, ``lr``, ``val/<metric>``) and travels in
    checkpoints, so a resumed run reports the same curves. Validation keeps ``self(images)`` per batch
    (:meth:`validation_step`); subclasses score it (``on_validation_epoch_end``) and define :attr:`monitor`, the
    validation metric that picks the best epoch.
    """

    monitor = "val/loss"
    min_batch = 1  # smallest batch the loss can score
    progress_metrics: tuple[str, ...] = ()  # validation metrics shown in the progress bar
    multilabel_targets = False  # labels are (B, C) float targets rather than (B,) class ids

    def __init__(
        self,
        model: EmbeddingModel,
        loss: nn.Module,
        config: TrainConfig,
        *,
        steps_per_epoch: int,
        cached_features: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.config = config
        self.steps_per_epoch = int(steps_per_epoch)
        self.cached_features = bool(cached_features)
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "steps_per_epoch": self.steps_per_epoch,
                "cached_features": cached_features,
            }
        )
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, float] = {}
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._skipped: set[int] = set()

    # ------------------------------------------------------------------------------------- model modes
    def train(self, mode: bool = True) -> SupervisedTask:
        """Training mode, except what stays frozen: the whole backbone on the fast path / with
        ``model.freeze_backbone``, and the backbone's BatchNorm layers with ``model.freeze_norm``."""
        super().train(mode)
        if mode:
            m = self.config.model
            if m.freeze_backbone or self.cached_features:
                self.model.backbone.eval()
            elif m.freeze_norm:
                for module in self.model.backbone.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(images) if self.cached_features else self.model(images)

    # ------------------------------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        # Lightning keeps the modes modules had when fit started (models are built in eval mode): set them here.
        self.train()
        self._loss_sum, self._loss_count = 0.0, 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        self._note_skipped(batch)
        images, labels = batch["image"], batch["label"]
        if images is None or labels.shape[0] < self.min_batch:
            return None
        embeddings = self(images)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            terms = loss_terms(self.loss, embeddings.float(), labels)
        advice = "lower optim.lr, keep optim.grad_clip, or use 32-bit precision (trainer.precision=32-true)"
        log_loss_terms(self, terms, int(labels.shape[0]), batch_idx, advice)
        self._loss_sum += float(terms["loss"].detach())
        self._loss_count += 1
        return terms

    def configure_optimizers(self) -> Any:
        optimizer, scheduler = build_optimizer(
            self.model,
            self.loss,
            self.config,
            steps_per_epoch=self.steps_per_epoch,
            frozen_backbone=self._frozen(),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _frozen(self) -> bool:
        return self.cached_features or self.config.model.freeze_backbone

    def _note_skipped(self, batch: dict[str, Any]) -> None:
        warn_skipped(self._skipped, batch)

    # ---------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Keep the batch's outputs ``(B, D)`` (logits for the classifiers), labels and data-set indices."""
        images = batch["image"]
        if images is None:
            return
        self._val.append((self(images).detach().float(), batch["label"], batch["index"]))

    def _record_epoch(self, metrics: dict[str, float]) -> None:
        """Log the validation metrics and append the epoch's row (train loss, lr, metrics) to :attr:`history`."""
        sync = self.trainer.world_size > 1
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name in self.progress_metrics, sync_dist=sync)
        loss = torch.tensor(self._loss_sum / max(1, self._loss_count), device=self.device)
        if sync:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        row: dict[str, Any] = {"epoch": int(self.current_epoch), "train/loss": float(loss)}
        if self.trainer.optimizers:
            row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        row.update({f"val/{k}": v for k, v in metrics.items()})
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]

    def _gather_validation(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All validation outputs ``(N, width)`` and labels, from every process, in data-set order."""
        dim = self._val[0][0].shape[1] if self._val else width
        out = (
            torch.cat([e for e, _, _ in self._val]) if self._val else torch.zeros(0, dim, device=self.device)
        )
        if self._val:
            lab = torch.cat([y for _, y, _ in self._val])
        else:
            lab = torch.zeros(0, dim) if self.multilabel_targets else torch.zeros(0, dtype=torch.long)
        idx = torch.cat([i for _, _, i in self._val]) if self._val else torch.zeros(0, dtype=torch.long)
        self._val = []
        if self.trainer.world_size > 1:
            out, lab, idx = all_gather_rows(out, lab.to(out.device), idx.to(out.device))
        order = torch.argsort(idx.cpu())
        return out.cpu()[order], lab.cpu()[order]

    # --------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "history": [dict(h) for h in self.history],
            "baseline": dict(self.baseline),
            "skipped": sorted(self._skipped),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY, {})
        self.history = [dict(h) for h in state.get("history", [])]
        self.baseline = dict(state.get("baseline", {}))
        self._skipped = set(state.get("skipped", []))


class EmbeddingTask(SupervisedTask):
    """Embedding model + metric-learning loss (see :class:`SupervisedTask` for the arguments).

    Validation before training (Lightning's sanity check run over the whole validation set) measures the
    *pretrained backbone alone* -- its pooled features, no head -- and keeps it as :attr:`baseline`; it travels in
    checkpoints with :attr:`history`. The best epoch is the one with the highest MAP@R.
    """

    monitor = "val/map@r"
    min_batch = 2  # a pair at least
    progress_metrics = ("recall@1", "map@r")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if images is None:
            return
        if self.trainer.sanity_checking:  # the baseline: pooled pretrained features, no head
            out = images if self.cached_features else self.model.features(images)
        else:
            out = self(images)
        self._val.append((out.detach().float(), batch["label"], batch["index"]))

    def on_validation_epoch_end(self) -> None:
        width = self.model.num_features if self.trainer.sanity_checking else self.model.embedding_size
        emb, labels = self._gather_validation(width)
        metrics = self._metrics(emb, labels.long())
        if self.trainer.sanity_checking:
            self.baseline = {f"val/{k}": v for k, v in metrics.items()}
            return
        self._record_epoch(metrics)

    def _metrics(self, emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        n = int(emb.shape[0])
        ks = tuple(sorted({k for k in self.config.trainer.eval_k if k < n} | {1}))
        if n < 2:
            return {f"recall@{k}": math.nan for k in ks} | {"map@r": math.nan, "nmi": math.nan}
        result = retrieval_metrics(
            emb, labels, k=ks, metric="cosine", include=("recall", "map_at_r", "nmi"), seed=self.config.seed
        )
        return {k: (0.0 if math.isnan(v) else float(v)) for k, v in result.items()}


class MultilabelTask(SupervisedTask):
    """Classifier (one logit per class) + multi-label loss on targets in {1, 0, -1} (see :class:`SupervisedTask`
    for the arguments). The model's head outputs logits; ``loss(logits, targets)`` ignores unknown (-1) entries
    or treats them as its partial-annotation mode says.

    At the start of each training epoch a loss with a ``start_epoch()`` method (the class-aware selective wrapper,
    which estimates class priors from the model's predictions) is told so. Validation computes mAP, CP/CR/CF1 and
    OP/OR/OF1 at threshold 0.5 and at top-k (``trainer.eval_top_k``); the best epoch is the one with the highest
    mAP. Per-class thresholds are tuned after training, on the best epoch's validation scores (see
    :func:`frugalvision.train.engine.fit`).
    """

    monitor = "val/map"
    progress_metrics = ("map", "cf1")
    multilabel_targets = True

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        start_epoch = getattr(self.loss, "start_epoch", None)
        if callable(start_epoch):
            start_epoch()

    def on_validation_epoch_end(self) -> None:
        logits, targets = self._gather_validation(self.model.embedding_size)
        if self.trainer.sanity_checking:
            return
        self._record_epoch(self._metrics(logits, targets))

    def _metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        from frugalvision.metrics import multilabel_metrics

        k = min(self.config.trainer.eval_top_k, int(logits.shape[1]))
        if logits.shape[0] == 0 or not bool((targets == 1).any()):
            return {"map": math.nan}
        scores = torch.sigmoid(logits.double()).numpy()
        result = multilabel_metrics(scores, targets.numpy(), thresholds=0.5, top_k=k)
        keep = ("map", "cf1", "of1", f"cf1@top{k}", f"of1@top{k}")
        return {name: float(result[name]) for name in keep if name in result}
