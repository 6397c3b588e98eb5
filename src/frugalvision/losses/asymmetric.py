r"""Asymmetric Loss (ASL) on multi-label logits with unknown (``-1``) targets left out.

Ben-Baruch, Ridnik, Zamir, Noy, Friedman, Protter, Zelnik-Manor, "Asymmetric Loss For Multi-Label
Classification", ICCV 2021, https://arxiv.org/abs/2009.14119 (method section, subsections "Asymmetric
Focusing", "Asymmetric Probability Shifting" and "ASL Definition"); official code github.com/Alibaba-MIIL/ASL
(``src/loss_functions/losses.py``).

The calling convention and reductions are those of every multi-label loss
(:mod:`frugalvision.losses._multilabel_base`).
"""

from __future__ import annotations

import torch

from frugalvision.losses._base import FunctionalLoss, checked_options, flag, in_range
from frugalvision.losses._multilabel_base import (
    MULTILABEL_CHECKS,
    MultilabelBatch,
    check_gamma,
    focusing,
)
from frugalvision.losses._registry import register_loss

__all__ = ["AsymmetricLoss", "asymmetric_loss"]


@checked_options(
    gamma_pos=check_gamma,
    gamma_neg=check_gamma,
    clip=in_range(0, 1, what=" (the probability margin m)"),
    eps=in_range(0, 1, include_low=False),
    disable_torch_grad_focal_loss=flag,
    **MULTILABEL_CHECKS,
)
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
    batch = MultilabelBatch.check(logits, targets, weights)
    logits, y = batch.logits, batch.y
    p = torch.sigmoid(logits)
    one_minus_p = torch.sigmoid(-logits)  # without the cancellation of 1 - p
    one_minus_pm = (one_minus_p + clip).clamp(max=1.0) if clip > 0 else one_minus_p  # 1 - p_m
    log_term = torch.where(y > 0, p.clamp(min=eps).log(), one_minus_pm.clamp(min=eps).log())
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not disable_torch_grad_focal_loss):
            p_m = (p - clip).clamp(min=0.0) if clip > 0 else p  # = 1 - (1 - p_m)
            weight = torch.where(y > 0, focusing(one_minus_p, gamma_pos), focusing(p_m, gamma_neg))
        log_term = log_term * weight
    return batch.reduce(-log_term, reduction)


@register_loss("asl", "asymmetric", task="multilabel", space="euclidean")
class AsymmetricLoss(FunctionalLoss):
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

    function = staticmethod(asymmetric_loss)
    options = ("gamma_pos", "gamma_neg", "clip", "eps", "disable_torch_grad_focal_loss", "reduction")
