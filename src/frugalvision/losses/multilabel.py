r"""Multi-label losses on sigmoid logits: BCE, focal, Asymmetric (ASL) and Distribution-Balanced (DB) losses.

Every loss is called ``loss(logits (B, C), targets (B, C), weights=None)``:

* ``logits``: raw scores (the sigmoid is applied inside); run the loss outside autocast.
* ``targets``: ``1`` = present, ``0`` = absent, ``-1`` = unknown (not annotated). Unknown entries contribute
  nothing: zero loss and zero gradient.
* ``weights``: optional non-negative ``(B, C)`` per-entry weights multiplied into the per-entry losses (the
  partial-annotation wrapper of :mod:`frugalvision.losses.partial` uses them); an entry of weight 0 counts as
  unknown.

Reductions (``reduction=``): ``"mean"`` (default) divides the sum of the per-entry losses by the number of *known*
entries (target ``!= -1`` and weight ``> 0``); ``"sum"`` is the plain sum (the official ASL code's
``-loss.sum()``); ``"none"`` returns the ``(B, C)`` per-entry losses, zero on unknown entries. A batch without a
known entry gives a zero that is still connected to ``logits`` (``backward()`` works and yields zero gradients).

References (equations cited in each loss's docstring):

* Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017,
  https://arxiv.org/abs/1708.02002 (Sec. 3.1-3.2, the alpha-balanced focal loss FL(p_t), eq. 5).
* Ben-Baruch, Ridnik, Zamir, Noy, Friedman, Protter, Zelnik-Manor, "Asymmetric Loss For Multi-Label
  Classification", ICCV 2021, https://arxiv.org/abs/2009.14119 (method section, subsections "Asymmetric
  Focusing", "Asymmetric Probability Shifting" and "ASL Definition"); official code github.com/Alibaba-MIIL/ASL
  (``src/loss_functions/losses.py``).
* Wu, Huang, Liu, Wang, Lin, "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed
  Datasets", ECCV 2020, https://arxiv.org/abs/2007.09654 (method section: re-balanced weighting, negative-tolerant
  regularization, the Distribution-Balanced loss); official code github.com/wutong16/
  DistributionBalancedLoss (``mllt/models/losses/resample_loss.py``, ``ResampleLoss``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_choice, check_finite_fast, check_ndim, check_tensor
from frugalvision.losses._registry import register_loss

__all__ = [
    "MULTILABEL_REDUCTIONS",
    "AsymmetricLoss",
    "BinaryCrossEntropyLoss",
    "DistributionBalancedLoss",
    "FocalLoss",
    "MultilabelReduction",
    "asymmetric_loss",
    "bce_loss",
    "check_multilabel_inputs",
    "distribution_balanced_loss",
    "focal_loss",
    "reduce_multilabel",
]

MultilabelReduction = Literal["mean", "sum", "none"]
MULTILABEL_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------------------
# Input checks and the shared reduction
# ----------------------------------------------------------------------------------------------------------------


def _first_bad(mask: torch.Tensor, values: torch.Tensor) -> tuple[float, list[int], int]:
    """Value, index and count of the entries flagged by ``mask`` (called only when there is one)."""
    where = mask.nonzero()
    index = where[0].tolist()
    return float(values[tuple(index)].item()), index, int(where.shape[0])


def check_multilabel_inputs(
    logits: object, targets: object, weights: object = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a multi-label batch and return ``(logits, targets, weights)`` on ``logits``' device and dtype.

    Args:
        logits: finite floating ``(B, C)`` tensor.
        targets: ``(B, C)`` tensor (float, int or bool) with entries in ``{1, 0, -1}``.
        weights: ``None`` or a finite non-negative ``(B, C)`` tensor.

    Returns:
        ``logits`` unchanged, ``targets`` and ``weights`` converted to ``logits.dtype`` on its device.

    Raises:
        TypeError: a non-tensor argument, integer logits, complex targets or weights.
        ValueError: logits not 2-D or not finite, a targets/weights shape other than logits', a target value outside
            ``{1, 0, -1}`` (the message gives the value and its ``[row, class]``), negative or non-finite weights.
    """
    logits = check_tensor(logits, "logits")
    check_ndim(logits, 2, "logits", "(B, C)")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor (raw scores), got {logits.dtype}")
    check_finite_fast(logits, "logits")
    targets = check_tensor(targets, "targets")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have shape (B, C) = {tuple(logits.shape)} like logits, got {tuple(targets.shape)}"
        )
    if targets.is_complex():
        raise TypeError(f"targets must be a real (float, int or bool) tensor, got {targets.dtype}")
    targets = targets.to(device=logits.device, dtype=logits.dtype)
    if targets.numel():
        bad = (targets != 1) & (targets != 0) & (targets != -1)
        if bool(bad.any()):
            value, index, count = _first_bad(bad, targets)
            raise ValueError(
                "targets must hold only 1 (present), 0 (absent) or -1 (unknown); "
                f"got {value:g} at [row, class] = {index} ({count} such entries)"
            )
    if weights is None:
        return logits, targets, None
    weights = check_tensor(weights, "weights")
    if weights.shape != logits.shape:
        raise ValueError(
            f"weights must have shape (B, C) = {tuple(logits.shape)} like logits, got {tuple(weights.shape)}"
        )
    if weights.is_complex():
        raise TypeError(f"weights must be a real tensor, got {weights.dtype}")
    weights = weights.to(device=logits.device, dtype=logits.dtype)
    if weights.numel():
        bad = ~torch.isfinite(weights) | (weights < 0)
        if bool(bad.any()):
            value, index, count = _first_bad(bad, weights)
            raise ValueError(
                f"weights must be finite and >= 0; got {value:g} at [row, class] = {index} ({count} such entries)"
            )
    return logits, targets, weights


