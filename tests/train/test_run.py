"""The run scaffold: a new task is a LightningModule, a data module and a registry entry, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import frugalvision.train.run as run_module
from frugalvision.train import ConfigError, fit, list_tasks, load_config
from frugalvision.train.run import (
    RunSettings,
    TaskRun,
    TaskSpec,
    log_loss_terms,
    read_checkpoint,
    register_task,
)


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(1), y)
        log_loss_terms(self, {"loss": loss}, len(x), batch_idx, "lower the learning rate")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/score", -torch.nn.functional.mse_loss(self.net(x).squeeze(1), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Data(pl.LightningDataModule):
    def _loader(self) -> DataLoader:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(1)), batch_size=8)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


class _RegressionRun(TaskRun):
    monitor = "val/score"

    def __init__(self, config: Any, **fit_options: Any) -> None:
        self.config = config
        self.settings = RunSettings.of(config.trainer, out=Path(config.out), seed=config.seed)

    def build(self, trainer: pl.Trainer) -> tuple[pl.LightningModule, pl.LightningDataModule]:
        return _Regression(), _Data()

    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> Any:
        return best


def test_a_registered_task_runs_through_fit_with_checkpoints_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "_TASKS", dict(run_module._TASKS))  # the registration ends with the test
    register_task(
        TaskSpec(
            "regression",
            _RegressionRun,
            defaults={"data.sampler": "shuffle", "data.val_split": "images"},  # no loss of the loss registry
        )
    )
    assert sorted(list_tasks()) == ["detection", "embedding", "multilabel", "regression"]
    args = ["task=regression", f"out={tmp_path}", "trainer.progress=false", "trainer.accelerator=cpu"]
    best = fit(load_config(None, [*args, "trainer.epochs=2"]))
    assert best == str(tmp_path / "checkpoints" / "best.ckpt")
    assert load_config(tmp_path / "config.yaml").task == "regression"
    with pytest.raises(ConfigError, match="already holds a training run"):
        fit(load_config(None, [*args, "trainer.epochs=2"]))
    fit(load_config(None, [*args, "trainer.epochs=3"]), resume=True)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 2  # the third epoch (0-based)
