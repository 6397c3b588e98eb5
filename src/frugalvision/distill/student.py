"""The student: a timm backbone + pooling + a linear head to the teacher's width + L2 normalisation."""

from __future__ import annotations

import torch
from torch import nn

from frugalvision.distill.config import DistillConfig
from frugalvision.models.embedding_model import EmbeddingModel, create_embedding_model

__all__ = ["build_student", "freeze_unused", "trainable_parameters"]


def freeze_unused(model: nn.Module, input_size: int) -> int:
    """Freeze parameters that do not reach the output (one forward/backward at ``input_size``); return their count.

    Example: MobileNetV3 pooled by ``avg`` never runs timm's ``conv_head``; left trainable it would idle in the
    optimiser and break data-parallel training (unused parameters).
    """
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, 3, input_size, input_size)).sum().backward()
        unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for p in unused:
        p.requires_grad_(False)
    return sum(p.numel() for p in unused)


def build_student(config: DistillConfig, embedding_size: int) -> EmbeddingModel:
    """The student: ``config.student`` + pooling + linear head to ``embedding_size`` + L2 normalisation.

    ``pooling="auto"`` is the model's own pre-logits (``native``; for MobileNetV3 that includes its 1x1
    ``conv_head``). Parameters the chosen pooling never reaches (MobileNetV3's ``conv_head`` under ``avg``) are
    frozen (:func:`freeze_unused`).
    """
    model = create_embedding_model(
        config.student,
        pretrained=config.student_pretrained,
        weights=config.student_weights,
        pooling="native" if config.pooling == "auto" else config.pooling,
        head="linear",
        embedding_size=embedding_size,
        normalization="l2",
        input_size=config.input_size,
        model_kwargs={"drop_path_rate": config.drop_path_rate} if config.drop_path_rate > 0 else None,
    )
    freeze_unused(model, int(model.data_config["input_size"][-1]))
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Parameters that take part in the forward pass and train (after :func:`freeze_unused`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