def reduce_multilabel(
    per_entry: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    """Mask unknown entries of a ``(B, C)`` per-entry loss, apply ``weights`` and reduce.

    ``"mean"`` divides by the number of known entries (target ``!= -1`` and weight ``> 0``), ``"sum"`` adds, and
    ``"none"`` returns the masked ``(B, C)`` losses. With no known entry the result is a zero computed from
    ``per_entry``, so it keeps its graph and ``backward()`` gives zero gradients.
    """
    known = targets != -1
    if weights is not None:
        known = known & (weights > 0)
    # where(), not multiplication: the value and the gradient of an unknown entry are exactly zero.
    loss = torch.where(known, per_entry, per_entry.new_zeros(()))
    if weights is not None:
        loss = loss * weights
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / known.sum().clamp_min(1).to(total.dtype)


def _check_reduction(reduction: str) -> str:
    return check_choice(reduction, MULTILABEL_REDUCTIONS, "reduction")


def _focusing(base: torch.Tensor, gamma: float) -> torch.Tensor:
    """``base ** gamma`` for ``base`` in ``[0, 1]``, with zero (not NaN) gradients where ``base == 0``.

    ``pow`` alone would give ``0 * inf = NaN`` gradients at ``base == 0`` for ``0 < gamma < 1`` (ASL's probability
    shifting makes ``base == 0`` common), even for entries that a ``where`` later discards.
    """
    if gamma == 0:
        return torch.ones_like(base)
    safe = base.clamp_min(torch.finfo(base.dtype).tiny)
    return torch.where(base > 0, safe.pow(gamma), base.new_zeros(()))


def _binary_targets(targets: torch.Tensor) -> torch.Tensor:
    """``1`` where present, ``0`` elsewhere (unknown entries get a placeholder 0 and are masked later)."""
    return (targets == 1).to(targets.dtype)


def _check_positive_finite(value: float, name: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_gamma(value: float, name: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------
# Binary cross-entropy
# ----------------------------------------------------------------------------------------------------------------


def _class_vector(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    """A 1-D float64 tensor of finite non-negative per-class values."""
    try:
        vector = torch.as_tensor(values, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a sequence of numbers (one per class), got {type(values).__name__}"
        ) from err
    if vector.ndim != 1 or vector.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence (one value per class), got shape {tuple(vector.shape)}"
        )
    bad = ~torch.isfinite(vector) | (vector < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} must be finite and >= 0; got {vector[i].item():g} for class {i}")
    return vector


def _check_width(vector: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    if vector.numel() != logits.shape[1]:
        raise ValueError(
            f"{name} has {vector.numel()} entries but logits have {logits.shape[1]} classes (shape "
            f"{tuple(logits.shape)})"
        )


def bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    pos_weight: Sequence[float] | torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary cross-entropy on sigmoid logits, as ``torch.nn.BCEWithLogitsLoss``:

    .. math:: \ell = -\big[w^{+}_c\, y \log\sigma(z) + (1 - y) \log \sigma(-z)\big]

    computed with ``logsigmoid`` (stable for any logit). ``pos_weight`` ``w+`` (one value per class) scales the
    positive term, e.g. ``#negatives / #positives`` of each class.

    Args:
        logits: ``(B, C)`` raw scores.
        targets: ``(B, C)`` in ``{1, 0, -1}``; ``-1`` (unknown) entries are left out.
        weights: optional ``(B, C)`` non-negative per-entry weights.
        pos_weight: ``C`` non-negative values or ``None`` (all 1).
        reduction: ``"mean"`` over known entries, ``"sum"`` or ``"none"``.

    Returns:
        Scalar (``"mean"``, ``"sum"``) or ``(B, C)`` (``"none"``).

    Raises:
        ValueError, TypeError: see :func:`check_multilabel_inputs`; a bad ``pos_weight`` or ``reduction``.

    Example:
        >>> bce_loss(torch.randn(4, 3), torch.tensor([[1, 0, -1]] * 4)).ndim
        0
    """
    _check_reduction(reduction)
    pw = None if pos_weight is None else _class_vector(pos_weight, "pos_weight")
    return _bce(logits, targets, weights, pw, reduction)


def _bce(
    logits: object, targets: object, weights: object, pos_weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
    y = _binary_targets(targets)
    positive_term = F.logsigmoid(logits)
    if pos_weight is not None:
        _check_width(pos_weight, logits, "pos_weight")
        positive_term = positive_term * pos_weight.to(device=logits.device, dtype=logits.dtype)
    per_entry = -(y * positive_term + (1 - y) * F.logsigmoid(-logits))
    return reduce_multilabel(per_entry, targets, weights, reduction)


@register_loss("bce", "binary_cross_entropy", task="multilabel", space="euclidean")
class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy with optional per-class ``pos_weight``; see :func:`bce_loss`.

    Args:
        pos_weight: ``C`` non-negative floats scaling each class's positive term (as ``BCEWithLogitsLoss``), or
            ``None``.
        reduction: ``"mean"`` (over known entries), ``"sum"`` or ``"none"``.

    Example:
        >>> loss = BinaryCrossEntropyLoss(pos_weight=[1.0, 3.0, 9.0])
        >>> loss(torch.randn(4, 3), torch.tensor([[1, 0, -1]] * 4)).ndim
        0
    """

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: Sequence[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        # Non-persistent: it comes from the constructor, so checkpoints need not carry it.
        vector = None if pos_weight is None else _class_vector(pos_weight, "pos_weight").float()
        self.register_buffer("pos_weight", vector, persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)``."""
        return _bce(logits, targets, weights, self.pos_weight, self.reduction)

    def extra_repr(self) -> str:
        classes = "None" if self.pos_weight is None else f"<{self.pos_weight.numel()} classes>"
        return f"pos_weight={classes}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------------------------------------------
# Focal loss
# ----------------------------------------------------------------------------------------------------------------


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sigmoid focal loss (Lin et al., ICCV 2017, eq. 5, the alpha-balanced form used in its experiments):

    .. math:: \mathrm{FL}(p_t) = -\alpha_t (1 - p_t)^{\gamma} \log(p_t), \qquad
        p_t = \begin{cases} p & y = 1 \\ 1 - p & y = 0 \end{cases}, \quad
        \alpha_t = \begin{cases} \alpha & y = 1 \\ 1 - \alpha & y = 0 \end{cases}

    with ``p = σ(z)``; ``log p_t`` is ``logsigmoid(±z)`` and ``1 - p_t`` is ``σ(∓z)``, both stable. This is
    ``torchvision.ops.sigmoid_focal_loss`` per entry, with ``alpha=None`` for its ``alpha=-1`` (no
    ``α_t`` weighting).

    Args:
        logits, targets, weights, reduction: as :func:`bce_loss`.
        gamma: focusing parameter ``γ >= 0`` (paper and torchvision default 2; ``γ = 0`` with ``alpha=None`` is
            BCE).
        alpha: ``α`` in ``[0, 1]`` weighting the positives (paper and torchvision default 0.25), or ``None``.

    Example:
        >>> focal_loss(torch.randn(4, 3), torch.tensor([[1, 0, -1]] * 4), gamma=2.0).ndim
        0
    """
    _check_reduction(reduction)
    gamma = _check_gamma(gamma, "gamma")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha}")
    logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
    y = _binary_targets(targets)
    signed = torch.where(y > 0, logits, -logits)  # log p_t = logsigmoid(signed), 1 - p_t = sigmoid(-signed)
    per_entry = -_focusing(torch.sigmoid(-signed), gamma) * F.logsigmoid(signed)
    if alpha is not None:
        per_entry = per_entry * (alpha * y + (1 - alpha) * (1 - y))
    return reduce_multilabel(per_entry, targets, weights, reduction)


@register_loss("focal", "sigmoid_focal", task="multilabel", space="euclidean")
class FocalLoss(nn.Module):
    """Sigmoid focal loss; see :func:`focal_loss`.

    Args:
        gamma: focusing parameter (default 2, Lin et al. 2017).
        alpha: positive-class weight ``α`` (default 0.25, Lin et al. 2017 and torchvision), ``None`` for none.
        reduction: ``"mean"`` (over known entries), ``"sum"`` or ``"none"``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma, "gamma")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha}")
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = _check_reduction(reduction)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)``."""
        return focal_loss(
            logits, targets, weights, gamma=self.gamma, alpha=self.alpha, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------------------------------------------
# Asymmetric loss (ASL)
# ----------------------------------------------------------------------------------------------------------------


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal_loss: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Asymmetric Loss, ASL (Ben-Baruch, Ridnik et al., ICCV 2021, "ASL Definition").

    With ``p = σ(z)`` and the shifted probability of a negative ``p_m = max(p - m, 0)`` (asymmetric probability
    shifting, margin ``m = clip``):

    .. math::
        L_{+} = -(1 - p)^{\gamma_{+}} \log(p), \qquad L_{-} = -\,p_m^{\gamma_{-}} \log(1 - p_m)

    (asymmetric focusing with ``γ+`` on positives, ``γ-`` on negatives; the paper's "ASL definition"). As in the
    official code, each log's argument is clamped to ``>= eps`` and the focusing weight is
    ``(1 - p_t)^γ`` with ``p_t = p`` for a positive and ``1 - p_m`` for a negative. ``1 - p`` is computed as
    ``σ(-z)`` (no cancellation). ``γ+ = γ- = 0, m = 0`` is BCE (up to the ``eps`` clamp, i.e. ``|z| < 18``).

    Args:
        logits, targets, weights, reduction: as :func:`bce_loss`. ``reduction="sum"`` is the official
            ``-loss.sum()``.
        gamma_pos: ``γ+`` (default 0, the paper's recommended and the official training script's value).
        gamma_neg: ``γ-`` (default 4, idem).
        clip: margin ``m`` in ``[0, 1)`` (default 0.05, idem); 0 turns shifting off.
        eps: clamp of the log arguments (official 1e-8).
        disable_torch_grad_focal_loss: compute the focusing weight under ``torch.no_grad()``, i.e. treat it as a
            constant in back-propagation, as the official code's flag of that name (the official
            ``AsymmetricLossOptimized`` honours it; ``train.py`` sets it to True). The value is unchanged; the
            gradient loses the ``log(·) · ∂w/∂z`` term.

    Example:
        >>> asymmetric_loss(torch.randn(4, 3), torch.tensor([[1, 0, -1]] * 4)).ndim
        0
    """
    _check_reduction(reduction)
    gamma_pos = _check_gamma(gamma_pos, "gamma_pos")
    gamma_neg = _check_gamma(gamma_neg, "gamma_neg")
    if not 0 <= clip < 1:
        raise ValueError(f"clip (the probability margin m) must lie in [0, 1), got {clip}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
    y = _binary_targets(targets)
    p = torch.sigmoid(logits)
    one_minus_p = torch.sigmoid(-logits)  # without the cancellation of 1 - p
    one_minus_pm = (one_minus_p + clip).clamp(max=1.0) if clip > 0 else one_minus_p  # 1 - p_m
    log_term = torch.where(y > 0, p.clamp(min=eps).log(), one_minus_pm.clamp(min=eps).log())
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not disable_torch_grad_focal_loss):
            p_m = (p - clip).clamp(min=0.0) if clip > 0 else p  # = 1 - (1 - p_m)
            weight = torch.where(y > 0, _focusing(one_minus_p, gamma_pos), _focusing(p_m, gamma_neg))
        log_term = log_term * weight
    return reduce_multilabel(-log_term, targets, weights, reduction)


@register_loss("asl", "asymmetric", task="multilabel", space="euclidean")
class AsymmetricLoss(nn.Module):
    """Asymmetric Loss (ASL); see :func:`asymmetric_loss`.

    Args:
        gamma_pos: ``γ+`` (default 0).
        gamma_neg: ``γ-`` (default 4).
        clip: probability margin ``m`` (default 0.05).
        eps: log clamp (default 1e-8).
        disable_torch_grad_focal_loss: focusing weight as a constant in back-propagation (default False).
        reduction: ``"mean"`` (over known entries), ``"sum"`` (official) or ``"none"``.

    Example:
        >>> loss = AsymmetricLoss(gamma_neg=2)
        >>> loss(torch.randn(4, 3), torch.tensor([[1, 0, -1]] * 4)).ndim
        0
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.gamma_pos = _check_gamma(gamma_pos, "gamma_pos")
        self.gamma_neg = _check_gamma(gamma_neg, "gamma_neg")
        if not 0 <= clip < 1:
            raise ValueError(f"clip (the probability margin m) must lie in [0, 1), got {clip}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.clip, self.eps = float(clip), float(eps)
        self.disable_torch_grad_focal_loss = bool(disable_torch_grad_focal_loss)
        self.reduction = _check_reduction(reduction)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)``."""
        return asymmetric_loss(
            logits,
            targets,
            weights,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            clip=self.clip,
            eps=self.eps,
            disable_torch_grad_focal_loss=self.disable_torch_grad_focal_loss,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, eps={self.eps}, "
            f"disable_torch_grad_focal_loss={self.disable_torch_grad_focal_loss}, reduction={self.reduction!r}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Distribution-Balanced loss
# ----------------------------------------------------------------------------------------------------------------


def _class_statistics(
    class_counts: Sequence[int] | torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, int]:
    counts = _class_vector(class_counts, "class_counts")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int (training images), got {num_samples!r}")
    over = counts > num_samples
    if bool(over.any()):
        i = int(over.nonzero()[0, 0])
        raise ValueError(
            f"class_counts[{i}] = {counts[i].item():g} exceeds num_samples = {num_samples}; class_counts counts "
            "the training images in which each class is present"
        )
    return counts, num_samples


def _db_buffers(
    counts: torch.Tensor, num_samples: int, init_bias: float, neg_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``1/n_i`` and the logit shift ``ν_i = κ b̂_i / λ`` (float64, ``(C,)``).

    Counts are clamped to ``[0.5, N - 0.5]``: a class absent from (or present in every image of) the training set
    would otherwise give an infinite ``1/n_i`` or ``b̂_i``.
    """
    n = counts.clamp(0.5, max(num_samples - 0.5, 0.5))
    prior = n / num_samples
    b_hat = torch.log(prior) - torch.log1p(-prior)  # -log(1/p - 1)
    return 1.0 / n, init_bias * b_hat / neg_scale


def _rebalance_weights(
    y: torch.Tensor, inv_counts: torch.Tensor, alpha: float, beta: float, mu: float
) -> torch.Tensor:
    r"""``r̂ = α + σ(β (r - μ))`` with ``r_i^k = P_i^C / P^I(x^k) = (1/n_i) / Σ_{j: y_j^k = 1} 1/n_j``."""
    inv = inv_counts.to(device=y.device, dtype=y.dtype)
    instance = (y * inv).sum(dim=1, keepdim=True)  # C · P^I(x^k)
    has_positive = instance > 0
    ratio = inv.unsqueeze(0) / torch.where(has_positive, instance, torch.ones_like(instance))
    smoothed = alpha + torch.sigmoid(beta * (ratio - mu))
    # A row without a positive label is never drawn by class-aware sampling: r -> inf, r̂ -> α + 1 (the official
    # code's limit, reached there through a division by zero).
    return torch.where(has_positive, smoothed, torch.full_like(smoothed, alpha + 1.0))


def distribution_balanced_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    class_counts: Sequence[int] | torch.Tensor,
    num_samples: int,
    reweight: bool = True,
    alpha: float = 0.1,
    beta: float = 10.0,
    mu: float = 0.2,
    ntr: bool = True,
    neg_scale: float = 2.0,
    init_bias: float = 0.05,
    focal: bool = False,
    focal_gamma: float = 2.0,
    focal_balance: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Distribution-Balanced loss (Wu et al., ECCV 2020); see :class:`DistributionBalancedLoss`.

    The class statistics are recomputed on every call; the module form computes them once.
    """
    loss = DistributionBalancedLoss(
        class_counts,
        num_samples,
        reweight=reweight,
        alpha=alpha,
        beta=beta,
        mu=mu,
        ntr=ntr,
        neg_scale=neg_scale,
        init_bias=init_bias,
        focal=focal,
        focal_gamma=focal_gamma,
        focal_balance=focal_balance,
        reduction=reduction,
    )
    return loss.to(check_tensor(logits, "logits").device)(logits, targets, weights)


def _db_forward(
    logits: object,
    targets: object,
    weights: object,
    *,
    inv_counts: torch.Tensor,
    shift: torch.Tensor,
    reweight: bool,
    alpha: float,
    beta: float,
    mu: float,
    ntr: bool,
    neg_scale: float,
    focal: bool,
    focal_gamma: float,
    focal_balance: float,
    reduction: str,
) -> torch.Tensor:
    _check_reduction(reduction)
    logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
    _check_width(inv_counts, logits, "class_counts")
    y = _binary_targets(targets)
    if ntr:
        z = logits + shift.to(device=logits.device, dtype=logits.dtype)
        lam = float(neg_scale)
    else:
        z, lam = logits, 1.0
    # Signed logit of the entry's own label, -log p_t = -logsigmoid(signed) (exact, unlike F.softplus past its
    # threshold); a negative sees λ(z + ν).
    signed = torch.where(y > 0, z, -lam * z)
    per_entry = -F.logsigmoid(signed) * torch.where(y > 0, torch.ones_like(z), torch.full_like(z, 1.0 / lam))
    if reweight:
        per_entry = per_entry * _rebalance_weights(y, inv_counts, alpha, beta, mu)
    if focal:
        per_entry = focal_balance * _focusing(torch.sigmoid(-signed), focal_gamma) * per_entry
    return reduce_multilabel(per_entry, targets, weights, reduction)


@register_loss("db", "distribution_balanced", task="multilabel", space="euclidean")
class DistributionBalancedLoss(nn.Module):
    r"""Distribution-Balanced loss (Wu, Huang, Liu, Wang, Lin, ECCV 2020) for long-tailed multi-label data.

    **Re-balanced weighting** (paper: "re-balanced weighting after re-sampling"). Class-aware re-sampling draws an image ``x^k`` through each of its
    positive classes, so with ``n_i`` training images of class ``i`` the class-level and instance-level sampling
    frequencies are ``P_i^C = (1/C)(1/n_i)`` and ``P^I(x^k) = (1/C) Σ_{i: y_i^k = 1} 1/n_i``. Their ratio
    ``r_i^k = P_i^C / P^I(x^k)`` is smoothed into the weight

    .. math:: \hat r_i^k = \alpha + \sigma\big(\beta (r_i^k - \mu)\big)

    which multiplies the whole term of class ``i`` of image ``k``, for positive **and** negative labels alike (as the
    official ``ResampleLoss.rebalance_weight``; the paper writes one ``r̂`` per (image, class) pair). Rows without
    any positive label get the limit ``α + 1``.

    **Negative-tolerant regularization** (NTR). Negative logits are scaled by ``λ`` and their loss by
    ``1/λ``, so an easy negative's gradient vanishes quickly, and a class-prior bias is added to the logits:
    ``b̂_i = -log(1/p_i - 1)`` with ``p_i = n_i / N`` (the bias that makes ``σ(b̂_i) = p_i``), scaled by ``κ``.

    **DB loss** (re-balanced weighting and NTR together). Per entry, with ``z`` the logit and ``ν_i = κ b̂_i / λ``:

    .. math::
        L = \hat r_i^k \Big[\, y \log\big(1 + e^{-(z + \nu_i)}\big)
            + \frac{1 - y}{\lambda} \log\big(1 + e^{\lambda (z + \nu_i)}\big) \Big]

    The paper states the class-specific bias as ``κ b̂_i``; for its sign and scale we follow the official code
    (``ResampleLoss.logit_reg_functions``), which *adds* ``κ b̂_i / λ`` to every logit before scaling the negatives
    by ``λ``, so a positive sees ``z + κ b̂_i / λ`` and a negative ``λ z + κ b̂_i``. For a class in fewer than half the images ``b̂_i < 0``: the shift lowers its initial scores
    towards its prior. The optional focal factor (the paper's "DB-Focal", the official configs) multiplies each
    entry by ``balance · (1 - p_t)^γ`` with ``p_t`` the probability of the entry's label computed from the
    regularised logit (``σ(z + ν)`` for a positive, ``σ(-λ(z + ν))`` for a negative), as the official code.

    Defaults: the official COCO-MLT config (``configs/coco/LT_resnet50_pfc_DB.py``): ``map_param`` alpha 0.1,
    beta 10, gamma (our ``μ``) 0.2, ``logit_reg`` neg_scale (``λ``) 2, init_bias (``κ``) 0.05. Its VOC-MLT config
    uses ``μ = 0.3`` and ``λ = 5``. Both configs use ``focal=True, gamma=2, balance_param=2``; here the focal factor
    is off by default (the paper's plain DB loss), ``focal=True`` gives DB-Focal.

    With ``reweight=False``, ``ntr=False`` and ``focal=False`` the loss is BCE.

    Args:
        class_counts: ``n_i``, the number of training images in which class ``i`` is present (``C`` values).
        num_samples: ``N``, the number of training images. Counts are clamped to ``[0.5, N - 0.5]`` so a class
            absent from (or present in every) training image keeps finite ``1/n_i`` and ``b̂_i``.
        reweight: apply the re-balanced weight ``r̂``.
        alpha, beta, mu: ``α`` (weight floor), ``β`` (slope) and ``μ`` (centre) of the smoothing map.
        ntr: apply negative-tolerant regularization.
        neg_scale: ``λ > 0``.
        init_bias: ``κ``, scale of the class-prior bias (0 turns the bias off, keeping the ``λ`` scaling).
        focal, focal_gamma, focal_balance: the DB-Focal factor, its ``γ`` and its constant ``balance``.
        reduction: ``"mean"`` (over known entries), ``"sum"`` or ``"none"``.

    Example:
        >>> loss = DistributionBalancedLoss(class_counts=[50, 5, 1], num_samples=60)
        >>> loss(torch.randn(4, 3), torch.tensor([[1, 0, -1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])).ndim
        0
    """

    inv_counts: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        num_samples: int,
        reweight: bool = True,
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.2,
        ntr: bool = True,
        neg_scale: float = 2.0,
        init_bias: float = 0.05,
        focal: bool = False,
        focal_gamma: float = 2.0,
        focal_balance: float = 2.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        counts, self.num_samples = _class_statistics(class_counts, num_samples)
        for value, name in ((alpha, "alpha"), (beta, "beta"), (mu, "mu"), (init_bias, "init_bias")):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        self.neg_scale = _check_positive_finite(neg_scale, "neg_scale")
        self.focal_gamma = _check_gamma(focal_gamma, "focal_gamma")
        self.focal_balance = _check_positive_finite(focal_balance, "focal_balance")
        self.reweight, self.ntr, self.focal = bool(reweight), bool(ntr), bool(focal)
        self.alpha, self.beta, self.mu, self.init_bias = (
            float(alpha),
            float(beta),
            float(mu),
            float(init_bias),
        )
        self.reduction = _check_reduction(reduction)
        inv_counts, shift = _db_buffers(counts, self.num_samples, self.init_bias, self.neg_scale)
        # Derived from the constructor arguments: non-persistent, so checkpoints need not carry them.
        self.register_buffer("class_counts", counts, persistent=False)
        self.register_buffer("inv_counts", inv_counts, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    @property
    def num_classes(self) -> int:
        return int(self.inv_counts.numel())

    def rebalance_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """The re-balanced weights ``r̂`` ``(B, C)`` of a target batch (ignores ``reweight``)."""
        targets = check_tensor(targets, "targets")
        check_ndim(targets, 2, "targets", "(B, C)")
        y = (targets == 1).to(torch.float64)
        return _rebalance_weights(y, self.inv_counts, self.alpha, self.beta, self.mu)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)``."""
        return _db_forward(
            logits,
            targets,
            weights,
            inv_counts=self.inv_counts,
            shift=self.shift,
            reweight=self.reweight,
            alpha=self.alpha,
            beta=self.beta,
            mu=self.mu,
            ntr=self.ntr,
            neg_scale=self.neg_scale,
            focal=self.focal,
            focal_gamma=self.focal_gamma,
            focal_balance=self.focal_balance,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_samples={self.num_samples}, reweight={self.reweight} "
            f"(alpha={self.alpha}, beta={self.beta}, mu={self.mu}), ntr={self.ntr} (neg_scale={self.neg_scale}, "
            f"init_bias={self.init_bias}), focal={self.focal} (gamma={self.focal_gamma}, "
            f"balance={self.focal_balance}), reduction={self.reduction!r}"
        )
