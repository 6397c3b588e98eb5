"""Training on Lightning: configuration (resolved once by ``load_config``), samplers, recipes, the tasks, the run
scaffold every task plugs into (:mod:`frugalvision.train.run`: ``run_task``, ``TaskRun``, ``register_task``) and the
``fit`` entry point.

    from frugalvision.train import fit, load_config
    result = fit(load_config("train.yaml", ["model.freeze_backbone=true"]))
    result.metrics["val/map@r"], result.bundle       # -> runs/.../model, load it with frugalvision.load

See :mod:`frugalvision.train.engine` for what a run writes, resuming and multi-GPU training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from frugalvision._lazy import lazy_exports

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use (PEP 562)
    from frugalvision.train.config import (
        AugmentConfig,
        ConfigError,
        DataConfig,
        LossConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
        TrainerConfig,
        parse_override,
    )
    from frugalvision.train.engine import FitResult, build_model, fit
    from frugalvision.train.losses import build_loss, loss_terms
    from frugalvision.train.recipes import RECIPES, train_transform
    from frugalvision.train.resolve import load_config, resolve_config
    from frugalvision.train.run import RunSettings, TaskRun, TaskSpec, list_tasks, register_task, run_task
    from frugalvision.train.samplers import MPerClassSampler, SeededItems, ShardSampler
    from frugalvision.train.tasks import EmbeddingTask

#: Where each public name lives: importing the package (e.g. for its torch-free ``config`` module) loads no
#: torch; ``from frugalvision.X import name`` imports the one module that defines it.
_MODULES = {
    "AugmentConfig": "frugalvision.train.config",
    "ConfigError": "frugalvision.train.config",
    "DataConfig": "frugalvision.train.config",
    "LossConfig": "frugalvision.train.config",
    "ModelConfig": "frugalvision.train.config",
    "OptimConfig": "frugalvision.train.config",
    "TrainConfig": "frugalvision.train.config",
    "TrainerConfig": "frugalvision.train.config",
    "parse_override": "frugalvision.train.config",
    "FitResult": "frugalvision.train.engine",
    "build_model": "frugalvision.train.engine",
    "fit": "frugalvision.train.engine",
    "build_loss": "frugalvision.train.losses",
    "loss_terms": "frugalvision.train.losses",
    "RECIPES": "frugalvision.train.recipes",
    "train_transform": "frugalvision.train.recipes",
    "load_config": "frugalvision.train.resolve",
    "resolve_config": "frugalvision.train.resolve",
    "RunSettings": "frugalvision.train.run",
    "TaskRun": "frugalvision.train.run",
    "TaskSpec": "frugalvision.train.run",
    "list_tasks": "frugalvision.train.run",
    "register_task": "frugalvision.train.run",
    "run_task": "frugalvision.train.run",
    "MPerClassSampler": "frugalvision.train.samplers",
    "SeededItems": "frugalvision.train.samplers",
    "ShardSampler": "frugalvision.train.samplers",
    "EmbeddingTask": "frugalvision.train.tasks",
}

__all__ = [
    "RECIPES",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EmbeddingTask",
    "FitResult",
    "LossConfig",
    "MPerClassSampler",
    "ModelConfig",
    "OptimConfig",
    "RunSettings",
    "SeededItems",
    "ShardSampler",
    "TaskRun",
    "TaskSpec",
    "TrainConfig",
    "TrainerConfig",
    "build_loss",
    "build_model",
    "fit",
    "list_tasks",
    "load_config",
    "loss_terms",
    "parse_override",
    "register_task",
    "resolve_config",
    "run_task",
    "train_transform",
]


__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
