"""Name -> loss-class registry, ``create_loss`` and optimiser parameter groups for losses.

A loss class registers itself under one canonical name and any number of aliases, and says which task it
trains::

    @register_loss("proxynca++", "proxy_nca_pp")                 # task="embedding": loss(embeddings, labels)
    class ProxyNCAPlusPlusLoss(nn.Module): ...

    @register_loss("asl", "asymmetric", task="multilabel")      # loss(logits (B, C), targets (B, C) in {1, 0, -1})
    class AsymmetricLoss(nn.Module): ...

The first name is the canonical one; ``list_losses(include_aliases=False)`` returns only those, and
``list_losses(task="multilabel")`` only the losses of one task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "LOSS_TASKS",
    "create_loss",
    "get_loss_class",
    "list_losses",
    "loss_param_groups",
    "loss_task",
    "register_loss",
]

_LossT = TypeVar("_LossT", bound=type[nn.Module])

#: The tasks a loss can train: metric learning on embeddings, or multi-label classification on logits.
LOSS_TASKS = ("embedding", "multilabel")

_REGISTRY: dict[str, type[nn.Module]] = {}
_CANONICAL: dict[str, str] = {}  # every registered name -> the canonical (first) name of its class
_TASK: dict[str, str] = {}  # every registered name -> the task of its class


def register_loss(*names: str, task: str = "embedding") -> Callable[[_LossT], _LossT]:
    """Class decorator registering an ``nn.Module`` loss under ``names`` (lower-case; the first is canonical).

    ``task``: ``"embedding"`` (called as ``loss(embeddings (B, D), labels (B,))``) or ``"multilabel"`` (called as
    ``loss(logits (B, C), targets (B, C))`` with targets 1 = present, 0 = absent, -1 = unknown).

    Raises:
        ValueError: no name given, a name not lower-case, or a name already taken by another class.
        TypeError: the decorated object is not an ``nn.Module`` subclass.
    """
    if task not in LOSS_TASKS:
        raise ValueError(f"register_loss task must be one of {', '.join(LOSS_TASKS)}, got {task!r}")
    if not names:
        raise ValueError("register_loss needs at least one name, e.g. @register_loss('triplet')")
    for name in names:
        if not isinstance(name, str) or not name or name != name.lower() or name != name.strip():
            raise ValueError(f"loss names must be non-empty lower-case strings without spaces, got {name!r}")

    def decorator(cls: _LossT) -> _LossT:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_loss decorates nn.Module subclasses, got {cls!r}")
        for name in names:
            existing = _REGISTRY.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"loss name {name!r} is already registered to {existing.__module__}.{existing.__qualname__}"
                )
        for name in names:
            _REGISTRY[name] = cls
            _CANONICAL[name] = names[0]
            _TASK[name] = task
        return cls

    return decorator


def list_losses(*, include_aliases: bool = True, task: str | None = None) -> list[str]:
    """Sorted names accepted by :func:`create_loss`; ``include_aliases=False`` keeps one name per loss and
    ``task`` (``"embedding"`` or ``"multilabel"``) only the losses of that task."""
    if task is not None and task not in LOSS_TASKS:
        raise ValueError(f"task must be one of {', '.join(LOSS_TASKS)}, got {task!r}")
    names = _REGISTRY if include_aliases else [n for n, canonical in _CANONICAL.items() if n == canonical]
    return sorted(n for n in names if task is None or _TASK[n] == task)


def loss_task(name: str) -> str:
    """The task (``"embedding"`` or ``"multilabel"``) the loss registered as ``name`` trains."""
    get_loss_class(name)  # raises for unknown names
    return _TASK[name.strip().lower()]


def _accepted_arguments(cls: type[nn.Module]) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def get_loss_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (case-insensitive), e.g. to read its signature or docstring.

    Raises:
        ValueError: unknown ``name``; the message lists the available names.
    """
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a str, got {type(name).__name__}")
    cls = _REGISTRY.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return cls


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
