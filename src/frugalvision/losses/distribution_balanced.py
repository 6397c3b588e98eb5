r"""Distribution-Balanced (DB) loss on long-tailed multi-label logits with unknown (``-1``) targets left out.

Wu, Huang, Liu, Wang, Lin, "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed
Datasets", ECCV 2020, https://arxiv.org/abs/2007.09654 (method section: re-balanced weighting, negative-tolerant
regularization, the Distribution-Balanced loss); official code github.com/wutong16/
DistributionBalancedLoss (``mllt/models/losses/resample_loss.py``, ``ResampleLoss``).

The calling convention and reductions are those of every multi-label loss
(:mod:`frugalvision.losses._multilabel_base`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from frugalvision._checks import check_ndim, check_tensor
from frugalvision.losses._base import FunctionalLoss
from frugalvision.losses._multilabel_base import (
    MultilabelBatch,
    check_gamma,
    check_positive_finite,
    check_reduction,
    check_width,
    class_vector,
    focusing,
)
from frugalvision.losses._registry import register_loss

__all__ = ["DistributionBalancedLoss", "distribution_balanced_loss"]


def _class_statistics(
    class_counts: Sequence[int] | torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, int]:
    counts = class_vector(class_counts, "class_counts")
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
    **options: Any,
) -> torch.Tensor:
    r"""Distribution-Balanced loss (Wu et al., ECCV 2020); see :class:`DistributionBalancedLoss`, whose keyword
    arguments (``reweight``, ``alpha``, ..., ``reduction``) and defaults ``options`` takes.

    The class statistics are recomputed on every call; the module form computes them once.
    """
    loss = DistributionBalancedLoss(class_counts, num_samples, **options)
    return loss.to(check_tensor(logits, "logits").device)(logits, targets, weights)


def _db_forward(
    logits: object,
    targets: object,
    weights: object = None,
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
    check_reduction(reduction)
    batch = MultilabelBatch.check(logits, targets, weights)
    logits, y = batch.logits, batch.y
    check_width(inv_counts, logits, "class_counts")
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
        per_entry = focal_balance * focusing(torch.sigmoid(-signed), focal_gamma) * per_entry
    return batch.reduce(per_entry, reduction)


@register_loss("db", "distribution_balanced", task="multilabel", space="euclidean")
class DistributionBalancedLoss(FunctionalLoss):
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

    function = staticmethod(_db_forward)
    options = (
        "inv_counts",
        "shift",
        "reweight",
        "alpha",
        "beta",
        "mu",
        "ntr",
        "neg_scale",
        "focal",
        "focal_gamma",
        "focal_balance",
        "reduction",
    )

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
        self.neg_scale = check_positive_finite(neg_scale, "neg_scale")
        self.focal_gamma = check_gamma(focal_gamma, "focal_gamma")
        self.focal_balance = check_positive_finite(focal_balance, "focal_balance")
        self.reweight, self.ntr, self.focal = bool(reweight), bool(ntr), bool(focal)
        self.alpha, self.beta, self.mu, self.init_bias = (
            float(alpha),
            float(beta),
            float(mu),
            float(init_bias),
        )
        self.reduction = check_reduction(reduction)
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

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_samples={self.num_samples}, reweight={self.reweight} "
            f"(alpha={self.alpha}, beta={self.beta}, mu={self.mu}), ntr={self.ntr} (neg_scale={self.neg_scale}, "
            f"init_bias={self.init_bias}), focal={self.focal} (gamma={self.focal_gamma}, "
            f"balance={self.focal_balance}), reduction={self.reduction!r}"
        )
