"""The distillation run's settings: :class:`DistillConfig` (flat keys, checked on construction)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from frugalvision._config import ConfigError, Settings
from frugalvision._defaults import DEFAULT_MODEL
from frugalvision._fields import MAX_INPUT_SIDE

__all__ = ["DEFAULT_STUDENT", "DEFAULT_TEACHER", "DistillConfig"]

DEFAULT_TEACHER = DEFAULT_MODEL
DEFAULT_STUDENT = "mobilenetv3_small_100"


@dataclass(frozen=True)
class DistillConfig(Settings):
    """A distillation run (flat keys; the CLI flags and ``config.yaml`` use the same names). Built, copied
    (``replace``), saved and read back (``save_yaml`` / ``from_yaml``) by the typed loader all run configurations
    share (:class:`frugalvision._config.Settings`); the ranges are checked on construction.

    Data: ``data`` (a class-per-folder tree, a manifest, or a flat folder of unlabeled photos), ``val_split``
    (``"images"``: ``val_fraction`` of the images held out, per class when labelled; ``"classes"``: that share of
    the classes held out with all their images -- the student then meets them only at evaluation; ``"none"``),
    ``val_data`` (a separate held-out set; wins over ``val_split``).

    Teacher: ``teacher`` (model name, bundle folder or embedding store), ``teacher_weights`` (a local weights file
    for a model name), ``teacher_pretrained``, ``teacher_input_size`` (override its preprocessing resolution),
    ``teacher_cache`` (where its embeddings are cached; default ``<out>/teacher_cache``).

    Student: ``student`` (timm name), ``student_pretrained`` (default False: from scratch, offline),
    ``student_weights``, ``input_size`` (student resolution, default the model's), ``pooling`` (``"auto"``: the
    model's own pre-logits), ``drop_path_rate`` (timm's stochastic depth). The head maps to the
    teacher's dimension and L2-normalises.

    Loss (:class:`~frugalvision.losses.DistillationLoss`): ``temperature``, ``learnable_temperature``,
    ``mse_weight``, ``contrastive_weight``, ``symmetric``.

    Optimisation: AdamW (``lr``, ``weight_decay``; none on biases, norms and the temperature), linear warm-up over
    ``warmup_epochs`` then cosine decay per step, ``grad_clip``; ``head_only_epochs``: train only the head (the
    backbone frozen, its BatchNorm statistics too) for this many epochs first -- linear probing then fine-tuning
    (LP-FT, Kumar et al., ICLR 2022), which keeps a *pretrained* student's features from being distorted while its
    new head is still random; ``recipe`` = the augmentation preset of
    :mod:`frugalvision.train.recipes` for the student's images (``"light"`` by default; ``"none"``: no
    augmentation). ``eval_every``: epochs between held-out evaluations (the last epoch is always evaluated).
    """

    _what: ClassVar[str] = "distillation setting"
    _aliases: ClassVar[Mapping[str, str]] = {
        "learning_rate": "lr",
        "wd": "weight_decay",
        "max_epochs": "epochs",
        "model": "student",
        "path": "data",
        "workers": "num_workers",
        "tau": "temperature",
    }

    data: str | None = None
    out: str = "runs/distill"
    teacher: str = DEFAULT_TEACHER
    teacher_weights: str | None = None
    teacher_pretrained: bool = True
    teacher_input_size: int | None = None
    teacher_cache: str | None = None
    student: str = DEFAULT_STUDENT
    student_pretrained: bool = False
    student_weights: str | None = None
    input_size: int | None = None
    pooling: Literal["auto", "native", "avg", "gem", "max"] = "auto"
    drop_path_rate: float = 0.0
    temperature: float = 0.07
    learnable_temperature: bool = False
    mse_weight: float = 1.0
    contrastive_weight: float = 1.0
    symmetric: bool = True
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    head_only_epochs: int = 0
    grad_clip: float | None = 1.0
    recipe: Literal["none", "light", "medium", "strong"] = "light"
    val_split: Literal["images", "classes", "none"] = "images"
    val_fraction: float = 0.2
    val_data: str | None = None
    eval_every: int = 1
    eval_batch_size: int = 64
    num_workers: int | None = None
    on_corrupt: Literal["skip", "fail"] = "skip"
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}"),
            (self.mse_weight >= 0, "mse_weight", f"must be >= 0, got {self.mse_weight}"),
            (
                self.contrastive_weight >= 0,
                "contrastive_weight",
                f"must be >= 0, got {self.contrastive_weight}",
            ),
            (
                self.mse_weight > 0 or self.contrastive_weight > 0,
                "mse_weight",
                "and contrastive_weight are both 0: nothing to learn",
            ),
            (0 <= self.drop_path_rate < 1, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}"),
            (self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}"),
            (
                self.batch_size >= 2,
                "batch_size",
                f"must be >= 2 (InfoNCE needs negatives), got {self.batch_size}",
            ),
            (self.lr > 0, "lr", f"must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}"),
            (
                0 <= self.head_only_epochs < self.epochs,
                "head_only_epochs",
                f"must be in [0, epochs={self.epochs}), got {self.head_only_epochs}",
            ),
            (
                self.head_only_epochs == 0 or "ddp" not in self.strategy,
                "head_only_epochs",
                "cannot be used with a DDP strategy (DDP fixes the trained parameters at the start); set it to 0",
            ),
            (
                self.grad_clip is None or self.grad_clip > 0,
                "grad_clip",
                f"must be > 0 or null, got {self.grad_clip}",
            ),
            (0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1), got {self.val_fraction}"),
            (self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}"),
            (self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}"),
            (
                self.num_workers is None or self.num_workers >= 0,
                "num_workers",
                f"must be >= 0, got {self.num_workers}",
            ),
            (
                self.input_size is None or 8 <= self.input_size <= MAX_INPUT_SIDE,
                "input_size",
                f"must be in [8, {MAX_INPUT_SIDE}] pixels, got {self.input_size}",
            ),
            (
                self.teacher_input_size is None or 8 <= self.teacher_input_size <= MAX_INPUT_SIDE,
                "teacher_input_size",
                f"must be in [8, {MAX_INPUT_SIDE}] pixels, got {self.teacher_input_size}",
            ),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{key} {message}")
