"""Building any registered loss for a training run, and splitting its value into logged terms.

What a loss needs is registered with it (:func:`frugalvision.losses.loss_entry`), never decided here by its
name: every name, alias or not, resolves to the one registry entry of its class, and

* its ``space`` says which head trains with it (:func:`head_normalization`): ``"sphere"`` -> the L2-normalised
  head, ``"poincare"`` -> the hyperbolic head (and the loss gets the head's curvature ``c``), ``"euclidean"`` ->
  no normalisation;
* its ``needs`` are handed over from the run: the training classes' names, the text model;
* a loss that ``wraps`` another gets that one built first, from ``loss.kwargs.base`` (default: the registered
  one) and ``loss.kwargs.base_kwargs``, and takes its space;
* ``num_classes``, ``embedding_size``, ``class_counts`` and ``num_samples`` go to the losses whose constructor
  takes them (proxies and classifier weights; the Distribution-Balanced loss's class statistics).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from frugalvision.losses import LOSS_NEEDS, LossEntry, create_loss, list_losses, loss_entry
from frugalvision.train.config import ConfigError

__all__ = ["NORMALIZATION_OF_SPACE", "build_loss", "head_normalization", "loss_space", "loss_terms"]

#: The head normalisation that puts embeddings in each registered space.
NORMALIZATION_OF_SPACE = {"sphere": "l2", "poincare": "poincare", "euclidean": "none"}


def _entry(name: Any, key: str = "loss.name") -> LossEntry:
    try:
        return loss_entry(str(name))
    except ValueError:
        raise ConfigError(
            f"{key}: unknown loss {name!r}; available: {', '.join(list_losses(include_aliases=False))}"
        ) from None


def _accepted(entry: LossEntry) -> set[str]:
    # The registered classes' constructor signatures say what they take.
    params = inspect.signature(entry.cls).parameters.values()
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def canonical_loss_name(name: str) -> str:
    """The canonical registered name of ``name`` (an alias, any case); raises :class:`ConfigError` for an
    unknown one."""
    return _entry(name).name


def _base(entry: LossEntry, kwargs: Mapping[str, Any]) -> tuple[LossEntry, dict[str, Any]]:
    """The entry and settings of the loss that ``entry`` wraps (``kwargs.base`` / ``kwargs.base_kwargs``)."""
    base = _entry(kwargs.get("base", entry.wraps), "loss.kwargs.base")
    if base.wraps is not None:
        raise ConfigError(
            f"loss.kwargs.base: {entry.name!r} cannot wrap {base.name!r}, which itself wraps a loss; "
            "name another loss"
        )
    base_kwargs = kwargs.get("base_kwargs") or {}
    if not isinstance(base_kwargs, Mapping):
        raise ConfigError(f"loss.kwargs.base_kwargs must be a mapping, got {type(base_kwargs).__name__}")
    return base, dict(base_kwargs)


def loss_space(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """The space (``"sphere"``, ``"poincare"``, ``"euclidean"``) the loss ``name`` with ``loss.kwargs``
    ``kwargs`` expects its inputs in: its registered space, or, for a loss that wraps another, the wrapped one's.

    Raises:
        ConfigError: unknown loss (or base loss) name.
    """
    entry = _entry(name)
    if entry.space is not None:
        return entry.space
    base, _ = _base(entry, kwargs or {})
    return loss_space(base.name)


def head_normalization(name: str, kwargs: Mapping[str, Any] | None = None, requested: str = "auto") -> str:
    """The embedding head's normalisation for training with loss ``name``: ``requested`` (``model.
    normalization``), with ``"auto"`` resolved from the loss's space (:data:`NORMALIZATION_OF_SPACE`).

    Raises:
        ConfigError: ``"none"`` for a loss in the Poincaré ball, which needs its embeddings inside the ball.
    """
    space = loss_space(name, kwargs)
    if requested == "auto":
        return NORMALIZATION_OF_SPACE[space]
    if space == "poincare" and requested == "none":
        raise ConfigError(
            f"model.normalization=none with loss {name!r}: the hyperbolic loss needs embeddings inside the "
            "Poincaré ball; use poincare (or auto)"
        )
    return requested


def build_loss(
    name: str,
    *,
    num_classes: int,
    embedding_size: int,
    class_names: Sequence[str] = (),
    kwargs: Mapping[str, Any] | None = None,
    hyperbolic_c: float | None = None,
    text_encoder: Any | None = None,
    class_counts: Sequence[int] | None = None,
    num_samples: int | None = None,
) -> nn.Module:
    """Construct loss ``name`` for ``num_classes`` training classes and ``embedding_size``-d embeddings.

    Args:
        name: any name of :func:`frugalvision.losses.list_losses` (aliases included).
        num_classes, embedding_size: passed only to losses whose constructor takes them.
        class_names: the training classes' names, for losses that need them (language guidance embeds them;
            precomputed ``kwargs["class_embeddings"]`` replace them).
        kwargs: the loss's own arguments (``loss.kwargs``). A loss that wraps another also reads ``base`` (the
            wrapped loss's name, default: the registered one, ``"proxynca++"`` for ``language_guided``) and
            ``base_kwargs``.
        hyperbolic_c: the Poincaré head's curvature; given to losses in the Poincaré ball (and checked against
            an explicit ``c``).
        text_encoder: language model ``list[str] -> (n, d)`` for losses that need one (default: the loss's own,
            e.g. the offline MiniLM of ``frugalvision.losses.minilm_text_encoder``).
        class_counts, num_samples: positives per class and images in the training set, for losses that take
            them (the Distribution-Balanced loss).

    Raises:
        ConfigError: unknown loss, arguments it does not take (named), a curvature that differs from the head's,
            too few class names.
    """
    entry = _entry(name)
    key = entry.name
    args = dict(kwargs or {})
    accepted = _accepted(entry)
    if entry.wraps is not None:
        base, base_kwargs = _base(entry, args)
        args.pop("base", None)
        args.pop("base_kwargs", None)
        args["base_loss"] = build_loss(
            base.name,
            num_classes=num_classes,
            embedding_size=embedding_size,
            class_names=class_names,
            kwargs=base_kwargs,
            hyperbolic_c=hyperbolic_c,
            text_encoder=text_encoder,
            class_counts=class_counts,
            num_samples=num_samples,
        )
    else:
        for extra in ("base", "base_kwargs"):
            if extra in args:
                wrappers = " / ".join(n for n in list_losses(include_aliases=False) if loss_entry(n).wraps)
                raise ConfigError(f"loss.kwargs.{extra} is only read by the {wrappers} loss, not by {key!r}")
    if "class_names" in entry.needs and "class_embeddings" not in args:
        if len(class_names) != num_classes:
            raise ConfigError(
                f"loss {key!r} needs the names of the {num_classes} classes, got {len(class_names)}"
            )
        args.setdefault(LOSS_NEEDS["class_names"], list(class_names))
    if "text_model" in entry.needs and text_encoder is not None:
        args.setdefault(LOSS_NEEDS["text_model"], text_encoder)
    if entry.space == "poincare" and hyperbolic_c is not None:
        if "c" in args and abs(float(args["c"]) - hyperbolic_c) > 1e-12:
            raise ConfigError(
                f"loss.kwargs.c={args['c']} differs from model.hyperbolic_c={hyperbolic_c}: the loss must measure "
                "distances in the ball the head maps into; set one value"
            )
        args["c"] = hyperbolic_c
    filled = {
        "num_classes": num_classes,
        "embedding_size": embedding_size,
        "class_counts": None if class_counts is None else list(class_counts),
        "num_samples": num_samples,
    }
    for arg, value in filled.items():
        if arg in accepted and value is not None:
            args.setdefault(arg, value)
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise ConfigError(
            f"loss.kwargs: {key!r} does not take {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted - {*filled, 'base_loss'}))}"
        )
    try:
        return create_loss(key, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss {key!r}: {e}") from e


def loss_terms(loss: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"loss": total, "loss/<term>": detached part, ...}`` for logging.

    A loss with a ``terms(embeddings, labels)`` method (language guidance: its base loss and its language term)
    gives its own split; a loss returning a dict with a ``"loss"`` key has its other entries logged as terms;
    other losses give ``{"loss": value}``.
    """
    split = getattr(loss, "terms", None)
    out = split(embeddings, labels) if callable(split) else loss(embeddings, labels)
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError(f"{type(loss).__name__} returned a dict without a 'loss' entry: {sorted(out)}")
        terms = {"loss": out["loss"]}
        terms.update(
            {k if k.startswith("loss/") else f"loss/{k}": v.detach() for k, v in out.items() if k != "loss"}
        )
        return terms
    return {"loss": out}
