"""Softmax losses with an angular margin on normalised class weights: SphereFace, CosFace, ArcFace.

Each module holds ``weight (num_classes, embedding_size)``; logits are cosines between the embedding and the
L2-normalised class weights. pytorch-metric-learning stores the transposed matrix ``W (embedding_size,
num_classes)``: copy with ``ours.weight.data = pml.W.data.T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from frugalvision.losses._base import (
    ClassMatrixLoss,
    check_class_matrix_inputs,
    checked_options,
    flag,
    non_negative,
    positive,
)
from frugalvision.losses._registry import register_loss
from frugalvision.losses.distances import cosine_matrix, safe_sqrt

__all__ = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "SphereFaceLoss",
    "arcface_loss",
    "cosface_loss",
    "cosine_logits",
    "sphereface_loss",
]


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``cos θ_j``: ``(B, C)`` cosines between the rows of ``embeddings (B, D)`` and of ``weight (C, D)``."""
    return cosine_matrix(embeddings, weight)


def _replace_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``cos`` with ``cos[i, labels[i]]`` replaced by ``target[i]`` (differentiable in both)."""
    return cos.scatter(1, labels.unsqueeze(1), target.unsqueeze(1))


def _margin_cross_entropy(
    embeddings: object,
    labels: object,
    weight: object,
    target: Callable[[torch.Tensor], torch.Tensor],
    scale: float | None,
) -> torch.Tensor:
    """What the three losses share: the checked inputs' class cosines ``cos θ_j (B, C)``, the true class's one
    replaced by ``target(cos θ_y)`` (``(B,) -> (B,)``), times ``scale`` (``None``: each embedding's norm, as
    SphereFace), then cross-entropy. An empty batch gives a zero connected to ``embeddings`` and ``weight``."""
    embeddings, labels, weight = check_class_matrix_inputs(embeddings, labels, weight, "weight")
    if embeddings.shape[0] == 0:
        return embeddings.sum() * 0.0 + weight.sum() * 0.0
    cos = cosine_logits(embeddings, weight)
    logits = _replace_target(cos, labels, target(cos.gather(1, labels.unsqueeze(1)).squeeze(1)))
    if scale is None:
        return F.cross_entropy(logits * embeddings.norm(dim=1, keepdim=True), labels)
    return F.cross_entropy(scale * logits, labels)


def _radians(margin: float, name: str) -> float:
    if not 0 <= margin < math.pi:
        raise ValueError(f"{name} is an angle in radians and must lie in [0, π), got {margin}")
    return float(margin)


def _multiplier(margin: int, name: str) -> int:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
        raise ValueError(f"{name} must be an integer >= 1 (multiplicative angular margin), got {margin!r}")
    return margin


def _real(value: float, name: str) -> float:
    return float(value)


@checked_options(scale=positive, margin=_real)
def cosface_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float = 64.0,
    margin: float = 0.35,
) -> torch.Tensor:
    r"""CosFace / large-margin cosine loss (LMCL), additive cosine margin.

    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018,
    https://arxiv.org/abs/1801.09414, eq. 4:

    .. math:: L = -\log \frac{e^{s(\cos\theta_{y} - m)}}{e^{s(\cos\theta_{y} - m)} + \sum_{j \ne y} e^{s\cos\theta_j}}

    Args:
        embeddings: ``(B, D)`` floating tensor (normalised inside).
        labels: ``(B,)`` integer class ids in ``[0, C)``.
        weight: ``(C, D)`` class weights (normalised inside).
        scale: ``s`` (paper: 64).
        margin: ``m``, a cosine offset (dimensionless; paper: 0.35). Same unit as pml's ``CosFaceLoss``.

    Returns:
        Mean cross-entropy over the batch (scalar); ``0`` with a gradient for an empty batch.

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-finite embeddings, ``scale <= 0``.

    Example:
        >>> w = torch.randn(10, 32)
        >>> cosface_loss(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]), w).shape
        torch.Size([])
    """
    return _margin_cross_entropy(embeddings, labels, weight, lambda cos_t: cos_t - margin, scale)


@checked_options(scale=positive, margin=_radians, easy_margin=flag)
def arcface_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
) -> torch.Tensor:
    r"""ArcFace / additive angular margin loss.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019,
    https://arxiv.org/abs/1801.07698, eq. 3:

    .. math:: L = -\log \frac{e^{s\cos(\theta_{y} + m)}}{e^{s\cos(\theta_{y} + m)} + \sum_{j \ne y} e^{s\cos\theta_j}}

    ``cos(θ + m)`` is not monotonic in ``θ`` beyond ``θ = π − m``; there the target logit becomes
    ``cos θ − m·sin m`` (the official insightface code's fallback, also pml's), which keeps it decreasing.
    With ``easy_margin=True`` the margin is applied only where ``cos θ > 0`` and ``cos θ`` is kept otherwise.

    Args:
        embeddings: ``(B, D)`` floating tensor (normalised inside).
        labels: ``(B,)`` integer class ids in ``[0, C)``.
        weight: ``(C, D)`` class weights (normalised inside).
        scale: ``s`` (paper: 64).
        margin: ``m`` in **radians**, ``0 <= m < π`` (paper: 0.5). pml's ``ArcFaceLoss`` takes **degrees**
            (default 28.6): ``pml_margin = math.degrees(margin)``.
        easy_margin: see above (default False, as the paper).

    Returns:
        Mean cross-entropy over the batch (scalar).

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-finite embeddings, bad ``scale``/``margin``.

    Example:
        >>> w = torch.randn(10, 32)
        >>> arcface_loss(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]), w, margin=math.radians(28.6)).shape
        torch.Size([])
    """

    def target(cos_t: torch.Tensor) -> torch.Tensor:
        cos_t = cos_t.clamp(-1.0, 1.0)
        sin_t = safe_sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
        cos_t_plus_m = cos_t * math.cos(margin) - sin_t * math.sin(margin)  # cos(θ + m), θ in [0, π]
        if easy_margin:
            return torch.where(cos_t > 0, cos_t_plus_m, cos_t)
        # θ <= π − m  <=>  cos θ >= cos(π − m) = −cos m
        return torch.where(cos_t >= -math.cos(margin), cos_t_plus_m, cos_t - margin * math.sin(margin))

    return _margin_cross_entropy(embeddings, labels, weight, target, scale)


def _chebyshev(x: torch.Tensor, m: int) -> torch.Tensor:
    """``T_m(x) = cos(m·arccos x)`` by the three-term recurrence (smooth at ``x = ±1``, unlike ``acos``)."""
    prev, cur = torch.ones_like(x), x
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * x * cur - prev
    return cur


@checked_options(margin=_multiplier, lambda_=non_negative)
def sphereface_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    margin: int = 4,
    lambda_: float = 0.0,
) -> torch.Tensor:
    r"""SphereFace / A-Softmax, multiplicative angular margin.

    Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017,
    https://arxiv.org/abs/1704.08063 (A-Softmax loss):

    .. math:: L = -\log \frac{e^{\|x\|\psi(\theta_y)}}{e^{\|x\|\psi(\theta_y)} + \sum_{j \ne y} e^{\|x\|\cos\theta_j}},
       \qquad \psi(\theta) = (-1)^k \cos(m\theta) - 2k,\ \theta \in [\tfrac{k\pi}{m}, \tfrac{(k+1)\pi}{m}]

    Class weights are normalised, embeddings are **not**: the logits are scaled by ``‖x‖``, as in the paper
    (pml's ``SphereFaceLoss`` does the same, with an extra ``scale`` factor, default 1). ``cos(mθ)`` is the
    Chebyshev polynomial ``T_m(cos θ)``; ``k`` is taken without gradient.

    Args:
        embeddings: ``(B, D)`` floating tensor (not normalised).
        labels: ``(B,)`` integer class ids in ``[0, C)``.
        weight: ``(C, D)`` class weights (normalised inside).
        margin: integer ``m >= 1`` (dimensionless multiplier of the angle; paper: 4). ``m = 1`` is the
            normalised-weight softmax.
        lambda_: the paper's training aid (from L-Softmax): the target logit is ``(λ cos θ + ψ(θ)) / (1 + λ)``.
            The official training anneals λ from ~1000 down to ~5; 0 (default) is pure A-Softmax and pml's form.

    Returns:
        Mean cross-entropy over the batch (scalar).

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-finite embeddings, bad ``margin``/``lambda_``.

    Example:
        >>> w = torch.randn(10, 32)
        >>> sphereface_loss(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]), w, margin=4).shape
        torch.Size([])
    """

    def target(cos_t: torch.Tensor) -> torch.Tensor:
        cos_t = cos_t.clamp(-1.0, 1.0)
        with torch.no_grad():
            k = torch.floor(torch.acos(cos_t) * (margin / math.pi)).clamp(0, margin - 1)
        psi = (1.0 - 2.0 * torch.remainder(k, 2)) * _chebyshev(cos_t, margin) - 2.0 * k
        return (lambda_ * cos_t + psi) / (1.0 + lambda_)

    return _margin_cross_entropy(embeddings, labels, weight, target, scale=None)


class _AngularMarginLoss(ClassMatrixLoss):
    matrix_name = "weight"
    weight: torch.nn.Parameter

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free class cosines ``(B, C)`` for inference (argmax = predicted class)."""
        return cosine_logits(embeddings, self.weight)


