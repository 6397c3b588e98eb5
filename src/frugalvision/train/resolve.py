"""``load_config``: the one step from YAML and overrides to the resolved, checked :class:`TrainConfig` a run reads.

Precedence, lowest first: the defaults (:mod:`frugalvision.train.config`) < the recipe's presets
(:mod:`frugalvision.train.recipes`) < ``base`` (a run's saved ``config.yaml`` when resuming) < the YAML file < the
overrides (the CLI's ``--set key=value`` and its flags). Then every ``"auto"`` that the configuration alone decides
is replaced by its value, here and nowhere else:

==========================  ======================================================================================
``task``                    must name a registered task (:func:`frugalvision.train.list_tasks`)
``loss.name``               ``"auto"`` -> the task's default loss (``proxynca++``, ``asl``); an alias -> its
                            canonical registered name
``data.sampler``            ``"auto"`` -> the task's (``m_per_class`` for embeddings, ``shuffle`` for multi-label)
``data.val_split``          ``"auto"`` -> the task's (``classes`` for embeddings, ``images`` for multi-label)
``model.normalization``     ``"auto"`` -> the space the loss is registered with (``l2``, ``poincare``, ``none``);
                            ``none`` for the multi-label classifier
``model.embedding_size``    ``None`` -> 128 when fine-tuning an embedding (``None`` stays on the frozen-backbone
                            fast path: the backbone's width, known once the model is built)
``detection.dfl_bins``      ``"auto"`` -> 16 (distribution focal loss) with the anchor-free head, 0 with anchors
==========================  ======================================================================================

What depends on the machine rather than the configuration (``trainer.accelerator``, ``trainer.precision``,
``data.num_workers``) or on the data (``data.steps_per_epoch``) stays as written and is worked out by the run
scaffold (:mod:`frugalvision.train.run`) when it starts, so a saved ``config.yaml`` resumes on another machine as
it would have started there. Finally :func:`validate` checks the ranges. :func:`resolve_config` is the same step for
a configuration built in Python (``TrainConfig(...)``, ``cfg.replace(...)``); it returns an already resolved
configuration unchanged, so :func:`frugalvision.train.fit` never resolves or checks twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from frugalvision._config import coerce_value, merged, parse_override, read_yaml
from frugalvision._fields import MAX_INPUT_SIDE
from frugalvision.train.config import FROZEN_MULTILABEL_PRESET, ConfigError, ModelConfig, TrainConfig
from frugalvision.train.losses import head_normalization
from frugalvision.train.recipes import RECIPES, TASK_RECIPES
from frugalvision.train.run import task_spec

__all__ = ["load_config", "resolve_config", "validate"]

_RESOLVED = "_frugalvision_resolved"  # set on the instances resolve_config returns


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The resolved, checked configuration: defaults < recipe < ``base`` < YAML file ``path`` < ``overrides``.

    Args:
        path: optional YAML file (nested sections or dotted keys).
        overrides: ``{"optim.lr": 3e-4}`` or ``["optim.lr=3e-4", ...]``.
        base: an earlier resolved config (e.g. a run's ``config.yaml`` when resuming); the recipe is not applied
            again below it.
        file_values: the settings of ``path`` when the caller has already read them (``read_yaml(path)``), so the
            file is read once; errors still name ``path``.

    Raises:
        ConfigError: unknown keys (naming the file they came from, with a suggestion), values of the wrong type or
            out of range.
    """
    items = overrides.items() if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    user = merged(
        TrainConfig,
        [
            (base or {}, "the run's saved config.yaml"),
            (_file_values(path, file_values), None if path is None else str(path)),
            (dict(items), None),
        ],
    )
    recipe = user.get("recipe", TrainConfig.recipe)
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(map(repr, RECIPES))}; got {recipe!r}")
    task_presets = TASK_RECIPES.get(str(user.get("task", TrainConfig.task)), {}).get(recipe, {})
    values = {**RECIPES[recipe], **task_presets, **user} if base is None else user
    if (
        base is None
        and _frozen_multilabel(values)
        and not {"optim.lr", "optim.head_lr_multiplier"} & set(user)
    ):
        values = {**FROZEN_MULTILABEL_PRESET, **values}  # under the recipe and the user's values
    return resolve_config(TrainConfig.from_dict(values))


