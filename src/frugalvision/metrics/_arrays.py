"""Input conversion shared by the numpy metrics (multi-label, classification): torch-free."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy copy of an array-like or a torch tensor (detected without importing torch); ``ValueError`` naming
    ``name`` for anything that is not real numbers."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()  # bfloat16 / float16 have no (exact) numpy counterpart
        x = t.numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array or tensor of numbers: {err}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def score_matrix(x: Any, name: str, rows: str = "row") -> np.ndarray:
    """Validated float64 ``(N, C)`` scores: 2-D, at least one of ``rows`` and one class, finite."""
    s = to_numpy(x, name)
    if s.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one {rows} and one class, got shape {s.shape}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return s
