"""A 2-D layout of embedding vectors for the explorer's map: UMAP when ``umap-learn`` is installed, else PCA.

PCA (exact, float64): with the mean ``mu`` and covariance ``C = (X - mu)^T (X - mu) / (N - 1)`` (``D x D``,
accumulated over blocks of rows, so memory stays ``O(D^2)`` whatever ``N``), the layout is ``(X - mu) V`` where
``V (D, 2)`` holds the eigenvectors of ``C`` with the two largest eigenvalues; each column's sign is fixed so its
largest-magnitude entry is positive (deterministic). UMAP (McInnes, Healy & Melville, "UMAP: Uniform Manifold
Approximation and Projection for Dimension Reduction", 2018, https://arxiv.org/abs/1802.03426) keeps local
neighbourhoods better (clusters show as islands) but takes minutes at 100,000 points on two cores, hence the
cache (:mod:`frugalvision.explore.collection`).

Both are scaled into ``[-1, 1]^2`` (one scale for both axes, so distances keep their ratio).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import numpy as np

from frugalvision._checks import check_choice

__all__ = ["LAYOUT_METHODS", "LayoutMethod", "compute_layout", "resolve_method"]

LayoutMethod = Literal["auto", "umap", "pca"]
LAYOUT_METHODS: tuple[str, ...] = ("auto", "umap", "pca")
_BLOCK = 1 << 14  # rows per block of the covariance sum


def resolve_method(method: str) -> str:
    """``"auto"`` -> ``"umap"`` when ``umap-learn`` is importable, else ``"pca"``; ``"umap"`` without it raises."""
    check_choice(method, LAYOUT_METHODS, "layout")
    has_umap = importlib.util.find_spec("umap") is not None
    if method == "umap" and not has_umap:
        raise ValueError(
            "layout 'umap' needs umap-learn: pip install 'frugalvision[explore]' (or use --layout pca)"
        )
    if method == "auto":
        return "umap" if has_umap else "pca"
    return method


def _pca(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    mean = np.zeros(d)
    for s in range(0, n, _BLOCK):
        mean += x[s : s + _BLOCK].sum(0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d))
    for s in range(0, n, _BLOCK):
        c = x[s : s + _BLOCK].astype(np.float64) - mean
        cov += c.T @ c
    cov /= max(n - 1, 1)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    top = vecs[:, ::-1][:, :2]
    if top.shape[1] < 2:  # 1-D vectors: a flat second axis
        top = np.concatenate([top, np.zeros((d, 2 - top.shape[1]))], axis=1)
    signs = np.sign(top[np.abs(top).argmax(0), np.arange(2)])
    top = top * np.where(signs == 0, 1.0, signs)
    out = np.empty((n, 2))
    for s in range(0, n, _BLOCK):
        out[s : s + _BLOCK] = (x[s : s + _BLOCK].astype(np.float64) - mean) @ top
    return out


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    neighbours = max(2, min(15, x.shape[0] - 1))
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=neighbours,
        random_state=seed,
        init="spectral" if x.shape[0] > 3 else "random",
    )
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def compute_layout(vectors: np.ndarray, method: str = "auto", *, seed: int = 0) -> tuple[np.ndarray, str]:
    """The ``(N, 2)`` float32 map positions of ``vectors (N, D)`` in ``[-1, 1]^2`` and the method used.

    Raises:
        ValueError: not a 2-D array with at least one row, non-finite values, an unknown ``method``, or
            ``"umap"`` without ``umap-learn``.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty 2-D array (N, D), got shape {x.shape}")
    used = resolve_method(method)
    if used == "umap" and x.shape[0] < 4:
        used = "pca"  # UMAP's spectral init needs a few points; a handful of points are laid out by PCA
    xy = _umap(x, seed) if used == "umap" else _pca(x)
    xy -= (xy.max(0) + xy.min(0)) / 2
    span = float(np.abs(xy).max())
    if span > 0:
        xy /= span
    return xy.astype(np.float32), used
