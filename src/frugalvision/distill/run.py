"""``distill``: the whole run, from a :class:`~frugalvision.distill.DistillConfig` to the student bundle."""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from frugalvision.bundle import save_bundle
from frugalvision.data import ImageDataset
from frugalvision.distill.config import DistillConfig
from frugalvision.distill.data import TargetItems, collate_targets, holdout_split
from frugalvision.distill.student import build_student, trainable_parameters
from frugalvision.distill.task import DistillTask, labelled_retrieval
from frugalvision.distill.teacher import Teacher, resolve_teacher, teacher_embeddings
from frugalvision.embeddings import default_num_workers
from frugalvision.errors import DataError, StoreError
from frugalvision.losses.distillation import DistillationLoss
from frugalvision.models.embedding_model import EmbeddingModel
from frugalvision.train.config import AugmentConfig, ConfigError
from frugalvision.train.data import LabelledDataModule
from frugalvision.train.recipes import RECIPES, train_transform
from frugalvision.train.run import RunResult, RunSettings, TaskRun, run_task, seed_everything, uses_cuda
from frugalvision.train.samplers import SeededItems

__all__ = ["DistillResult", "DistillRun", "distill"]


@dataclass
class DistillResult(RunResult[EmbeddingModel]):
    """What :func:`distill` returns (``bundle`` is written by rank 0 only).

    Attributes:
        out: the run folder.
        bundle: the student bundle (``out/model``), or None on processes other than rank 0.
        model: the trained student.
        metrics: the student on the held-out images at the end (``val/cosine``, ``val/nn_agreement``,
            ``val/recall@1``, ``val/map@r`` -- the last two when labelled).
        teacher_metrics: the teacher on the same images (``val/recall@1``, ``val/map@r``).
        history: one dict per epoch.
        teacher: the teacher's record (:meth:`Teacher.describe`).
        student_params: the student's trainable parameters.
    """

    teacher_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    teacher: dict[str, Any] = field(default_factory=dict)
    student_params: int = 0


def _open(path: str, on_corrupt: str) -> ImageDataset:
    from frugalvision.foundation import open_images  # labelled layouts, or a flat folder of unlabeled photos

    return open_images(path, on_corrupt=on_corrupt)  # type: ignore[arg-type]


def _augment(recipe: str) -> AugmentConfig:
    keys = {k.split(".", 1)[1]: v for k, v in RECIPES[recipe].items() if k.startswith("augment.")}
    return AugmentConfig(**keys)


@dataclass
class _Part:
    """Images (readable ones) with the teacher's embedding and the primary label (-1: none) of each."""

    dataset: ImageDataset
    targets: np.ndarray
    labels: np.ndarray
    source: str


def _parts(config: DistillConfig, teacher: Teacher, device: str) -> tuple[_Part, _Part | None, ImageDataset]:
    assert config.data is not None
    if not Path(config.data).expanduser().exists():
        raise DataError(f"training images not found: {config.data}")
    cache_root = Path(config.teacher_cache) if config.teacher_cache else Path(config.out) / "teacher_cache"
    common: dict[str, Any] = {
        "cache_root": cache_root,
        "batch_size": config.eval_batch_size,
        "num_workers": config.num_workers,
        "device": device,
        "progress": config.progress,
    }
    dataset = _open(config.data, config.on_corrupt)
    if config.val_data is not None:
        if not Path(config.val_data).expanduser().exists():
            raise DataError(f"held-out images (val_data) not found: {config.val_data}")
        train_idx, val_idx = np.arange(len(dataset)), np.zeros(0, dtype=np.int64)
        val_set: ImageDataset | None = _open(config.val_data, config.on_corrupt)
    else:
        train_idx, val_idx = holdout_split(dataset, config.val_split, config.val_fraction, config.seed)
        val_set = dataset.subset(val_idx) if len(val_idx) else None
    vectors, kept = teacher_embeddings(teacher, dataset, source=str(config.data), **common)
    rows = np.cumsum(kept) - 1  # data-set index -> row of `vectors` (valid where kept)
    labels = dataset.primary_labels()

    def part(indices: np.ndarray, source: str) -> _Part:
        indices = indices[kept[indices]]
        return _Part(dataset.subset(indices), vectors[rows[indices]], labels[indices], source)

    train = part(train_idx, str(config.data))
    val: _Part | None = None
    if config.val_data is not None and val_set is not None:
        vvec, vkept = teacher_embeddings(teacher, val_set, source=str(config.val_data), **common)
        keep = np.flatnonzero(vkept)
        val = _Part(val_set.subset(keep), vvec, val_set.primary_labels()[keep], str(config.val_data))
        if vvec.shape[1] != vectors.shape[1]:  # pragma: no cover - one teacher gives one width
            raise StoreError(
                f"teacher embeddings of {config.val_data} have another width than those of {config.data}"
            )
    elif len(val_idx):
        val = part(val_idx, f"{config.data} (held out)")
    return train, val, dataset


