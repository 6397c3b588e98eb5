"""Transferability of pre-trained features to a labelled data set, before any fine-tuning: LogME.

LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021,
https://arxiv.org/abs/2102.11005) scores a model by how well a Bayesian linear model on its frozen features
explains the labels: the logarithm of the **maximum evidence** (marginal likelihood) per sample.

For features ``F (n, D)`` and one target vector ``y (n,)``, with prior ``w ~ N(0, α⁻¹ I)`` and noise
``y | F, w ~ N(F w, β⁻¹ I)``, the log evidence is (paper, eq. 2)::

    L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖F m − y‖² − α/2 mᵀm − 1/2 log |A|
    A = α I + β FᵀF,    m = β A⁻¹ Fᵀ y

It is maximised by MacKay's fixed-point iteration (paper, Algorithm 1), from ``α = β = 1``::

    γ = Σᵢ β σᵢ / (α + β σᵢ),    α ← γ / mᵀm,    β ← (n − γ) / ‖F m − y‖²

where ``σᵢ`` are the eigenvalues of ``FᵀF`` (the squared singular values of ``F``). Every quantity of a step
depends only on ``t = α/β``; the iteration moves ``t`` to the nearest fixed point in the direction of its first
step (in all our checks), but can crawl
(over 50,000 steps for some classes of real 1280-d features here). We therefore locate that same fixed point by
bracketing and bisection on ``log t`` (:func:`_solve_fixed_point`), to ``1e-13`` relative. For classification with
``K`` classes the targets are the one-vs-rest indicator vectors and LogME is the mean over classes of
``L(α*, β*) / n``. Higher is better; values are comparable between models on the same data set.

When ``n ≤ D`` the features may interpolate a target exactly; the iteration then drives ``α/β → 0`` and the
maximum lies on the noise-free boundary ``β → ∞``. It is finite when ``F Fᵀ`` is non-singular and is then
computed in closed form (:func:`_noise_free_limit`); when ``F Fᵀ`` is singular (e.g. duplicated rows) it is
unbounded and :func:`logme` refuses. Such scores depend on the small singular values of ``F``: with fewer
images than feature dimensions, compare models with care.

Computation: one eigendecomposition of the smaller Gram matrix (``FᵀF`` if ``n ≥ D``, else ``F Fᵀ``; the same
spectrum as the SVD of ``F``), ``O(n D min(n, D) + min(n, D)³)`` once for all classes. In that basis each
quantity of a step is a sum over the spectrum, so one evaluation costs ``O(min(n, D))`` per class (about 100 of
them per class) and all classes are solved together. The features are read in row chunks and never
copied whole in float64 when ``n ≥ D``: memory is ``O(D² + D K)`` beyond the input.

Numpy only (no torch), float64 throughout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["logme"]

_CHUNK_ROWS = 4096


def _as_features(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, detected without importing torch
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {arr.shape}")
    if arr.dtype == object or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"features must hold real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"features must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"features must have at least 2 rows and 1 column, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"features must be finite; the first non-finite value is at row {bad[0]}, column {bad[1]}"
        )
    return arr


def _as_class_ids(x: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``labels (n,)`` (integers, booleans or strings) -> (class ids ``0..K-1`` (n,), the sorted class values (K,))."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"labels has {arr.shape[0]} entries but features has {n} rows; they must match")
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(
            f"labels must be class ids (integers or strings), got dtype {arr.dtype}; LogME here scores "
            "classification labels"
        )
    classes, ids = np.unique(arr, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"LogME needs at least 2 classes in labels, got {len(classes)}")
    return ids.reshape(-1), classes


def _spectrum(features: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spectrum of ``F`` and the class targets in its basis.

    Returns ``sigma (r,)`` (eigenvalues of the Gram matrix, numerical zeros set to 0), ``x2 (r, K)``
    (squared coordinates of each one-vs-rest target ``y_k`` on the left singular vectors of ``F``) and
    ``out (K,)`` (``‖y_k‖²`` minus what those coordinates hold: the part of ``y_k`` outside the column space of
    ``F``), with ``r = min(n, D)``.
    """
    n, d = features.shape
    counts = np.bincount(ids, minlength=k).astype(np.float64)  # ‖y_k‖² of a 0/1 target
    if n >= d:
        # FᵀF = V diag(σ) Vᵀ; Fᵀ y_k = V diag(√σ) x_k, so x_k = diag(σ)^-½ Vᵀ Fᵀ y_k on σ > 0.
        gram = np.zeros((d, d))
        fty = np.zeros((d, k))
        for start in range(0, n, _CHUNK_ROWS):
            block = features[start : start + _CHUNK_ROWS].astype(np.float64)
            gram += block.T @ block
            onehot = ids[start : start + _CHUNK_ROWS, None] == np.arange(k)
            fty += block.T @ onehot
        sigma, vecs = np.linalg.eigh(gram)
        sigma = _zero_numerical_zeros(sigma, n, d)
        z = vecs.T @ fty
        positive = sigma > 0
        x2 = np.zeros_like(z)
        x2[positive] = z[positive] ** 2 / sigma[positive, None]
        out = np.maximum(counts - x2.sum(axis=0), 0.0)
    else:
        # F Fᵀ = U diag(σ) Uᵀ with U a full basis of R^n: x_k = Uᵀ y_k exactly; components on σ = 0 act as
        # the outside of the column space (their residual term below is x² whatever t).
        f64 = features.astype(np.float64)
        sigma, vecs = np.linalg.eigh(f64 @ f64.T)
        sigma = _zero_numerical_zeros(sigma, n, d)
        onehot = ids[:, None] == np.arange(k)
        x2 = (vecs.T @ onehot) ** 2
        out = np.zeros(k)
    return sigma, x2, out


