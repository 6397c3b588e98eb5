"""Poincaré-ball operations and a projection head into the ball.

The Poincaré ball of curvature ``-c`` (``c > 0``) is the open ball ``{x : c ||x||² < 1}`` of radius ``1/sqrt(c)``
with the metric ``λ_x² g_E``, ``λ_x = 2 / (1 - c ||x||²)`` (Ganea, Bécigneul, Hofmann, "Hyperbolic Neural
Networks", NeurIPS 2018, https://arxiv.org/abs/1805.09112). All functions act on the last dimension and
broadcast over the leading ones. As ``c -> 0`` the ball becomes ``R^D``, Möbius addition becomes ``x + y`` and the
geodesic distance becomes ``2 ||x - y||`` (the factor 2 comes from ``λ_0 = 2``).

:class:`HyperbolicProjection` is the head of Hyp-ViT (Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets,
"Hyperbolic Vision Transformers: Combining Improvements in Metric Learning", CVPR 2022,
https://arxiv.org/abs/2203.10833): a linear layer, feature clipping (Guo, Wang, Chen, Yu, "Clipped Hyperbolic
Classifiers Are Super-Hyperbolic Classifiers", CVPR 2022, https://arxiv.org/abs/2107.11472), the exponential
map at the origin and a projection that keeps points strictly inside the ball.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from frugalvision._checks import check_finite, check_positive, check_tensor

__all__ = [
    "HyperbolicProjection",
    "clip_features",
    "expmap0",
    "logmap0",
    "mobius_add",
    "poincare_distance",
    "poincare_distance_matrix",
    "project_to_ball",
    "to_poincare",
]


def _boundary_eps(dtype: torch.dtype) -> float:
    """Relative distance to the ball's boundary that is still representable: 1e-5 (float32), 1e-10 (float64)."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def _artanh(z: torch.Tensor) -> torch.Tensor:
    """``artanh`` with the argument kept inside ``(-1, 1)`` so values and gradients stay finite."""
    eps = _boundary_eps(z.dtype)
    return torch.atanh(z.clamp(-1.0 + eps, 1.0 - eps))


def _safe_norm(x: torch.Tensor, *, keepdim: bool = True) -> torch.Tensor:
    """Euclidean norm over the last dimension, clamped away from 0 so that dividing by it is safe."""
    return x.norm(dim=-1, keepdim=keepdim).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)


def _check_c(c: float) -> None:
    check_positive(c, "c (curvature, the ball has curvature -c)")


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    r"""Möbius addition ``x ⊕_c y`` on the Poincaré ball (Ganea et al. 2018, eq. 3).

    .. math::
        x \oplus_c y = \frac{(1 + 2c\langle x, y\rangle + c\|y\|^2)\,x + (1 - c\|x\|^2)\,y}
                            {1 + 2c\langle x, y\rangle + c^2\|x\|^2\|y\|^2}

    Args:
        x, y: points of the ball, shapes ``(..., D)`` broadcastable against each other.
        c: curvature magnitude ``c > 0``.

    Returns:
        ``(..., D)``. ``0`` is the identity, ``(-x) ⊕ x = 0``, and ``x ↦ a ⊕ x`` is an isometry of the ball.

    Example:
        >>> x = torch.tensor([0.3, 0.1])
        >>> torch.allclose(mobius_add(-x, x, c=1.0), torch.zeros(2))
        True
    """
    _check_c(c)
    xy = (x * y).sum(dim=-1, keepdim=True)
    x2 = (x * x).sum(dim=-1, keepdim=True)
    y2 = (y * y).sum(dim=-1, keepdim=True)
    numerator = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    denominator = 1 + 2 * c * xy + c**2 * x2 * y2
    return numerator / denominator.clamp_min(torch.finfo(x.dtype).tiny)


def expmap0(v: torch.Tensor, c: float) -> torch.Tensor:
    r"""Exponential map at the origin: ``tanh(sqrt(c) ||v||) v / (sqrt(c) ||v||)`` (Ganea et al. 2018, lemma 2).

    Maps a tangent vector (any Euclidean vector) ``(..., D)`` into the open ball. In floating point a very long
    ``v`` lands on the boundary; follow with :func:`project_to_ball` (as :func:`to_poincare` does).
    """
    _check_c(c)
    sqrt_c = math.sqrt(c)
    norm = _safe_norm(v)
    return torch.tanh(sqrt_c * norm) * v / (sqrt_c * norm)


def logmap0(y: torch.Tensor, c: float) -> torch.Tensor:
    r"""Logarithmic map at the origin, the inverse of :func:`expmap0`: ``artanh(sqrt(c) ||y||) y / (sqrt(c) ||y||)``."""
    _check_c(c)
    sqrt_c = math.sqrt(c)
    norm = _safe_norm(y)
    return _artanh(sqrt_c * norm) * y / (sqrt_c * norm)


def project_to_ball(x: torch.Tensor, c: float, eps: float | None = None) -> torch.Tensor:
    """Rescale points whose norm exceeds ``(1 - eps) / sqrt(c)`` onto that radius; others are unchanged.

    Args:
        x: ``(..., D)``.
        c: curvature magnitude.
        eps: relative margin to the boundary. Default: ``1e-3`` for float16/bfloat16/float32 (hyptorch's value,
            used by Hyp-ViT) and ``1e-5`` for float64.
    """
    _check_c(c)
    if eps is None:
        eps = 1e-5 if x.dtype == torch.float64 else 1e-3
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    max_norm = (1 - eps) / math.sqrt(c)
    norm = _safe_norm(x)
    return torch.where(norm > max_norm, x / norm * max_norm, x)


