"""Training configuration: frozen dataclasses, read from YAML plus ``key=value`` overrides.

Precedence, lowest first: the defaults below < the recipe's presets (:mod:`frugalvision.train.recipes`) < the YAML
file < the overrides (the CLI's ``--set key=value`` and its flags). Keys are dotted (``optim.lr``,
``loss.kwargs.margin``); an unknown key or a value of the wrong type raises :class:`ConfigError` naming the key.
Every run writes its resolved configuration to ``<out>/config.yaml``::

    cfg = load_config("train.yaml", ["optim.lr=3e-4", "model.freeze_backbone=true"])
    cfg.optim.lr, cfg.to_dict()["model"]["pooling"]
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from frugalvision.errors import FrugalVisionError

__all__ = [
    "FROZEN_MULTILABEL_PRESET",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "coerce_value",
    "load_config",
    "parse_override",
]

DEFAULT_MODEL = "tf_efficientnet_lite0.in1k_offline"


class ConfigError(FrugalVisionError, ValueError):
    """A training configuration key is unknown or its value is invalid; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split and batched.

    ``val_split``: ``"classes"`` holds out ``val_fraction`` of the classes (class-disjoint, the deep-metric-
    learning protocol: the model is judged on classes it never saw), ``"images"`` holds out ``val_fraction`` of
    the images (of each class, for single-label data), ``"none"`` skips validation; ``"auto"`` is ``"classes"``
    for the embedding task and ``"images"`` for the multi-label task; ``val_data`` (a data set path) wins over all.

    ``sampler``: how training batches are drawn. ``"m_per_class"`` (the embedding task's, and its ``"auto"``):
    ``batch_size // m_per_class`` classes with ``m_per_class`` images each (per device); ``"shuffle"`` (the
    multi-label task's ``"auto"``): every image once per epoch in random order; ``"class_aware"`` (multi-label):
    each image drawn by first choosing a class uniformly, then one of its images (Shen et al., ECCV 2016), so tail
    classes are seen as often as head classes. ``steps_per_epoch`` defaults to
    ``training images // (batch_size * devices)``. ``cache_dir`` keeps the frozen-backbone feature cache (default
    ``<out>/feature_cache``).
    """

    path: str | None = None
    format: Literal["auto", "folder", "manifest", "coco", "yolo"] = "auto"
    val_split: Literal["auto", "classes", "images", "none"] = "auto"
    val_fraction: float = 0.2
    val_data: str | None = None
    batch_size: int = 32
    m_per_class: int = 4
    sampler: Literal["auto", "m_per_class", "shuffle", "class_aware"] = "auto"
    eval_batch_size: int = 64
    num_workers: int | None = None
    on_corrupt: Literal["skip", "fail"] = "skip"
    steps_per_epoch: int | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, pooling and embedding head (see :func:`frugalvision.models.create_embedding_model`).

    ``embedding_size=None`` (default): the backbone's feature width on the frozen-backbone fast path -- the head
    starts as a rotation of the pretrained features and keeps what separates classes it never trains on (a 128-d
    head trained on frozen features lost 0.07-0.10 MAP@R on unseen Caltech classes in
    ``benchmarks/train_embedding.py``) -- and 128 when fine-tuning. For the multi-label task the head is the
    classifier: its output size is the number of classes (``embedding_size`` is not used) and it has no
    normalisation.

    ``normalization="auto"`` is ``"poincare"`` for the hyperbolic loss and ``"l2"`` otherwise.
    ``freeze_backbone`` switches to the fast path: pooled features computed once and cached, only the head and
    the loss train. ``freeze_norm`` keeps the backbone's BatchNorm statistics fixed while fine-tuning (common in
    deep metric learning, where m-per-class batches are small and unlike ImageNet's). ``drop_rate`` is dropout on
    the pooled features, ``drop_path_rate`` timm's stochastic depth.
    """

    name: str = DEFAULT_MODEL
    pretrained: bool = True
    weights: str | None = None
    pooling: Literal["native", "avg", "gem", "max"] = "native"
    gem_p: float = 3.0
    gem_learnable: bool = True
    head: Literal["linear", "mlp", "identity"] = "linear"
    embedding_size: int | None = None
    hidden_size: int | None = None
    normalization: Literal["auto", "l2", "poincare", "none"] = "auto"
    hyperbolic_c: float = 0.1
    hyperbolic_clip_r: float | None = 2.3
    input_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    freeze_backbone: bool = False
    freeze_norm: bool = True


