"""AdamW with per-part learning rates and a per-step linear warm-up + cosine schedule.

Parameter groups (see :class:`~frugalvision.train.config.OptimConfig`):

=================  ===============================  ==============
group              learning rate                    weight decay
=================  ===============================  ==============
backbone           ``lr``                           yes (no: 1-D)
head + pooling     ``lr * head_lr_multiplier``      yes (no: 1-D)
loss parameters    ``loss_param_groups(loss, lr)``  no
=================  ===============================  ==============

"1-D" parameters -- biases, normalisation weights, GeM's ``p`` -- are never decayed (decaying a scale or an
offset towards zero has no regularising meaning); nor are a loss's proxies or class weights, whose scale the
losses normalise away.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from frugalvision.losses import loss_param_groups
from frugalvision.models.embedding_model import EmbeddingModel
from frugalvision.train.config import TrainConfig

__all__ = ["WarmupCosine", "build_optimizer", "parameter_groups", "split_decay"]


class WarmupCosine:
    """Learning-rate factor at step ``s``: linear from ~0 to 1 over ``warmup`` steps, then cosine to ``min_ratio``.

    A small class rather than a lambda so that ``LambdaLR.state_dict()`` stores its (plain) settings and
    checkpoints stay loadable with ``weights_only=True``.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0) -> None:
        self.warmup, self.total, self.min_ratio = int(warmup), max(1, int(total)), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def split_decay(named: list[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters that get weight decay (matrices, kernels) and those that do not (1-D, biases)."""
    decay = [p for n, p in named if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in named if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
    return decay, no_decay


def parameter_groups(
    model: EmbeddingModel, loss: nn.Module, config: TrainConfig, *, frozen_backbone: bool
) -> list[dict[str, Any]]:
    """The optimiser groups of the table above (empty groups are left out)."""
    o = config.optim
    head_lr = o.lr * o.head_lr_multiplier
    groups: list[dict[str, Any]] = []
    parts: list[tuple[str, nn.Module, float]] = [
        ("head", model.head, head_lr),
        ("pooling", model.pooling, head_lr),
    ]
    if not frozen_backbone:
        parts.insert(0, ("backbone", model.backbone, o.lr))
    for name, module, lr in parts:
        decay, no_decay = split_decay(list(module.named_parameters()))
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": o.weight_decay})
        if no_decay:
            groups.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    for group in loss_param_groups(loss, o.lr):
        groups.append({**group, "weight_decay": 0.0, "name": group.get("name", "loss")})
    return groups


def build_optimizer(
    model: EmbeddingModel,
    loss: nn.Module,
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    frozen_backbone: bool,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`parameter_groups` and its :class:`WarmupCosine` schedule (stepped every step)."""
    o = config.optim
    groups = parameter_groups(model, loss, config, frozen_backbone=frozen_backbone)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # type: ignore[arg-type]
    total = config.trainer.epochs * steps_per_epoch
    warmup = min(round(o.warmup_epochs * steps_per_epoch), max(0, total - 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, o.min_lr_ratio))
    return optimizer, scheduler
