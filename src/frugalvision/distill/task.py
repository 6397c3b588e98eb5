"""The Lightning module of a distillation run and the student-vs-teacher held-out metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from frugalvision.distill.config import DistillConfig
from frugalvision.losses.distillation import DistillationLoss
from frugalvision.metrics import retrieval_metrics
from frugalvision.models.embedding_model import EmbeddingModel
from frugalvision.train.optim import WarmupCosine, split_decay
from frugalvision.train.run import HistoryCheckpoint, all_gather_rows, log_loss_terms, warn_skipped

__all__ = ["DistillTask", "heldout_metrics", "labelled_retrieval", "nearest_neighbours"]

#: where the history and reported images are kept in a checkpoint (:class:`HistoryCheckpoint`).
CHECKPOINT_KEY = "frugalvision_distill"


def nearest_neighbours(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``(N,)`` index of each row's most cosine-similar other row (``N >= 2``)."""
    x = F.normalize(x.float(), dim=1)
    out = torch.empty(x.shape[0], dtype=torch.long)
    for start in range(0, x.shape[0], chunk):
        sim = x[start : start + chunk] @ x.T
        rows = torch.arange(start, min(start + chunk, x.shape[0]))
        sim[rows - start, rows] = -math.inf
        out[start : start + chunk] = sim.argmax(dim=1)
    return out


def labelled_retrieval(emb: torch.Tensor, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """``val/recall@1`` and ``val/map@r`` (cosine, each labelled row querying the other labelled rows) of the rows
    with ``labels >= 0``; ``{}`` when no class has two labelled rows."""
    labelled = labels >= 0
    counts = np.bincount(labels[labelled]) if labelled.any() else np.zeros(0, dtype=np.int64)
    if not (counts >= 2).any():
        return {}
    result = retrieval_metrics(
        emb[torch.as_tensor(labelled)],
        labels[labelled],
        k=(1,),
        metric="cosine",
        include=("recall", "map_at_r"),
        seed=seed,
    )
    return {f"val/{k}": (0.0 if math.isnan(v) else float(v)) for k, v in result.items()}


def heldout_metrics(
    student: torch.Tensor, teacher: torch.Tensor, labels: np.ndarray | None = None, seed: int = 0
) -> dict[str, float]:
    """Student vs teacher on held-out images (rows in the same order).

    Returns ``val/cosine`` (mean cosine of each student row with its teacher row), ``val/nn_agreement`` (share of
    images whose nearest other image is the same for student and teacher) and, for labelled rows (label >= 0),
    the student's ``val/recall@1`` and ``val/map@r``.
    """
    out = {"val/cosine": float(F.cosine_similarity(student.float(), teacher.float(), dim=1).mean())}
    if student.shape[0] >= 2:
        agree = nearest_neighbours(student) == nearest_neighbours(teacher)
        out["val/nn_agreement"] = float(agree.float().mean())
    if labels is not None:
        out.update(labelled_retrieval(student, np.asarray(labels, dtype=np.int64), seed))
    return out


class DistillTask(HistoryCheckpoint, pl.LightningModule):
    """Student + :class:`~frugalvision.losses.DistillationLoss` as a ``LightningModule``.

    Batches hold the student's augmented images and the teacher's cached embeddings of the clean images. Held-out
    evaluation compares the student's embeddings with the teacher's (:func:`heldout_metrics`). :attr:`history`
    holds one dict per epoch (``epoch``, ``train/loss``, ``train/loss/infonce``, ``train/loss/mse``, ``lr`` and,
    when evaluated, ``val/...``) and travels in checkpoints.
    """

    checkpoint_key = CHECKPOINT_KEY

    def __init__(
        self,
        model: EmbeddingModel,
        loss: DistillationLoss,
        config: DistillConfig,
        *,
        steps_per_epoch: int,
        val_teacher: torch.Tensor | None = None,
        val_labels: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        # the backbone parameters that train (freeze_unused may have frozen some for good)
        self._backbone_trainable = [p for p in model.backbone.parameters() if p.requires_grad]
        self.config = config
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_hyperparameters(
            {"config": config.to_dict(), "steps_per_epoch": self.steps_per_epoch},
            ignore=["model", "loss", "val_teacher", "val_labels"],
        )
        self.val_teacher = val_teacher
        self.val_labels = val_labels
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, float] = {}
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._skipped: set[int] = set()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning keeps the modes modules had when fit started (models are built in eval mode)
        self._sums, self._count, self.last_eval = {}, 0, {}
        head_only = self.current_epoch < self.config.head_only_epochs  # LP-FT: the head alone first
        for p in self._backbone_trainable:
            p.requires_grad_(not head_only)
        if head_only:
            self.model.backbone.eval()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        self._note_skipped(batch)
        images, targets = batch["image"], batch["target"]
        if images is None or images.shape[0] < 2:
            return None
        embeddings = self(images)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            terms = self.loss(embeddings.float(), targets.float())
        n = int(images.shape[0])
        advice = "lower lr, keep grad_clip, or use 32-bit precision (precision=32-true)"
        log_loss_terms(self, terms, n, batch_idx, advice, what="the distillation loss")
        for name, value in terms.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach())
        if self.loss.learnable_temperature:
            self.log("train/temperature", self.loss.temperature.detach(), on_step=True, batch_size=n)
        self._count += 1
        return terms

    def on_train_epoch_end(self) -> None:
        sync = self.trainer.world_size > 1
        row: dict[str, Any] = {"epoch": int(self.current_epoch)}
        for name, total in sorted(self._sums.items()):
            value = torch.tensor(total / max(1, self._count), device=self.device)
            if sync:
                value = self.trainer.strategy.reduce(value, reduce_op="mean")
            row[f"train/{name}"] = float(value)
        if self.trainer.optimizers:
            row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        if self.loss.learnable_temperature:
            row["temperature"] = float(self.loss.temperature.detach())
        row.update(self.last_eval)
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]

    def configure_optimizers(self) -> Any:
        c = self.config
        decay, no_decay = split_decay(list(self.model.named_parameters()))
        groups: list[dict[str, Any]] = [
            {"name": "student", "params": decay, "weight_decay": c.weight_decay},
            {"name": "student/no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"name": "loss", "params": loss_params, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=c.lr)
        total = c.epochs * self.steps_per_epoch
        warmup = min(round(c.warmup_epochs * self.steps_per_epoch), max(0, total - 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _note_skipped(self, batch: dict[str, Any]) -> None:
        warn_skipped(self._skipped, batch)

    # ---------------------------------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["image"] is not None:
            self._val.append((self(batch["image"]).detach().float(), batch["index"].to(self.device)))

    def on_validation_epoch_end(self) -> None:
        dim = self.model.embedding_size
        emb = torch.cat([e for e, _ in self._val]) if self._val else torch.zeros(0, dim, device=self.device)
        idx = (
            torch.cat([i for _, i in self._val])
            if self._val
            else torch.zeros(0, dtype=torch.long, device=self.device)
        )
        self._val = []
        if self.trainer.world_size > 1:
            emb, idx = all_gather_rows(emb, idx)
        emb, idx = emb.cpu(), idx.cpu()
        if self.val_teacher is None or emb.shape[0] == 0:
            return
        metrics = heldout_metrics(
            emb,
            self.val_teacher[idx],
            None if self.val_labels is None else self.val_labels[idx.numpy()],
            self.config.seed,
        )
        for name, value in metrics.items():
            self.log(
                name,
                value,
                prog_bar=name in ("val/recall@1", "val/cosine"),
                sync_dist=self.trainer.world_size > 1,
            )
        self.last_eval = metrics
