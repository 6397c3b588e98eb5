r"""Binary cross-entropy on sigmoid logits with unknown (``-1``) targets left out; the calling convention and
reductions of every multi-label loss are described in :mod:`frugalvision.losses._multilabel_base`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision.losses._multilabel_base import (
    MultilabelBatch,
    check_reduction,
    check_width,
    class_vector,
)
from frugalvision.losses._registry import register_loss

__all__ = ["BinaryCrossEntropyLoss", "bce_loss"]


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
    check_reduction(reduction)
    pw = None if pos_weight is None else class_vector(pos_weight, "pos_weight")
    return _bce(logits, targets, weights, pw, reduction)


def _bce(
    logits: object, targets: object, weights: object, pos_weight: torch.Tensor | None, reduction: str
) -> torch.Tensor:
    batch = MultilabelBatch.check(logits, targets, weights)
    logits, y = batch.logits, batch.y
    positive_term = F.logsigmoid(logits)
    if pos_weight is not None:
        check_width(pos_weight, logits, "pos_weight")
        positive_term = positive_term * pos_weight.to(device=logits.device, dtype=logits.dtype)
    return batch.reduce(-(y * positive_term + (1 - y) * F.logsigmoid(-logits)), reduction)


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
        self.reduction = check_reduction(reduction)
        # Non-persistent: it comes from the constructor, so checkpoints need not carry it.
        vector = None if pos_weight is None else class_vector(pos_weight, "pos_weight").float()
        self.register_buffer("pos_weight", vector, persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)``."""
        return _bce(logits, targets, weights, self.pos_weight, self.reduction)

    def extra_repr(self) -> str:
        classes = "None" if self.pos_weight is None else f"<{self.pos_weight.numel()} classes>"
        return f"pos_weight={classes}, reduction={self.reduction!r}"
