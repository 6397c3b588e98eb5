"""Name -> loss registry: each loss with what it needs, ``create_loss`` and optimiser groups for its parameters.

A loss class registers itself under one canonical name and any number of aliases, together with what training
needs to know about it (timm's ``register_model`` keeps a model's pretrained config with the model the same way)::

    @register_loss("proxynca++", "proxy_nca_pp", space="sphere")    # loss(embeddings (B, D), labels (B,))
    class ProxyNCAPlusPlusLoss(nn.Module): ...

    @register_loss("hyperbolic_pce", "hyperbolic", space="poincare")  # embeddings inside the Poincaré ball
    class HyperbolicPairwiseCELoss(nn.Module): ...

    @register_loss("asl", "asymmetric", task="multilabel", space="euclidean")  # logits (B, C), targets (B, C)
    class AsymmetricLoss(nn.Module): ...

The registered traits (a :class:`LossEntry`):

* ``task`` -- ``"embedding"`` (``loss(embeddings (B, D), labels (B,))``) or ``"multilabel"``
  (``loss(logits (B, C), targets (B, C))``, targets 1 = present, 0 = absent, -1 = unknown);
* ``space`` -- where the loss expects its inputs, and so which head trains with it: ``"sphere"`` (unit vectors:
  the L2-normalised head), ``"poincare"`` (inside the Poincaré ball of curvature ``-c``: the hyperbolic head; the
  loss takes the ball's curvature as its argument ``c``) or ``"euclidean"`` (anywhere: logits, raw vectors);
* ``needs`` -- what the training run must hand over besides the loss's own settings: ``"class_names"`` (the
  training classes' names, constructor argument ``class_names``) and ``"text_model"`` (a language model
  ``list[str] -> (n, d)``, argument ``language_model``);
* ``wraps`` -- for a loss built around another one (constructor argument ``base_loss``, pml-style composition),
  the name of the loss it wraps by default; its ``space`` is then the wrapped loss's.

Every name -- canonical or alias, in any case -- resolves to the one :class:`LossEntry` of its class
(:func:`loss_entry`), so nothing outside the registry ever compares loss names. The learnable parameters of a
loss (proxies, class weights) are read from the module itself by :func:`loss_param_groups`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "LOSS_NEEDS",
    "LOSS_SPACES",
    "LOSS_TASKS",
    "LossEntry",
    "create_loss",
    "get_loss_class",
    "list_losses",
    "loss_entry",
    "loss_param_groups",
    "loss_task",
    "register_loss",
]

_LossT = TypeVar("_LossT", bound=type[nn.Module])

#: The tasks a loss can train: metric learning on embeddings, multi-label classification on logits, or object
#: detection (``loss(detector outputs (dict), targets (list of dicts))``, :mod:`frugalvision.losses.detection`).
LOSS_TASKS = ("embedding", "multilabel", "detection")
#: Where a loss expects its inputs: unit vectors, inside the Poincaré ball, or anywhere in R^D.
LOSS_SPACES = ("sphere", "poincare", "euclidean")
#: What a loss can need from the training run -> the constructor argument that receives it.
LOSS_NEEDS = {"class_names": "class_names", "text_model": "language_model"}
#: The constructor argument of the ball's curvature (``space="poincare"``) and of the wrapped loss (``wraps``).
CURVATURE_ARGUMENT = "c"
BASE_LOSS_ARGUMENT = "base_loss"


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: its class, names and what it needs (see the module docstring).

    Attributes:
        name: the canonical name (the first registered).
        aliases: the other names.
        cls: the ``nn.Module`` class.
        task: ``"embedding"``, ``"multilabel"`` or ``"detection"``.
        space: ``"sphere"``, ``"poincare"`` or ``"euclidean"``; ``None`` for a loss that ``wraps`` another and
            takes its space.
        needs: a subset of :data:`LOSS_NEEDS`, in that order.
        wraps: the default wrapped loss's name, or ``None``.
    """

    name: str
    aliases: tuple[str, ...]
    cls: type[nn.Module]
    task: str
    space: str | None
    needs: tuple[str, ...]
    wraps: str | None


_ENTRIES: dict[str, LossEntry] = {}  # every registered name (canonical and aliases) -> its entry


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or name != name.lower() or name != name.strip():
        raise ValueError(f"{what} must be non-empty lower-case strings without spaces, got {name!r}")
    return name


def _check_arguments(
    cls: type[nn.Module], name: str, space: str | None, needs: Sequence[str], wraps: str | None
) -> None:
    """The constructor must take the argument of every trait (checked once, at registration)."""
    params = inspect.signature(cls).parameters
    required = [(f"space={space!r}", CURVATURE_ARGUMENT)] if space == "poincare" else []
    required += [(f"needs {need}", LOSS_NEEDS[need]) for need in needs]
    required += [(f"wraps {wraps!r}", BASE_LOSS_ARGUMENT)] if wraps is not None else []
    for trait, argument in required:
        if argument not in params:
            raise TypeError(
                f"loss {name!r} ({cls.__name__}) is registered with {trait}, so its constructor must take the "
                f"argument {argument!r}"
            )


