from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from frugalvision.data import read_folder
from frugalvision.losses import list_losses
from frugalvision.train import EmbeddingTask, build_loss, build_model
from frugalvision.train.data import LabelledDataModule, labelled_split
from frugalvision.train.recipes import train_transform
from frugalvision.train.samplers import SeededItems

# the backbone's BatchNorm layers are frozen on purpose (model.freeze_norm)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # Lightning 2.6 on torch 2.14
]


def fake_text_encoder(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), sum(map(ord, t)) % 97, t.count("a") + 1, 1.0] for t in texts])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    now = dict(module.named_parameters())
    return any(not torch.equal(before[k], now[k]) for k in before)


@pytest.mark.parametrize("name", list_losses(include_aliases=False, task="embedding"))
def test_tiny_model_trains_a_few_steps_with_every_loss(
    name: str, labelled_folder: Path, tmp_path: Path, tiny_config
) -> None:
    cfg = tiny_config(
        labelled_folder,
        tmp_path,
        f"loss.name={name}",
        "recipe=light",
        "model.pooling=gem",
        "model.input_size=64",
    )
    split = labelled_split(read_folder(labelled_folder))
    torch.manual_seed(0)
    model = build_model(cfg)
    loss = build_loss(
        name,
        num_classes=len(split.classes),
        embedding_size=model.embedding_size,
        class_names=split.classes,
        hyperbolic_c=0.1 if model.normalization == "poincare" else None,
        text_encoder=fake_text_encoder,
    )
    task = EmbeddingTask(model, loss, cfg, steps_per_epoch=3)
    items = SeededItems(
        split.dataset.with_transform(train_transform(model.data_config, cfg.augment)), split.labels
    )
    data = LabelledDataModule(
        items, None, batch_size=8, m_per_class=2, eval_batch_size=8, seed=0, num_workers=0, steps_per_epoch=3
    )
    before = {part: _snapshot(getattr(model, part)) for part in ("backbone", "head", "pooling")}
    before_loss = _snapshot(loss)
    trainer = pl.Trainer(
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 3
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and float(logged["train/loss"]) != 0.0
    for part, snapshot in before.items():
        assert _changed(snapshot, getattr(model, part)), f"{part} did not train with loss {name}"
    if before_loss:
        assert _changed(before_loss, loss), f"the parameters of loss {name} did not train"
    if name == "language_guided":
        assert {"train/loss/base", "train/loss/language"} <= set(logged)


def test_frozen_norm_layers_stay_in_eval_mode(labelled_folder: Path, tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(labelled_folder, tmp_path)
    model = build_model(cfg)
    task = EmbeddingTask(
        model, build_loss("triplet", num_classes=2, embedding_size=16), cfg, steps_per_epoch=1
    )
    task.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms) and model.head.training
    frozen = tiny_config(labelled_folder, tmp_path, "model.freeze_backbone=true")
    task = EmbeddingTask(
        build_model(frozen),
        build_loss("triplet", num_classes=2, embedding_size=16),
        frozen,
        steps_per_epoch=1,
    )
    task.train()
    assert not task.model.backbone.training and task.model.head.training
    assert not any(p.requires_grad for p in task.model.backbone.parameters())