def _zero_numerical_zeros(sigma: np.ndarray, n: int, d: int) -> np.ndarray:
    """Eigenvalues below the Gram matrix's rounding level (``σ_max · max(n, D) · eps``) are exactly 0."""
    sigma = np.asarray(sigma, dtype=np.float64).copy()
    sigma[sigma <= sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps] = 0.0
    return sigma


def _terms(t: np.ndarray, sigma: np.ndarray, x2: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, ...]:
    """At ``t = α/β`` (K,): ``γ``, ``mᵀm`` and ``‖F m − y‖²`` for each class, from the spectrum.

    With ``m = β A⁻¹ Fᵀ y = V diag(√σ / (t + σ)) x``::

        γ = Σ σ / (t + σ),   mᵀm = Σ σ x² / (t + σ)²,   ‖F m − y‖² = out + Σ x² (t / (t + σ))²
    """
    s = sigma[:, None]
    gamma = (s / (t + s)).sum(axis=0)
    mm = (s * x2 / (t + s) ** 2).sum(axis=0)
    res = out + (x2 * (t / (t + s)) ** 2).sum(axis=0)
    return gamma, mm, res


def _update_gap(u: np.ndarray, sigma: np.ndarray, x2: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
    """``log(t'/t)`` at ``t = e^u`` (K,), where ``t' = α'/β'`` is what one step of Algorithm 1 makes of ``t``.

    ``α' = γ / mᵀm`` and ``β' = (n − γ) / ‖F m − y‖²``; a root is a fixed point of the iteration. ``+inf``
    when ``mᵀm = 0`` (the target is orthogonal to every feature: the step sends ``α`` to infinity).
    """
    gamma, mm, res = _terms(np.exp(u), sigma, x2, out)
    with np.errstate(divide="ignore"):
        return np.log(gamma) - np.log(mm) - np.log(n - gamma) + np.log(res) - u


def _solve_fixed_point(
    sigma: np.ndarray, x2: np.ndarray, out: np.ndarray, n: int, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed point ``t* = α*/β*`` that Algorithm 1 reaches from ``α = β = 1``, for every class at once.

    The plain iteration moves ``t`` monotonically towards the nearest fixed point in the direction of its first
    step, but may crawl (thousands of steps on real features, whose official implementation therefore stops after
    11). Here that fixed point is located directly: walk ``u = log t`` from 0 in the direction of the first step,
    by factors of 2, until the step's direction flips (a bracket), then bisect to ``|Δu| < 1e-13``. A walk that
    reaches ``t ≥ σ_max / eps`` is the noise-only limit ``α → ∞`` (every ``σ/t`` below rounding); one that reaches
    ``t ≤ 1e-10 σ_min`` with ``F Fᵀ`` non-singular is the noise-free limit ``β → ∞`` (returned as ``noise_free``).

    Returns:
        ``t (K,)`` and ``noise_free (K,)`` (bool).

    Raises:
        ValueError: the walk reaches ``t ≤ σ_max eps`` with ``F Fᵀ`` singular: the evidence is unbounded.
    """
    k = x2.shape[1]
    eps = np.finfo(np.float64).eps
    positive = sigma[sigma > 0]
    full_rank = positive.size == n
    u_hi = math.log(positive.max() / eps)
    u_lo = math.log(positive.min() * 1e-10) if full_rank else math.log(positive.max() * eps)

    u = np.full(k, min(max(0.0, u_lo), u_hi))  # α = β = 1, unless that is already past a limit
    direction = np.sign(_update_gap(u, sigma, x2, out, n))
    # After the walk a bracket [lower, upper] holds a sign change of the gap: its sign at ``lower`` is ``direction``.
    lower, upper = u.copy(), u.copy()
    bracketed = np.zeros(k, dtype=bool)
    walking = direction != 0
    while walking.any():
        idx = np.flatnonzero(walking)
        nxt = np.clip(u[idx] + direction[idx] * math.log(2.0), u_lo, u_hi)
        flipped = np.sign(_update_gap(nxt, sigma, x2[:, idx], out[idx], n)) != direction[idx]
        stuck = ~flipped & (nxt == u[idx])  # at a limit and still pushing past it
        lower[idx], upper[idx], u[idx] = u[idx], nxt, nxt
        bracketed[idx[flipped]] = True
        walking[idx[flipped | stuck]] = False

    noise_free = ~bracketed & (direction < 0) & (u <= u_lo)
    if noise_free.any() and not full_rank:
        bad = classes[np.flatnonzero(noise_free)[0]].item()
        raise ValueError(
            f"LogME has no maximum for class {bad!r}: its labels are an exact linear function of the features while "
            "F Fᵀ is singular, so the evidence grows without bound as the noise vanishes. This happens with "
            "duplicated rows when N <= D, or with features that encode the labels."
        )
    idx = np.flatnonzero(bracketed)
    for _ in range(200):
        if idx.size == 0 or np.max(np.abs(upper[idx] - lower[idx])) < 1e-13:
            break
        mid = 0.5 * (lower[idx] + upper[idx])
        same = np.sign(_update_gap(mid, sigma, x2[:, idx], out[idx], n)) == direction[idx]
        lower[idx[same]] = mid[same]
        upper[idx[~same]] = mid[~same]
    t = np.exp(np.where(bracketed, 0.5 * (lower + upper), u))
    return t, noise_free


def logme(features: Any, labels: Any) -> float:
    """LogME of ``features`` for the classification ``labels``: mean over classes of the maximum log evidence / n.

    Equations in the module docstring (You et al., ICML 2021, eq. 2 and Algorithm 1, with one-vs-rest targets).
    The fixed point of Algorithm 1 is located to ``1e-13`` relative in ``t = α/β`` (:func:`_solve_fixed_point`);
    the evidence is evaluated there with ``β = (n − γ) / ‖F m − y‖²`` and ``α = t β``. Invariant to the order of
    the samples, the naming of the classes, the scale of the features and any rotation of the feature space.

    Args:
        features: ``(N, D)`` real features of a frozen model (array-like or CPU tensor), any float dtype.
        labels: ``(N,)`` class of each row (integers or strings); at least 2 distinct classes.

    Returns:
        LogME (a float; higher means the features fit the labels better).

    Raises:
        ValueError / TypeError: malformed inputs (shapes, dtypes, non-finite features, a single class, all-zero
            features), or labels that are an exact linear function of the features while ``F Fᵀ`` is singular
            (the evidence then has no maximum: it grows without bound as ``β → ∞``; e.g. duplicated rows with
            ``N ≤ D``, or features that encode the labels).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1, 2], 20)
        >>> good = np.eye(3)[labels] * 3 + rng.normal(size=(60, 3))
        >>> logme(good, labels) > logme(good, rng.permutation(labels))
        True
    """
    f = _as_features(features)
    n = f.shape[0]
    ids, classes = _as_class_ids(labels, n)
    sigma, x2, out = _spectrum(f, ids, len(classes))
    if not (sigma > 0).any():
        raise ValueError("features are all zero; LogME is undefined")
    t, noise_free = _solve_fixed_point(sigma, x2, out, n, classes)

    # Evaluate at the fixed point's pair: β = (n − γ) / ‖F m − y‖² and α = t β, with m taken at t = α/β.
    # D/2 log α − 1/2 log|A| = −1/2 Σᵢ log(1 + σᵢ / t) (the D − r zero eigenvalues add nothing): stable for any t.
    evidence = np.empty(len(classes))
    inner = ~noise_free
    if inner.any():
        ti = t[inner]
        gamma, mm, res = _terms(ti, sigma, x2[:, inner], out[inner])
        beta = (n - gamma) / res
        alpha = ti * beta
        evidence[inner] = (
            0.5 * n * np.log(beta)
            - 0.5 * np.log1p(sigma[:, None] / ti).sum(axis=0)
            - 0.5 * beta * res
            - 0.5 * alpha * mm
            - 0.5 * n * math.log(2 * math.pi)
        )
    if noise_free.any():
        evidence[noise_free] = _noise_free_limit(sigma, x2[:, noise_free], n)
    return float(np.mean(evidence / n))


def _noise_free_limit(sigma: np.ndarray, x2: np.ndarray, n: int) -> np.ndarray:
    """The evidence's supremum on the boundary ``β → ∞`` when ``F Fᵀ`` (n x n) is non-singular (so ``n ≤ D``).

    The evidence is the Gaussian marginal likelihood ``log N(y; 0, β⁻¹ I + α⁻¹ F Fᵀ)``; with ``β → ∞`` and
    ``α`` at its best, ``α = n / yᵀ(F Fᵀ)⁻¹y``, it tends to::

        n/2 log(n / yᵀ(F Fᵀ)⁻¹y) − 1/2 log|F Fᵀ| − n/2 − n/2 log 2π,   yᵀ(F Fᵀ)⁻¹y = Σᵢ xᵢ² / σᵢ

    Used when the fixed-point iteration drives ``t = α/β`` to 0: the features interpolate the labels and the
    maximum lies on that boundary (finite, unlike the singular case).
    """
    quad = (x2 / sigma[:, None]).sum(axis=0)
    return 0.5 * n * np.log(n / quad) - 0.5 * np.log(sigma).sum() - 0.5 * n - 0.5 * n * math.log(2 * math.pi)
