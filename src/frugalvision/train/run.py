"""The run scaffold every training task plugs into, and the task registry.

:func:`run_task` is the loop around a task that every run shares -- checking ``resume`` against ``out/checkpoints``,
writing ``out/config.yaml``, seeding, the Lightning ``Trainer`` (devices, precision, DDP, atomic checkpoints read
with ``weights_only=True``, ``last.ckpt`` every epoch and ``best.ckpt`` on the task's validation metric, early
stopping, CSV and TensorBoard logs, per-epoch re-seeding for exact resumption) and Lightning's expected notices kept
quiet. A task brings what differs, as a :class:`TaskRun`: its data, model and loss (``prepare``), its
``LightningModule`` and data module (``build``) and what it saves (``finish``)::

    class DetectionRun(TaskRun):
        monitor = "val/map"                                   # picks best.ckpt (None: last.ckpt only)
        def prepare(self): ...                                # read the data, build model and loss
        def build(self, world_size): return module, datamodule
        def finish(self, trainer, module, best): ...          # load best, write the bundle (rank 0), return
    register_task(TaskSpec("detection", DetectionRun, defaults={"loss.name": "...", ...}))

``frugalvision.train.fit(config)`` then runs ``task=detection`` like the built-in ``embedding`` and ``multilabel``
(:mod:`frugalvision.train.engine`); distillation (:func:`frugalvision.distill.distill`) runs its own
:class:`TaskRun`  through :func:`run_task` with its own configuration. ``LightningModule`` helpers shared by the tasks:
:func:`log_loss_terms` (the finite-loss check and the logged terms), :func:`warn_skipped` and
:class:`HistoryCheckpoint` (history and reported images kept in checkpoints).
"""

from __future__ import annotations

import dataclasses
import importlib
import random
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from frugalvision._config import ConfigError, Settings
from frugalvision.errors import DataWarning
from frugalvision.train._checkpoint import AtomicCheckpointIO, last_checkpoint, read_checkpoint
from frugalvision.train._dist import all_gather_rows, devices_arg, env_rank, uses_cuda
from frugalvision.train.data import EpochSeeder

__all__ = [
    "QUIET",
    "HistoryCheckpoint",
    "RunResult",
    "RunSettings",
    "TaskRun",
    "TaskSpec",
    "all_gather_rows",
    "env_rank",
    "list_tasks",
    "log_loss_terms",
    "read_checkpoint",
    "register_task",
    "resolve_precision",
    "run_task",
    "seed_everything",
    "task_spec",
    "uses_cuda",
    "warn_skipped",
]

#: Lightning notices that are expected here: workers are chosen on purpose, validation metrics are computed on the
#: gathered set (identical on every rank), frozen backbones / BatchNorm layers are in eval mode on purpose.
QUIET = (
    ".*does not have many workers.*",
    ".*sync_dist=True.*",
    ".*module\\(s\\) in eval mode.*",
    ".*LeafSpec.*",
    ".*smaller than the logging interval.*",
    ".*exists and is not empty.*",
)


M = TypeVar("M")


@dataclass
class RunResult(Generic[M]):
    """What every run returns first (a task's result class adds its own fields after these):

    Attributes:
        out: the run folder.
        bundle: the bundle the run saved (``out/model``), or None on processes other than rank 0.
        model: the trained model.
        metrics: the validation metrics the task reports (``val/...``).
    """

    out: Path
    bundle: Path | None
    model: M
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """What the scaffold reads from a task's configuration (the same meaning in every task).

    ``precision="auto"``: ``"bf16-mixed"`` on a CUDA device that supports bfloat16, else ``"32-true"``;
    ``accelerator="auto"``: ``"gpu"`` when CUDA is available, else Lightning's choice -- both worked out here, when
    the run starts, so a saved configuration resumes on another machine as it would have started there.
    ``what`` names the run in the "already holds a ..." error.
    """

    out: Path
    seed: int
    epochs: int
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    grad_clip: float | None = None
    progress: bool = True
    log_every_n_steps: int = 10
    what: str = "training run"

    @classmethod
    def of(cls, source: Any, **values: Any) -> RunSettings:
        """Settings from the attributes of ``source`` named like a field (a config's ``trainer`` section, a flat
        config), then ``values``; what neither gives keeps its default."""
        found = {f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if hasattr(source, f.name)}
        return cls(**{**found, **values})


