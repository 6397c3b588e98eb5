"""Small input-validation helpers shared by the public functions.

They raise ``ValueError`` / ``TypeError`` whose message says what was expected, what arrived and, where it
helps, how to fix it. Never use ``assert`` for user input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor, else raise a ``TypeError`` naming the argument."""
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
    """Raise if ``x`` holds NaN or infinite values."""
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