#: The loss ``loss.name="auto"`` stands for, per task.
DEFAULT_LOSSES = {"embedding": "proxynca++", "multilabel": "asl"}

#: Defaults of the multi-label task on the frozen-backbone fast path, where a linear classifier on cached features
#: is all that trains: head learning rate ``1e-4 x 100 = 1e-2`` instead of the fine-tuning ``1e-4 x 10``. Applied
#: by :func:`load_config` under the recipe, and only when neither ``optim.lr`` nor ``optim.head_lr_multiplier`` is
#: set (so ``optim.lr=1e-3`` still means a head at 1e-2). Why (``benchmarks/train_multilabel.py``, 500-image
#: long-tailed mosaics): at 1e-3 the ASL head, which starts at each class's prior where ASL's clipped and
#: down-weighted negatives give almost no gradient, was still improving after 10 epochs (test mAP 0.70 vs 0.87 at
#: 1e-2 on caltech20); BCE also gains 2.4 points.
FROZEN_MULTILABEL_PRESET: dict[str, Any] = {"optim.head_lr_multiplier": 100.0}


@dataclass(frozen=True)
class LossConfig:
    """Any loss of :func:`frugalvision.losses.list_losses` for the run's task, with its constructor arguments.

    ``name="auto"``: ``proxynca++`` for the embedding task, ``asl`` (Asymmetric Loss) for the multi-label task.
    ``num_classes`` and ``embedding_size`` are filled in for losses that take them, and the training set's
    ``class_counts`` and ``num_samples`` for the Distribution-Balanced loss. ``language_guided`` also reads
    ``kwargs.base`` (the guided loss's name, default ``"proxynca++"``) and ``kwargs.base_kwargs``; its class names
    are the data set's.

    Multi-label only -- ``partial``: what unknown (unannotated, target -1) entries mean:
    ``"ignore"`` (left out of the loss), ``"negative"`` (taken as absent: the naive reading of partial labels) or
    ``"selective"`` (class-aware selective loss, Ben-Baruch et al. CVPR 2022: ignored for classes whose prior,
    estimated from the model's own predictions, is high; absent otherwise). ``partial_kwargs`` go to
    :class:`frugalvision.losses.PartialAnnotationLoss`.
    """

    name: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)
    partial: Literal["ignore", "negative", "selective"] = "ignore"
    partial_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolved_name(self, task: str) -> str:
        """The loss's name, with ``"auto"`` replaced by the task's default."""
        name = self.name.strip().lower()
        return DEFAULT_LOSSES.get(task, "proxynca++") if name == "auto" else name


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up then cosine decay, stepped per optimisation step.

    Learning rates: backbone ``lr``; the new head ``lr * head_lr_multiplier`` (default 10: freshly initialised
    layers learn faster than pretrained ones, the usual transfer-learning rule; 100 on the multi-label fast path,
    see :data:`FROZEN_MULTILABEL_PRESET`); the loss's own parameters via
    :func:`frugalvision.losses.loss_param_groups` with base ``lr`` (e.g. ProxyNCA++'s fast proxies at x100).
    No weight decay on biases, normalisation weights, GeM's ``p`` and loss parameters (proxies).
    """

    lr: float = 1e-4
    head_lr_multiplier: float = 10.0
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation on timm's pipeline (``timm.data.create_transform(is_training=True)``).

    ``random_crop=False`` uses the evaluation preprocessing (no augmentation at all). ``auto_augment`` is a timm
    policy string such as ``"rand-m9-n2-mstd0.5"`` (RandAugment). ``mixup``/``cutmix`` must stay 0 for metric-
    learning losses (they need hard labels). The frozen-backbone fast path ignores this section.
    """

    random_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float | None = None
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass(frozen=True)
class TrainerConfig:
    """Loop, devices and evaluation.

    ``precision="auto"`` is ``"bf16-mixed"`` on a CUDA device that supports bfloat16 and ``"32-true"`` otherwise
    (``"bf16-mixed"`` may be asked for on CPUs too). ``patience``: epochs without a better validation score (MAP@R
    for embeddings, mAP for multi-label) before stopping (``None`` disables early stopping). ``eval_k``: the K of
    Recall@K; ``eval_top_k``: the k of the multi-label top-k metrics (CF1@top-k...).
    """

    epochs: int = 10
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    patience: int | None = 5
    eval_k: tuple[int, ...] = (1, 5)
    eval_top_k: int = 3
    eval_before_training: bool = True
    log_every_n_steps: int = 10
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. ``task``: ``"embedding"`` (metric learning: an image-retrieval embedding) or
    ``"multilabel"`` (tagging: one independent yes/no per class). ``recipe`` names the augmentation/regularisation
    preset (``none``, ``light``, ``medium``, ``strong``; see :mod:`frugalvision.train.recipes`)."""

    task: Literal["embedding", "multilabel"] = "embedding"
    out: str = "runs/embedding"
    seed: int = 0
    recipe: Literal["none", "light", "medium", "strong"] = "light"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists): JSON/YAML-able, and :meth:`from_dict` reads it back."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict, filling defaults; unknown keys and bad values raise :class:`ConfigError`."""
        return _build(cls, values, "")

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with dotted-key overrides applied, e.g. ``cfg.replace(**{"optim.lr": 1e-3})``."""
        flat = flatten(self.to_dict())
        for key, value in overrides.items():
            _check_key(key)
            flat[key] = value
        return TrainConfig.from_dict(unflatten(flat))

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved configuration as YAML (atomically)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        os.replace(tmp, p)
        return p


# --------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is read as YAML (``true``, ``[1, 5]``, ``null``)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-4")
    key, _, raw = text.partition("=")
    key = key.strip()
    _check_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot read value {raw!r} ({e})") from e
    return key, value


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Resolve a configuration: defaults < recipe < ``base`` < YAML file ``path`` < ``overrides``.

    Args:
        path: optional YAML file (nested sections or dotted keys).
        overrides: ``{"optim.lr": 3e-4}`` or ``["optim.lr=3e-4", ...]``.
        base: an earlier resolved config (e.g. a run's ``config.yaml`` when resuming).

    Raises:
        ConfigError: unknown keys (with a suggestion), values of the wrong type or out of range.
    """
    user: dict[str, Any] = {}
    if base:
        user.update(flatten(base))
    if path is not None:
        user.update(flatten(read_yaml(path)))
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = [parse_override(o) for o in overrides]
    for key, value in items:
        _check_key(key)
        user[key] = value
    for key in user:
        _check_key(key)

    from frugalvision.train.recipes import RECIPES

    recipe = user.get("recipe", TrainConfig.recipe)
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(map(repr, RECIPES))}; got {recipe!r}")
    resolved = {**RECIPES[recipe], **user} if base is None else user
    if (
        base is None
        and _frozen_multilabel(resolved)
        and not {"optim.lr", "optim.head_lr_multiplier"} & set(user)
    ):
        resolved = {**FROZEN_MULTILABEL_PRESET, **resolved}
    config = TrainConfig.from_dict(unflatten(resolved))
    validate(config)
    return config


