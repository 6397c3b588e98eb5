r"""Sigmoid focal loss on multi-label logits with unknown (``-1``) targets left out.

Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002 (Sec. 3.1-3.2, the alpha-balanced focal loss FL(p_t), eq. 5). The calling
convention and reductions are those of every multi-label loss (:mod:`frugalvision.losses._multilabel_base`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frugalvision.losses._base import FunctionalLoss, checked_options
from frugalvision.losses._multilabel_base import (
    MULTILABEL_CHECKS,
    MultilabelBatch,
    check_gamma,
    focusing,
)
from frugalvision.losses._registry import register_loss

__all__ = ["FocalLoss", "focal_loss"]


def _check_alpha(alpha: float | None, name: str) -> float | None:
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"{name} must lie in [0, 1] or be None, got {alpha}")
    return None if alpha is None else float(alpha)


@checked_options(gamma=check_gamma, alpha=_check_alpha, **MULTILABEL_CHECKS)
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
    batch = MultilabelBatch.check(logits, targets, weights)
    y = batch.y
    signed = torch.where(
        y > 0, batch.logits, -batch.logits
    )  # log p_t = logsigmoid(signed), 1 - p_t = σ(-signed)
    per_entry = -focusing(torch.sigmoid(-signed), gamma) * F.logsigmoid(signed)
    if alpha is not None:
        per_entry = per_entry * (alpha * y + (1 - alpha) * (1 - y))
    return batch.reduce(per_entry, reduction)


@register_loss("focal", "sigmoid_focal", task="multilabel", space="euclidean")
class FocalLoss(FunctionalLoss):
    """Sigmoid focal loss; see :func:`focal_loss`.

    Args:
        gamma: focusing parameter (default 2, Lin et al. 2017).
        alpha: positive-class weight ``α`` (default 0.25, Lin et al. 2017 and torchvision), ``None`` for none.
        reduction: ``"mean"`` (over known entries), ``"sum"`` or ``"none"``.
    """

    function = staticmethod(focal_loss)
    options = ("gamma", "alpha", "reduction")