def register_loss(
    *names: str,
    task: str = "embedding",
    space: str | None = None,
    needs: Sequence[str] = (),
    wraps: str | None = None,
) -> Callable[[_LossT], _LossT]:
    """Class decorator registering an ``nn.Module`` loss under ``names`` (lower-case; the first is canonical).

    Args:
        names: the canonical name, then aliases.
        task: ``"embedding"`` (called as ``loss(embeddings (B, D), labels (B,))``), ``"multilabel"`` (called as
            ``loss(logits (B, C), targets (B, C))`` with targets 1 = present, 0 = absent, -1 = unknown) or
            ``"detection"`` (``loss(detector outputs, per-image target dicts)``).
        space: one of :data:`LOSS_SPACES`; default ``"sphere"`` for an embedding loss, ``"euclidean"`` (logits)
            for a multi-label one, and the wrapped loss's space for a loss that ``wraps`` another.
            ``"poincare"`` requires a constructor argument ``c`` (the ball's curvature).
        needs: any of :data:`LOSS_NEEDS`; the constructor must take the argument each one names.
        wraps: the name of the loss wrapped by default (the constructor must take ``base_loss``).

    Raises:
        ValueError: no name given, a name not lower-case, a name already taken by another class, an unknown task,
            space or need.
        TypeError: the decorated object is not an ``nn.Module`` subclass, or its constructor lacks the argument
            a trait needs.
    """
    if task not in LOSS_TASKS:
        raise ValueError(f"register_loss task must be one of {', '.join(LOSS_TASKS)}, got {task!r}")
    if not names:
        raise ValueError("register_loss needs at least one name, e.g. @register_loss('triplet')")
    for name in names:
        _check_name(name, "loss names")
    if space is not None and space not in LOSS_SPACES:
        raise ValueError(f"register_loss space must be one of {', '.join(LOSS_SPACES)}, got {space!r}")
    unknown = [n for n in needs if n not in LOSS_NEEDS]
    if isinstance(needs, str) or unknown:
        raise ValueError(f"register_loss needs must be among {', '.join(LOSS_NEEDS)}, got {needs!r}")
    if wraps is not None:
        _check_name(wraps, "register_loss wraps (the wrapped loss's name)")
    if space is None and wraps is None:
        space = "euclidean" if task == "multilabel" else "sphere"
    ordered_needs = tuple(n for n in LOSS_NEEDS if n in needs)

    def decorator(cls: _LossT) -> _LossT:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_loss decorates nn.Module subclasses, got {cls!r}")
        _check_arguments(cls, names[0], space, ordered_needs, wraps)
        for name in names:
            existing = _ENTRIES.get(name)
            if existing is not None and existing.cls.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"loss name {name!r} is already registered to {existing.cls.__module__}."
                    f"{existing.cls.__qualname__}"
                )
        entry = LossEntry(names[0], tuple(names[1:]), cls, task, space, ordered_needs, wraps)
        for name in names:
            _ENTRIES[name] = entry
        return cls

    return decorator


def list_losses(*, include_aliases: bool = True, task: str | None = None) -> list[str]:
    """Sorted names accepted by :func:`create_loss`; ``include_aliases=False`` keeps one name per loss and
    ``task`` (``"embedding"`` or ``"multilabel"``) only the losses of that task."""
    if task is not None and task not in LOSS_TASKS:
        raise ValueError(f"task must be one of {', '.join(LOSS_TASKS)}, got {task!r}")
    return sorted(
        name
        for name, entry in _ENTRIES.items()
        if (include_aliases or name == entry.name) and (task is None or entry.task == task)
    )


def loss_entry(name: str) -> LossEntry:
    """The :class:`LossEntry` registered as ``name`` (canonical or alias, case-insensitive): the one place where
    a loss name is resolved.

    Example:
        >>> loss_entry("Hyperbolic").name, loss_entry("hyperbolic").space
        ('hyperbolic_pce', 'poincare')

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown ``name``; the message lists the available names.
    """
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a str, got {type(name).__name__}")
    entry = _ENTRIES.get(name.strip().lower())
    if entry is None:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return entry


def loss_task(name: str) -> str:
    """The task (``"embedding"`` or ``"multilabel"``) the loss registered as ``name`` trains."""
    return loss_entry(name).task


def _accepted_arguments(cls: type[nn.Module]) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def get_loss_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (case-insensitive), e.g. to read its signature or docstring.

    Raises:
        ValueError: unknown ``name``; the message lists the available names.
    """
    return loss_entry(name).cls


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` (case-insensitive) with constructor arguments ``kwargs``.

    Example:
        >>> loss = create_loss("arcface", num_classes=10, embedding_size=64)

    Raises:
        ValueError: unknown ``name``; the message lists the available names.
        TypeError: ``kwargs`` do not fit the loss's constructor; the message names the loss and its arguments.
    """
    cls = get_loss_class(name)
    key = name.strip().lower()
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(_accepted_arguments(cls)) or "(none)"
        raise TypeError(
            f"bad arguments for loss {key!r} ({cls.__name__}): {err}; accepted arguments: {accepted}"
        ) from None
    return cls(**kwargs)


def loss_param_groups(loss: nn.Module, base_lr: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups for a loss's own learnable parameters (proxies, class weights).

    A loss may define ``param_groups(base_lr) -> list[dict]`` (used as is), or a float attribute
    ``lr_multiplier`` (its parameters get ``lr = base_lr * lr_multiplier``; default 1). Returns ``[]`` for a loss
    without trainable parameters, so the result can always be appended to the model's groups::

        optimizer = torch.optim.AdamW(
            [{"params": model.parameters()}, *loss_param_groups(loss, base_lr=1e-4)], lr=1e-4
        )
    """
    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be an nn.Module, got {type(loss).__name__}")
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    custom = getattr(loss, "param_groups", None)
    if callable(custom):
        return list(custom(base_lr))
    params = [p for p in loss.parameters() if p.requires_grad]
    if not params:
        return []
    multiplier = float(getattr(loss, "lr_multiplier", 1.0))
    if not multiplier > 0:
        raise ValueError(f"{type(loss).__name__}.lr_multiplier must be > 0, got {multiplier}")
    return [{"params": params, "lr": base_lr * multiplier, "name": f"loss/{type(loss).__name__}"}]