def _frozen_multilabel(flat: Mapping[str, Any]) -> bool:
    """Whether dotted ``flat`` settings describe a multi-label run on the frozen-backbone fast path."""
    frozen = coerce_value(
        flat.get("model.freeze_backbone", ModelConfig.freeze_backbone), bool, "model.freeze_backbone"
    )
    return flat.get("task", TrainConfig.task) == "multilabel" and bool(frozen)


def validate(config: TrainConfig) -> None:
    """Range checks across fields; raises :class:`ConfigError` naming the key."""
    d, m, o, a, t = config.data, config.model, config.optim, config.augment, config.trainer
    per_class = sampler_kind(config) == "m_per_class"
    checks: list[tuple[bool, str, str]] = [
        (0 < d.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}"),
        (
            d.m_per_class >= 2 or not per_class,
            "data.m_per_class",
            f"must be >= 2 (a class needs a positive pair), got {d.m_per_class}",
        ),
        (
            (d.batch_size >= 2 * d.m_per_class and d.batch_size % d.m_per_class == 0) or not per_class,
            "data.batch_size",
            f"must be a multiple of data.m_per_class ({d.m_per_class}) holding at least 2 classes, got {d.batch_size}",
        ),
        (d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}"),
        (t.eval_top_k >= 1, "trainer.eval_top_k", f"must be >= 1, got {t.eval_top_k}"),
        (d.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {d.eval_batch_size}"),
        (
            d.num_workers is None or d.num_workers >= 0,
            "data.num_workers",
            f"must be >= 0, got {d.num_workers}",
        ),
        (d.steps_per_epoch is None or d.steps_per_epoch >= 1, "data.steps_per_epoch", "must be >= 1"),
        (
            m.embedding_size is None or m.embedding_size >= 1,
            "model.embedding_size",
            f"must be >= 1 or null, got {m.embedding_size}",
        ),
        (m.gem_p > 0, "model.gem_p", f"must be > 0, got {m.gem_p}"),
        (m.hyperbolic_c > 0, "model.hyperbolic_c", f"must be > 0, got {m.hyperbolic_c}"),
        (0 <= m.drop_rate < 1, "model.drop_rate", f"must be in [0, 1), got {m.drop_rate}"),
        (0 <= m.drop_path_rate < 1, "model.drop_path_rate", f"must be in [0, 1), got {m.drop_path_rate}"),
        (
            m.input_size is None or m.input_size >= 8,
            "model.input_size",
            f"must be >= 8 pixels, got {m.input_size}",
        ),
        (o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}"),
        (o.head_lr_multiplier > 0, "optim.head_lr_multiplier", f"must be > 0, got {o.head_lr_multiplier}"),
        (o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs", f"must be >= 0, got {o.warmup_epochs}"),
        (0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}"),
        (
            o.grad_clip is None or o.grad_clip > 0,
            "optim.grad_clip",
            f"must be > 0 or null, got {o.grad_clip}",
        ),
        (0 < a.scale[0] <= a.scale[1] <= 1, "augment.scale", f"must be (min, max) in (0, 1], got {a.scale}"),
        (0 <= a.hflip <= 1 and 0 <= a.vflip <= 1, "augment.hflip", "flip probabilities must be in [0, 1]"),
        (0 <= a.re_prob <= 1, "augment.re_prob", f"must be in [0, 1], got {a.re_prob}"),
        (t.epochs >= 1, "trainer.epochs", f"must be >= 1, got {t.epochs}"),
        (
            t.patience is None or t.patience >= 1,
            "trainer.patience",
            f"must be >= 1 or null, got {t.patience}",
        ),
        (
            len(t.eval_k) > 0 and all(k >= 1 for k in t.eval_k),
            "trainer.eval_k",
            f"must be K >= 1, got {t.eval_k}",
        ),
        (t.num_nodes >= 1, "trainer.num_nodes", f"must be >= 1, got {t.num_nodes}"),
        (t.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key} {message}")
    from frugalvision.losses import list_losses, loss_task

    name = config.loss.resolved_name(config.task)
    task_losses = ", ".join(list_losses(task=config.task, include_aliases=False))
    if name not in list_losses():
        raise ConfigError(
            f"loss.name: unknown loss {config.loss.name!r}; the {config.task} task takes: {task_losses}"
        )
    if loss_task(name) != config.task:
        raise ConfigError(
            f"loss.name: {name!r} is a loss for the {loss_task(name)} task, not for task={config.task}; "
            f"the {config.task} task takes: {task_losses}"
        )
    if config.task == "embedding":
        if d.sampler not in ("auto", "m_per_class"):
            raise ConfigError(
                f"data.sampler={d.sampler!r}: metric-learning losses need several images of each class in a "
                "batch; the embedding task uses m_per_class (or auto)"
            )
        if config.loss.partial != "ignore" or config.loss.partial_kwargs:
            raise ConfigError("loss.partial / loss.partial_kwargs apply to the multilabel task only")
    else:
        if d.val_split == "classes":
            raise ConfigError(
                "data.val_split=classes holds out whole classes, which a multi-label classifier cannot predict; "
                "use images (or auto)"
            )
        if d.sampler == "m_per_class":
            raise ConfigError(
                "data.sampler=m_per_class is for the embedding task; use shuffle or class_aware"
            )
        if m.normalization not in ("auto", "none"):
            raise ConfigError(
                f"model.normalization={m.normalization!r}: a multi-label classifier outputs raw logits; use auto"
            )
    if a.mixup > 0 or a.cutmix > 0:
        raise ConfigError(
            f"augment.mixup={a.mixup} / augment.cutmix={a.cutmix}: Mixup and CutMix blend labels into soft "
            "targets, but metric-learning losses compare samples through hard class labels, and the multi-label "
            "losses here take hard (possibly unknown) targets; set both to 0"
        )


def sampler_kind(config: TrainConfig) -> str:
    """The training batch sampler, with ``"auto"`` resolved: m-per-class for embeddings, shuffle for multi-label."""
    if config.data.sampler != "auto":
        return config.data.sampler
    return "m_per_class" if config.task == "embedding" else "shuffle"


def val_split_kind(config: TrainConfig) -> str:
    """The validation split, with ``"auto"`` resolved: classes for embeddings, images for multi-label."""
    if config.data.val_split != "auto":
        return config.data.val_split
    return "classes" if config.task == "embedding" else "images"


# ------------------------------------------------------------------------------------------ dict helpers
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; the dict-valued fields (``loss.kwargs``,
    ``model.model_kwargs``) stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in _DICT_FIELDS:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`; keys below a dict field (``loss.kwargs.margin``) go into that dict."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(
                        f"{'.'.join(parts[: i + 1])} is a value, not a section; cannot set {key}"
                    )
                node[part] = child
            node = child
        last = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(last), dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = dict(value) if isinstance(value, Mapping) else value
    return out


def _sections() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: tp for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


_DICT_FIELDS = ("loss.kwargs", "loss.partial_kwargs", "model.model_kwargs")


def _all_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _sections()]
    for name, section in _sections().items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(section)]
    return keys


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"config keys must be non-empty strings, got {key!r}")
    if key in _sections() or any(key == d or key.startswith(d + ".") for d in _DICT_FIELDS):
        return
    known = _all_keys()
    if key not in known:
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, known)}")


_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "max_epochs": "epochs", "loss_name": "name"}


def _suggest(key: str, known: list[str]) -> str:
    """``"; did you mean 'optim.lr'?"``: the same leaf (or a known alias of it) in another section, else the
    closest spelling."""
    leaf = key.rsplit(".", 1)[-1]
    leaf = _ALIASES.get(leaf, leaf)
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    section = key.rsplit(".", 1)[0] if "." in key else ""
    close = [k for k in same_leaf if k.startswith(section + ".")] or same_leaf
    close = close or difflib.get_close_matches(key, known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(known)}"


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: Any, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            _check_key(f"{prefix}{key}")  # raises with a suggestion
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in values:
            continue
        tp, value, key = hints[name], values[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{key}.")
        else:
            kwargs[name] = coerce_value(value, tp, key)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (numbers written as strings are accepted)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}; got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and value:
            return value
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(coerce_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - a field type not handled above
