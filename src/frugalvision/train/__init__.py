"""Training on Lightning: configuration (resolved once by ``load_config``), samplers, recipes, the tasks, the run
scaffold every task plugs into (:mod:`frugalvision.train.run`: ``run_task``, ``TaskRun``, ``register_task``) and the
``fit`` entry point.

    from frugalvision.train import fit, load_config
    result = fit(load_config("train.yaml", ["model.freeze_backbone=true"]))
    result.metrics["val/map@r"], result.bundle       # -> runs/.../model, load it with frugalvision.load

See :mod:`frugalvision.train.engine` for what a run writes, resuming and multi-GPU training.
"""

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