class DistillRun(TaskRun):
    """Distillation as a :class:`~frugalvision.train.run.TaskRun`: the teacher's cached embeddings of the clean
    images, a student, :class:`~frugalvision.losses.DistillationLoss`, and the student bundle with its report."""

    config: DistillConfig
    last_on_train_epoch_end = True  # validation runs only every eval_every epochs

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.settings = RunSettings.of(config, out=Path(config.out), what="distillation run")

    def prepare(self, resume: bool) -> None:
        config = self.config
        device = "cuda" if uses_cuda(config.accelerator) else "cpu"
        self.teacher = resolve_teacher(
            config
        )  # a randomly initialised teacher (tests) is the same in every run
        self.train, self.val, self.dataset = _parts(config, self.teacher, device)
        if len(self.train.targets) < 2:
            raise DataError(
                f"{config.data}: {len(self.train.targets)} readable training image(s); distillation needs at least 2"
            )
        seed_everything(config.seed)
        self.model = build_student(config, int(self.train.targets.shape[1]))
        self.loss = DistillationLoss(
            config.temperature,
            learnable_temperature=config.learnable_temperature,
            mse_weight=config.mse_weight,
            contrastive_weight=config.contrastive_weight,
            symmetric=config.symmetric,
        )
        val = self.val
        self.teacher_metrics = (
            labelled_retrieval(torch.as_tensor(val.targets), val.labels, config.seed)
            if val is not None
            else {}
        )
        self.has_validation = val is not None

    def trainer_options(self, resume: bool) -> dict[str, Any]:
        return {"check_val_every_n_epoch": self.config.eval_every}

    def build(self, trainer: pl.Trainer) -> tuple[pl.LightningModule, pl.LightningDataModule]:
        config, train, val, model = self.config, self.train, self.val, self.model
        world = trainer.world_size
        batch_size = min(config.batch_size, len(train.targets) // world)
        if batch_size < 2:
            raise DataError(
                f"{len(train.targets)} training images cannot give each of {world} device(s) a batch of 2"
            )
        steps = len(train.targets) // (batch_size * world)
        trainer.log_every_n_steps = min(10, steps)  # type: ignore[attr-defined]
        workers = default_num_workers() if config.num_workers is None else config.num_workers
        augment = train_transform(model.data_config, _augment(config.recipe))
        train_items = SeededItems(
            TargetItems(train.dataset.with_transform(augment), train.targets), train.labels
        )
        val_items = (
            SeededItems(
                TargetItems(val.dataset.with_transform(model.transform()), val.targets),
                val.labels,
                seeded=False,
            )
            if val is not None
            else None
        )
        datamodule = LabelledDataModule(
            train_items,
            val_items,
            batch_size=batch_size,
            m_per_class=1,  # not used by the shuffle sampler
            eval_batch_size=config.eval_batch_size,
            seed=config.seed,
            num_workers=workers,
            steps_per_epoch=steps,
            sampler="shuffle",
            collate_fn=collate_targets,
        )
        task = DistillTask(
            model,
            self.loss,
            config,
            steps_per_epoch=steps,
            val_teacher=torch.as_tensor(val.targets) if val is not None else None,
            val_labels=val.labels if val is not None else None,
        )
        return task, datamodule

    def after_fit(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any) -> None:
        # the last epoch is always evaluated, also when eval_every skipped it
        assert isinstance(module, DistillTask)
        if (
            self.val is not None
            and module.history
            and not any(k.startswith("val/") for k in module.history[-1])
        ):
            module.last_eval = {}
            trainer.validate(module, datamodule=datamodule, verbose=False)
            module.history[-1].update(module.last_eval)

    def finish(self, trainer: pl.Trainer, module: pl.LightningModule, best: str | None) -> DistillResult:
        assert isinstance(module, DistillTask)
        model = module.model.cpu().eval()
        last = module.history[-1] if module.history else {}
        result = DistillResult(
            self.settings.out,
            None,
            model,
            {k: v for k, v in last.items() if k.startswith("val/")},
            self.teacher_metrics,
            list(module.history),
            self.teacher.describe(),
            trainable_parameters(model),
        )
        if trainer.is_global_zero:
            result.bundle = _save(result, self.config, self.train, self.val, self.dataset, self.loss)
        return result


def distill(
    config: DistillConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` on the images of ``config.data``; save the student bundle.

    Args:
        config: the run's settings (:class:`DistillConfig`).
        resume: continue the run in ``config.out`` from ``checkpoints/last.ckpt``.
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`DistillResult`.

    Raises:
        ConfigError: bad settings, a run already in ``out`` without ``resume``, ``resume`` without a checkpoint.
        DataError: images that cannot be read or split, a teacher store that does not cover them.
    """
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
    if config.data is None:
        raise ConfigError(
            "data is required: a folder of images, a class-per-folder tree or a manifest (CLI: --data)"
        )
    return typing.cast(DistillResult, run_task(DistillRun(config), resume=resume, callbacks=callbacks))


def _save(
    result: DistillResult,
    config: DistillConfig,
    train: _Part,
    val: _Part | None,
    dataset: ImageDataset,
    loss: DistillationLoss,
) -> Path:
    def summary(part: _Part) -> dict[str, Any]:
        return {"images": len(part.targets), "labelled": int((part.labels >= 0).sum()), "source": part.source}

    bundle = save_bundle(
        result.model,
        result.out / "model",
        task="embedding",
        classes=dataset.classes,
        loss={
            "name": "distillation",
            "kwargs": {
                "temperature": round(float(loss.temperature.detach()), 6),
                "learnable_temperature": config.learnable_temperature,
                "mse_weight": config.mse_weight,
                "contrastive_weight": config.contrastive_weight,
                "symmetric": config.symmetric,
            },
        },
        training={"distill": config.to_dict()},
        metrics={
            "student": result.metrics,
            "teacher": result.teacher_metrics,
            "epoch": result.history[-1]["epoch"] if result.history else None,
        },
        history=result.history,
        data={
            "source": str(config.data),
            "train": summary(train),
            "val": summary(val) if val is not None else None,
            "teacher": result.teacher,
        },
    )
    report = bundle / "report.md"
    teacher_params = result.teacher.get("params")
    lines = [
        "",
        "## Distillation",
        "",
        f"Teacher: `{result.teacher.get('name') or result.teacher.get('path')}` ({result.teacher.get('kind')}); "
        f"student: `{config.student}` ({result.student_params:,} trainable parameters"
        + (
            f", {teacher_params / max(1, result.student_params):.1f}x fewer than the teacher's"
            if teacher_params
            else ""
        )
        + "). Held-out images, final epoch (no epoch selection):",
        "",
        "| metric | student | teacher |",
        "|---|---|---|",
    ]
    for key in sorted(set(result.metrics) | set(result.teacher_metrics)):
        s, t = result.metrics.get(key), result.teacher_metrics.get(key)
        t_text = f"{t:.4f}" if t is not None else ("1" if key in ("val/cosine", "val/nn_agreement") else "")
        lines.append(f"| {key[4:]} | {'' if s is None else f'{s:.4f}'} | {t_text} |")
    text = report.read_text(encoding="utf-8")
    # the distillation table goes before the long settings list
    head, sep, tail = text.partition("\n## Settings")
    section = "\n".join(lines) + "\n"
    tmp = report.with_name(f".{report.name}.tmp-{os.getpid()}")
    tmp.write_text(head + section + sep + tail if sep else text + section, encoding="utf-8")
    os.replace(tmp, report)
    return bundle
