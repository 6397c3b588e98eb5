"""Small input-validation helpers shared by the public functions.

They raise ``ValueError`` / ``TypeError`` whose message says what was expected, what arrived and, where it
helps, how to fix it. Never use ``assert`` for user input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: the index and the runtime use these helpers without torch
    import torch


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor, else raise a ``TypeError`` naming the argument."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_ndim(x: torch.Tensor, ndim: int, name: str, shape_hint: str) -> None:
    """Raise if ``x`` does not have ``ndim`` dimensions, e.g. ``labels must be 1-D (B,), got (4, 1)``."""
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_hint}, got shape {tuple(x.shape)}")


def check_same_length(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise if the first dimensions of ``a`` and ``b`` differ."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]}"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or infinite values.

    Skipped while ``torch.export`` traces a model (a data-dependent check cannot be exported).
    """
    import torch

    if torch.compiler.is_exporting():
        return
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); check the model's outputs")


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """Raise if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_positive(value: float, name: str, *, strict: bool = True) -> None:
    """Raise if ``value`` is not (strictly) positive."""
    if (strict and not value > 0) or (not strict and not value >= 0):
        raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value}")


def check_class_labels(
    labels: object, batch_size: int, name: str = "labels", num_classes: int | None = None
) -> torch.Tensor:
    """Raise unless ``labels`` is an integer ``(batch_size,)`` tensor with values in ``[0, num_classes)``.

    With ``num_classes=None`` only negative values are rejected.
    """
    import torch

    labels = check_tensor(labels, name)
    check_ndim(labels, 1, name, "(B,)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (e.g. torch.int64), got {labels.dtype}")
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have one entry per row of the embeddings ({batch_size}), got {labels.shape[0]}"
        )
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(f"{name} must lie in {bound}, got values from {low} to {high}")
    return labels


def check_embedding_batch(
    embeddings: object, name: str = "embeddings", dim: int | None = None
) -> torch.Tensor:
    """Raise unless ``embeddings`` is a finite floating ``(B, D)`` tensor (``D == dim`` when given)."""
    embeddings = check_tensor(embeddings, name)
    check_ndim(embeddings, 2, name, "(B, D)")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    if dim is not None and embeddings.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} features per row, got shape {tuple(embeddings.shape)}")
    check_finite_fast(embeddings, name)  # one sum first: the full scan cost ~10% of a small loss's step
    return embeddings


def check_finite_fast(x: torch.Tensor, name: str) -> None:
    """:func:`check_finite` at the cost of one sum: a NaN or infinity anywhere makes the sum non-finite.

    Only when the sum is not finite (a bad value, or finite values overflowing it) does it run the exact check,
    which raises with the count of bad values or passes.
    """
    import torch

    if torch.compiler.is_exporting():
        return
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(x, name)