class TaskRun(ABC):
    """One run of a task, driven by :func:`run_task` in this order: :meth:`prepare` (after the seeds are set),
    the ``Trainer``, :meth:`build` (knowing the number of processes), ``trainer.fit``, :meth:`after_fit`,
    :meth:`finish`.

    Attributes:
        settings: the run's :class:`RunSettings`.
        config: the configuration, written to ``out/config.yaml`` by rank 0.
        monitor: the validation metric (maximised) that picks ``best.ckpt`` and drives early stopping; ``None``:
            only ``last.ckpt``.
        patience: epochs without a better ``monitor`` before stopping (``None``: never).
        has_validation: whether the run validates at all (set by :meth:`prepare`).
        last_on_train_epoch_end: Lightning's ``save_on_train_epoch_end`` for ``last.ckpt``.
    """

    settings: RunSettings
    config: Settings
    monitor: str | None = None
    patience: int | None = None
    has_validation: bool = True
    last_on_train_epoch_end: bool | None = None

    def prepare(self, resume: bool) -> None:  # noqa: B027  (optional hook)
        """Read the data and build the model and loss."""

    def trainer_options(self, resume: bool) -> dict[str, Any]:
        """Extra ``pl.Trainer`` arguments (``num_sanity_val_steps``, ``check_val_every_n_epoch``...)."""
        return {}

    @abstractmethod
    def build(self, trainer: pl.Trainer) -> tuple[pl.LightningModule, pl.LightningDataModule]:
        """The ``LightningModule`` and data module (``trainer.world_size`` processes draw batches)."""

    def after_fit(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:  # noqa: B027
        """Runs after ``trainer.fit`` with Lightning's notices still quiet (e.g. a final evaluation)."""

    @abstractmethod
    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> Any:
        """What the run returns; writes the bundle where ``trainer.is_global_zero``. ``best``: the best
        checkpoint (``monitor``), else ``last.ckpt`` if written, else ``None``."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators (third-party augmentations draw from the globals)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` -> ``"bf16-mixed"`` on a bfloat16-capable CUDA device, else ``"32-true"``."""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator) and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def run_task(task: TaskRun, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> Any:
    """Run ``task`` (see :class:`TaskRun`) and return what its :meth:`~TaskRun.finish` returns.

    Raises:
        ConfigError: a run already in ``out`` without ``resume``, ``resume`` without a checkpoint.
        CheckpointError: a ``last.ckpt`` that cannot be read safely.
    """
    s = task.settings
    out = Path(s.out)
    last = last_checkpoint(out, resume, s.what)
    if env_rank() == 0:
        task.config.save_yaml(out / "config.yaml")
    seed_everything(s.seed)
    task.prepare(resume)

    # Two checkpoints: best.ckpt (the best `monitor`) and last.ckpt (every epoch, for resume).
    best = (
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor=task.monitor if task.has_validation else None,
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        if task.monitor
        else None
    )
    latest = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=task.last_on_train_epoch_end,
    )
    all_callbacks: list[Callback] = [EpochSeeder(s.seed), *([best] if best else []), latest, *callbacks]
    if task.monitor and task.has_validation and task.patience is not None:
        all_callbacks.append(EarlyStopping(monitor=task.monitor, mode="max", patience=task.patience))
    options: dict[str, Any] = {"num_sanity_val_steps": 0}
    if not task.has_validation:
        options["limit_val_batches"] = 0
    options.update(task.trainer_options(resume))
    trainer = pl.Trainer(
        max_epochs=s.epochs,
        accelerator="gpu" if uses_cuda(s.accelerator) and s.accelerator == "auto" else s.accelerator,
        devices=devices_arg(s.devices),
        strategy=s.strategy,
        num_nodes=s.num_nodes,
        precision=resolve_precision(s.precision, s.accelerator),  # type: ignore[arg-type]
        gradient_clip_val=s.grad_clip,
        callbacks=all_callbacks,
        logger=[
            CSVLogger(out, name="logs"),
            TensorBoardLogger(out, name="tensorboard", default_hp_metric=False),
        ],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        log_every_n_steps=s.log_every_n_steps,
        enable_progress_bar=s.progress,
        enable_model_summary=s.progress,
        default_root_dir=out,
        **options,
    )
    module, datamodule = task.build(trainer)
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None, weights_only=True)
        task.after_fit(trainer, module, datamodule)
    chosen = (best.best_model_path if best else "") or (str(last) if last.is_file() else "")
    return task.finish(trainer, module, chosen or None)