@register_loss("arcface", "arc_face", space="sphere")
class ArcFaceLoss(_AngularMarginLoss):
    """ArcFace with its own ``weight (num_classes, embedding_size)``; see :func:`arcface_loss`.

    ``margin`` is in radians (paper default 0.5); pml's ``ArcFaceLoss(margin=28.6)`` is in degrees.

    Example:
        >>> loss_fn = ArcFaceLoss(num_classes=10, embedding_size=32)
        >>> loss = loss_fn(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]))
    """

    function = staticmethod(arcface_loss)
    options = ("scale", "margin", "easy_margin")


@register_loss("cosface", "cos_face", "lmcl", space="sphere")
class CosFaceLoss(_AngularMarginLoss):
    """CosFace with its own ``weight (num_classes, embedding_size)``; see :func:`cosface_loss`.

    Example:
        >>> loss_fn = CosFaceLoss(num_classes=10, embedding_size=32)
        >>> loss = loss_fn(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]))
    """

    function = staticmethod(cosface_loss)
    options = ("scale", "margin")


@register_loss("sphereface", "sphere_face", "a_softmax", space="sphere")
class SphereFaceLoss(_AngularMarginLoss):
    """SphereFace (A-Softmax) with its own ``weight (num_classes, embedding_size)``; see :func:`sphereface_loss`.

    ``lambda_`` may be changed between steps to anneal it (``loss_fn.lambda_ = max(5.0, 1000 / (1 + 0.1 * it))``).

    Example:
        >>> loss_fn = SphereFaceLoss(num_classes=10, embedding_size=32, margin=4)
        >>> loss = loss_fn(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]))
    """

    function = staticmethod(sphereface_loss)
    options = ("margin", "lambda_")
