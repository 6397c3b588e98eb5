"""Building any registered loss for a training run, and splitting its value into logged terms.

Losses differ in what their constructors need: proxy and classifier losses take ``num_classes`` and
``embedding_size``, pair/triplet losses take neither, the hyperbolic loss needs the ball's curvature to match the
head's, and language guidance wraps a base loss and needs class names and a text encoder.
:func:`build_loss` passes each exactly the arguments its signature accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from frugalvision.losses import LanguageGuidanceLoss, create_loss, get_loss_class, list_losses
from frugalvision.train.config import ConfigError

__all__ = ["build_loss", "loss_terms"]

#: Losses whose embeddings must lie in the Poincaré ball.
HYPERBOLIC_LOSSES = ("hyperbolic_pce",)


def _accepted(name: str) -> set[str]:
    # The registered classes' constructor signatures say what they take.
    params = inspect.signature(get_loss_class(name)).parameters.values()
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def canonical_loss_name(name: str) -> str:
    """Lower-cased registered name; raises :class:`ConfigError` for an unknown one."""
    key = str(name).strip().lower()
    if key not in list_losses():
        raise ConfigError(
            f"loss.name: unknown loss {name!r}; available: {', '.join(list_losses(include_aliases=False))}"
        )
    return key


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
        name: any name of :func:`frugalvision.losses.list_losses`.
        num_classes, embedding_size: passed only to losses whose constructor takes them.
        class_names: the training classes' names (language guidance embeds them).
        kwargs: the loss's own arguments (``loss.kwargs``). For ``language_guided``: ``base`` (the guided loss's
            name, default ``"proxynca++"``) and ``base_kwargs``; the other keys go to ``LanguageGuidanceLoss``.
        hyperbolic_c: the Poincaré head's curvature; given to losses that take ``c`` (and checked against an
            explicit ``c``).
        text_encoder: language model ``list[str] -> (n, d)`` for ``language_guided`` (default: the offline
            MiniLM of ``frugalvision.losses.minilm_text_encoder``).
        class_counts, num_samples: positives per class and images in the training set, for losses that take
            them (the Distribution-Balanced loss).

    Raises:
        ConfigError: unknown loss, arguments it does not take (named), a curvature that differs from the head's.
    """
    key = canonical_loss_name(name)
    args = dict(kwargs or {})
    accepted = _accepted(key)
    if key == "language_guided":
        base_name = canonical_loss_name(args.pop("base", "proxynca++"))
        if base_name == "language_guided":
            raise ConfigError("loss.kwargs.base: language guidance cannot guide itself; name another loss")
        base = build_loss(
            base_name,
            num_classes=num_classes,
            embedding_size=embedding_size,
            class_names=class_names,
            kwargs=args.pop("base_kwargs", {}) or {},
            hyperbolic_c=hyperbolic_c,
        )
        if "class_embeddings" not in args:
            if len(class_names) != num_classes:
                raise ConfigError(
                    f"language guidance needs {num_classes} class names, got {len(class_names)}"
                )
            args["class_names"] = list(class_names)
            if text_encoder is not None:
                args["language_model"] = text_encoder
        args["base_loss"] = base
        args.setdefault("num_classes", num_classes)
    else:
        for extra in ("base", "base_kwargs"):
            if extra in args:
                raise ConfigError(
                    f"loss.kwargs.{extra} is only read by the language_guided loss, not by {key!r}"
                )
    if "c" in accepted and hyperbolic_c is not None:
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

    Language guidance is split into its base loss and its language term; other losses give ``{"loss": value}``
    (a loss returning a dict with a ``"loss"`` key has its other entries logged as terms).
    """
    if isinstance(loss, LanguageGuidanceLoss):
        language = loss.language_term(embeddings, labels)
        base = loss.base_loss(embeddings, labels) if loss.base_loss is not None else embeddings.sum() * 0.0
        return {
            "loss": base + loss.weight * language,
            "loss/base": base.detach(),
            "loss/language": language.detach(),
        }
    out = loss(embeddings, labels)
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError(f"{type(loss).__name__} returned a dict without a 'loss' entry: {sorted(out)}")
        terms = {"loss": out["loss"]}
        terms.update(
            {k if k.startswith("loss/") else f"loss/{k}": v.detach() for k, v in out.items() if k != "loss"}
        )
        return terms
    return {"loss": out}