def clip_features(x: torch.Tensor, r: float) -> torch.Tensor:
    r"""Feature clipping ``min(1, r / ||x||) x`` of Guo et al. (CVPR 2022, eq. 7), applied before :func:`expmap0`.

    Keeps Euclidean features within radius ``r`` so that after the exponential map they stay away from the
    boundary, where gradients vanish. Hyp-ViT uses ``r = 2.3``.
    """
    check_positive(r, "clip_r")
    return x * torch.clamp(r / _safe_norm(x), max=1.0)


def to_poincare(x: torch.Tensor, c: float, clip_r: float | None = None) -> torch.Tensor:
    """Map Euclidean features ``(..., D)`` into the ball: optional :func:`clip_features`, :func:`expmap0`, then
    :func:`project_to_ball` (hyptorch's ``ToPoincare`` without the Riemannian gradient, as Hyp-ViT uses it)."""
    if clip_r is not None:
        x = clip_features(x, clip_r)
    return project_to_ball(expmap0(x, c), c)


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    r"""Geodesic distance between paired points (Ganea et al. 2018, eq. 4), broadcasting ``(..., D)`` -> ``(...)``.

    .. math::
        d_c(x, y) = \frac{2}{\sqrt{c}} \operatorname{artanh}\big(\sqrt{c}\, \|(-x) \oplus_c y\|\big)
                  = \frac{1}{\sqrt{c}} \operatorname{arcosh}\Big(1 + \frac{2c\|x - y\|^2}{(1 - c\|x\|^2)(1 - c\|y\|^2)}\Big)

    Example:
        >>> x, y = torch.tensor([0.1, 0.2]), torch.tensor([-0.3, 0.0])
        >>> d = poincare_distance(x, y, c=1e-6)   # nearly flat: 2 * Euclidean distance
        >>> torch.allclose(d, 2 * (x - y).norm(), rtol=1e-4)
        True
    """
    sqrt_c = math.sqrt(c)
    diff = mobius_add(-x, y, c)
    sq = (diff * diff).sum(dim=-1)
    norm = sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()
    return 2 / sqrt_c * _artanh(sqrt_c * norm)


def poincare_distance_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    r"""All geodesic distances ``D[i, j] = d_c(x_i, y_j)`` between rows of ``x (N, D)`` and ``y (M, D)``: ``(N, M)``.

    Uses the identity ``||(-x) ⊕_c y||² = ||x - y||² / (1 - 2c⟨x, y⟩ + c²||x||²||y||²)`` (equivalent to the
    ``arcosh`` form of :func:`poincare_distance`), so only ``torch.cdist`` and a Gram matrix are needed, in
    ``O(N M)`` memory. ``torch.cdist`` goes through a matrix product for more than 25 rows, so, as for Euclidean
    distances, distances much smaller than the norms lose relative precision in float32. Identical rows give a
    zero distance with a finite (zero) gradient.

    Raises:
        ValueError: ``x`` or ``y`` not 2-D, or different feature sizes.
    """
    check_tensor(x, "x")
    check_tensor(y, "y")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    _check_c(c)
    sqrt_c = math.sqrt(c)
    x2 = (x * x).sum(dim=1, keepdim=True)  # (N, 1)
    y2 = (y * y).sum(dim=1).unsqueeze(0)  # (1, M)
    denominator = (1 - 2 * c * (x @ y.T) + c**2 * x2 * y2).clamp_min(torch.finfo(x.dtype).tiny)
    return 2 / sqrt_c * _artanh(sqrt_c * torch.cdist(x, y) / denominator.sqrt())


class HyperbolicProjection(nn.Module):
    r"""Head mapping backbone features into the Poincaré ball: ``z = proj(expmap0(clip_r(W f + b)))``.

    Hyp-ViT (Ermolov et al., CVPR 2022) replaces the classification head of a ViT by this module and trains
    with :class:`~frugalvision.losses.HyperbolicPairwiseCELoss`. The linear layer is initialised as in the
    official code (github.com/htdt/hyp_metric): orthogonal weight, zero bias.

    Args:
        in_features: size of the backbone features.
        out_features: size of the hyperbolic embedding (paper: 128).
        c: curvature magnitude (paper: 0.1).
        clip_r: feature-clipping radius applied before the exponential map (paper: 2.3); ``None`` disables it.
        bias: whether the linear layer has a bias.

    Shapes:
        ``(B, in_features) -> (B, out_features)`` with every row strictly inside the ball of radius ``1/sqrt(c)``.

    Raises:
        ValueError: non-positive sizes, ``c`` or ``clip_r``; at call time a wrong feature size or NaN features.

    Example:
        >>> head = HyperbolicProjection(384, 128)
        >>> z = head(torch.randn(4, 384) * 1e3)
        >>> bool((z.norm(dim=1) < 1 / 0.1**0.5).all())
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        c: float = 0.1,
        clip_r: float | None = 2.3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive(in_features, "in_features")
        check_positive(out_features, "out_features")
        _check_c(c)
        if clip_r is not None:
            check_positive(clip_r, "clip_r")
        self.c = float(c)
        self.clip_r = None if clip_r is None else float(clip_r)
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        nn.init.orthogonal_(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_tensor(features, "features")
        if features.ndim != 2 or features.shape[1] != self.linear.in_features:
            raise ValueError(
                f"features must be (B, {self.linear.in_features}), got shape {tuple(features.shape)}"
            )
        check_finite(features, "features")
        return to_poincare(self.linear(features), self.c, self.clip_r)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.linear.in_features}, out_features={self.linear.out_features}, "
            f"c={self.c}, clip_r={self.clip_r}"
        )