def _file_values(path: str | os.PathLike[str] | None, read: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The settings of the YAML file ``path`` (``{}`` without one): ``read`` if given, else read now."""
    if read is not None:
        if path is None:
            raise ValueError("file_values goes with the path of the file they were read from")
        return read
    return read_yaml(path) if path is not None else {}


def _frozen_multilabel(flat: Mapping[str, Any]) -> bool:
    """Whether dotted ``flat`` settings describe a multi-label run on the frozen-backbone fast path."""
    frozen = coerce_value(
        flat.get("model.freeze_backbone", ModelConfig.freeze_backbone), bool, "model.freeze_backbone"
    )
    return flat.get("task", TrainConfig.task) == "multilabel" and bool(frozen)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` with every configuration-decided ``"auto"`` replaced (see the module's table), checked by
    :func:`validate`; an already resolved configuration is returned as it is.

    Raises:
        ConfigError: an unknown task or loss, a loss of another task, settings that do not go together.
    """
    if getattr(config, _RESOLVED, False):
        return config
    spec = task_spec(config.task)
    m = config.model
    changes: dict[str, Any] = {
        key: value(config) if callable(value) else value
        for key, value in spec.defaults.items()
        if _unset(config, key)
    }
    if "loss.name" in spec.defaults:  # a task that trains with a loss of the registry (frugalvision.losses)
        changes["loss.name"] = _loss_name(config, spec.defaults["loss.name"])
        if changes.get("model.normalization", m.normalization) == "auto":  # from the space the loss works in
            norm = head_normalization(changes["loss.name"], config.loss.kwargs, "auto")
            changes["model.normalization"] = norm
        elif "model.normalization" not in spec.defaults:
            head_normalization(
                changes["loss.name"], config.loss.kwargs, m.normalization
            )  # refuses a bad pair
    resolved = _with(config, changes)
    validate(resolved)
    object.__setattr__(resolved, _RESOLVED, True)
    return resolved


def _unset(config: TrainConfig, key: str) -> bool:
    """Whether a task default applies to ``key``: it holds ``"auto"`` (``model.embedding_size``: ``None`` while
    fine-tuning; on the frozen-backbone fast path ``None`` means the backbone's width)."""
    section, name = key.split(".")
    value = getattr(getattr(config, section), name)
    if key == "model.embedding_size":
        return value is None and not config.model.freeze_backbone
    return bool(value == "auto")


def _with(config: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """A copy with dotted-key ``changes`` (already of the right types) applied, section by section."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    replaced = {
        name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()
    }
    return dataclasses.replace(config, **replaced)


def _loss_name(config: TrainConfig, default: str) -> str:
    """The canonical registered loss name, checked against the task."""
    from frugalvision.losses import list_losses, loss_entry, loss_task

    name = config.loss.name.strip().lower()
    task_losses = ", ".join(list_losses(task=config.task, include_aliases=False))
    if name == "auto":
        return default
    try:
        name = loss_entry(name).name
    except ValueError:
        raise ConfigError(
            f"loss.name: unknown loss {config.loss.name!r}; the {config.task} task takes: {task_losses}"
        ) from None
    if loss_task(name) != config.task:
        raise ConfigError(
            f"loss.name: {name!r} is a loss for the {loss_task(name)} task, not for task={config.task}; "
            f"the {config.task} task takes: {task_losses}"
        )
    return name


def validate(config: TrainConfig) -> None:
    """Range checks across the fields of a resolved configuration; raises :class:`ConfigError` naming the key."""
    d, m, o, a, t = config.data, config.model, config.optim, config.augment, config.trainer
    per_class = d.sampler == "m_per_class"
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
            m.input_size is None or 8 <= m.input_size <= MAX_INPUT_SIDE,
            "model.input_size",
            f"must be in [8, {MAX_INPUT_SIDE}] pixels, got {m.input_size}",
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
    check = task_spec(config.task).check
    if check is not None:
        check(config)
    if a.mixup < 0 or a.cutmix < 0:
        raise ConfigError(
            f"augment.mixup / augment.cutmix are Beta(alpha, alpha) parameters >= 0, got {a.mixup} / {a.cutmix}"
        )
    if m.head_epochs < 0 or (m.head_epochs >= t.epochs and m.head_epochs > 0 and not m.freeze_backbone):
        raise ConfigError(
            f"model.head_epochs must be in [0, trainer.epochs) (LP-FT: head-only epochs, then fine-tuning), "
            f"got {m.head_epochs} with trainer.epochs={t.epochs}"
        )
    if m.head_epochs and config.task != "classification":
        raise ConfigError("model.head_epochs (LP-FT) applies to the classification task only; set it to 0")
    if (a.mixup > 0 or a.cutmix > 0) and config.task != "classification":
        raise ConfigError(
            f"augment.mixup={a.mixup} / augment.cutmix={a.cutmix}: Mixup and CutMix blend labels into soft "
            "targets, but metric-learning losses compare samples through hard class labels, and the multi-label "
            "losses here take hard (possibly unknown) targets; set both to 0 (the classification task takes them)"
        )