# ----------------------------------------------------------------------------------- LightningModule helpers
def log_loss_terms(
    module: pl.LightningModule,
    terms: Mapping[str, torch.Tensor],
    batch_size: int,
    step: int,
    advice: str,
    what: str = "the loss",
) -> None:
    """Stop on a loss that is not finite (``FloatingPointError`` naming ``what``, the epoch and step, with
    ``advice``), then log every term as ``train/<name>`` (per step and epoch; ``loss`` in the progress bar)."""
    if not torch.isfinite(terms["loss"]):
        raise FloatingPointError(
            f"{what} is {float(terms['loss'])} at epoch {module.current_epoch}, step {step}; {advice}"
        )
    for name, value in terms.items():
        module.log(
            f"train/{name}",
            value.detach(),
            on_step=True,
            on_epoch=True,
            prog_bar=name == "loss",
            batch_size=batch_size,
        )


def warn_skipped(seen: set[int], batch: Mapping[str, Any]) -> None:
    """One :class:`~frugalvision.errors.DataWarning` for the unreadable training images of ``batch`` not yet in
    ``seen`` (which is updated): an image is reported once, not once per epoch."""
    new = [(i, msg) for i, msg in batch.get("skipped", []) if i not in seen]
    if new:
        seen.update(i for i, _ in new)
        listed = "\n  ".join(msg for _, msg in new[:10])
        warnings.warn(
            f"skipped {len(new)} unreadable image(s) in training:\n  {listed}", DataWarning, stacklevel=3
        )


class HistoryCheckpoint:
    """``LightningModule`` mixin (listed before ``pl.LightningModule``): the per-epoch ``history`` rows and the
    indices of the unreadable training images already reported (``_skipped``, see :func:`warn_skipped`) travel in
    every checkpoint under ``checkpoint[checkpoint_key]``, so a resumed run keeps its history and warns once."""

    checkpoint_key: str = "frugalvision"
    history: list[dict[str, Any]]
    _skipped: set[int]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.checkpoint_key] = {
            "history": [dict(h) for h in self.history],
            "skipped": sorted(self._skipped),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self.checkpoint_key, {})
        self.history = [dict(h) for h in state.get("history", [])]
        self._skipped = set(state.get("skipped", []))


# ------------------------------------------------------------------------------------------- task registry
@dataclass(frozen=True)
class TaskSpec:
    """A registry entry: a value of ``TrainConfig.task`` and how :func:`frugalvision.train.fit` runs it.

    Attributes:
        name: the ``task`` value.
        make_run: ``make_run(config, **fit_options) -> TaskRun`` (the config is resolved).
        defaults: what the task's ``"auto"`` settings stand for (dotted keys: ``data.sampler``,
            ``data.val_split``...), applied by :func:`frugalvision.train.resolve_config`: a value, or a function
            of the configuration for one that depends on other settings; a ``loss.name`` default
            means the task trains with a loss of :mod:`frugalvision.losses`, whose name (and head normalisation)
            is then resolved and checked against the task.
        check: task-specific checks of a resolved configuration (raise ``ConfigError`` naming the key).
    """

    name: str
    make_run: Callable[..., TaskRun]
    defaults: Mapping[str, Any] = field(default_factory=dict)  # value or (TrainConfig) -> value
    check: Callable[[Any], None] | None = None


_TASKS: dict[str, TaskSpec] = {}

#: The modules that register the built-in tasks when imported (``embedding``, ``multilabel``, ``classification``,
#: ``detection``). They are imported on the first look-up of the registry -- by name, as plug-ins are -- so that the
#: torch-free parts of :mod:`frugalvision.train` (its ``config``) can be imported without them.
BUILTIN_TASK_MODULES = (
    "frugalvision.train.engine",
    "frugalvision.train.classification",
    "frugalvision.train.detection",
)


def _tasks() -> dict[str, TaskSpec]:
    for module in BUILTIN_TASK_MODULES:
        if module not in sys.modules:
            importlib.import_module(module)
    return _TASKS


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add (or replace) the task ``spec.name``."""
    _TASKS[spec.name] = spec
    return spec


def list_tasks() -> list[str]:
    """The registered task names."""
    return list(_tasks())


def task_spec(name: str) -> TaskSpec:
    """The registry entry of task ``name``; raises :class:`ConfigError` for an unknown one."""
    tasks = _tasks()
    if name not in tasks:
        raise ConfigError(f"task must be one of {' | '.join(map(repr, tasks))}; got {name!r}")
    return tasks[name]
