r"""The shared machinery of the multi-label losses on sigmoid logits (:mod:`~frugalvision.losses.bce`,
:mod:`~frugalvision.losses.focal`, :mod:`~frugalvision.losses.asymmetric`,
:mod:`~frugalvision.losses.distribution_balanced`): input checks, masking of unknown entries, reductions.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from frugalvision._checks import check_choice, check_finite_fast, check_ndim, check_tensor
from frugalvision.losses._base import one_of

__all__ = [
    "MULTILABEL_CHECKS",
    "MULTILABEL_REDUCTIONS",
    "MultilabelBatch",
    "MultilabelReduction",
    "binary_targets",
    "check_gamma",
    "check_multilabel_inputs",
    "check_positive_finite",
    "check_reduction",
    "check_width",
    "class_vector",
    "focusing",
    "reduce_multilabel",
]

MultilabelReduction = Literal["mean", "sum", "none"]
MULTILABEL_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
#: The option checks every multi-label loss shares (for :func:`~frugalvision.losses._base.checked_options`).
MULTILABEL_CHECKS = {"reduction": one_of(MULTILABEL_REDUCTIONS)}


def _like_logits(value: object, name: str, logits: torch.Tensor, kind: str) -> torch.Tensor:
    """``value`` checked to be a real tensor of ``logits``' ``(B, C)`` shape, on ``logits``' device and dtype."""
    value = check_tensor(value, name)
    if value.shape != logits.shape:
        raise ValueError(
            f"{name} must have shape (B, C) = {tuple(logits.shape)} like logits, got {tuple(value.shape)}"
        )
    if value.is_complex():
        raise TypeError(f"{name} must be a {kind}, got {value.dtype}")
    return value.to(device=logits.device, dtype=logits.dtype)


def _reject(bad: torch.Tensor, values: torch.Tensor, rule: str) -> None:
    """Raise ``ValueError`` naming the first entry flagged by ``bad`` (value, ``[row, class]``, count)."""
    if bool(bad.any()):
        where = bad.nonzero()
        index = where[0].tolist()
        value = float(values[tuple(index)].item())
        raise ValueError(
            f"{rule}; got {value:g} at [row, class] = {index} ({int(where.shape[0])} such entries)"
        )


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
    targets = _like_logits(targets, "targets", logits, "real (float, int or bool) tensor")
    _reject(
        (targets != 1) & (targets != 0) & (targets != -1),
        targets,
        "targets must hold only 1 (present), 0 (absent) or -1 (unknown)",
    )
    if weights is None:
        return logits, targets, None
    weights = _like_logits(weights, "weights", logits, "real tensor")
    _reject(~torch.isfinite(weights) | (weights < 0), weights, "weights must be finite and >= 0")
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


@dataclass(frozen=True)
class MultilabelBatch:
    """A checked multi-label batch: the calling convention above, in one place for every loss.

    ``MultilabelBatch.check(logits, targets, weights)`` validates the inputs (:func:`check_multilabel_inputs`);
    a loss computes its ``(B, C)`` per-entry terms from :attr:`logits` and :attr:`y`, then :meth:`reduce` masks
    the unknown entries, applies the weights and reduces (:func:`reduce_multilabel`).
    """

    logits: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor | None

    @classmethod
    def check(cls, logits: object, targets: object, weights: object = None) -> MultilabelBatch:
        return cls(*check_multilabel_inputs(logits, targets, weights))

    @property
    def y(self) -> torch.Tensor:
        """``(B, C)`` binary targets: 1 where present, 0 where absent or unknown (see :func:`binary_targets`)."""
        return binary_targets(self.targets)

    def reduce(self, per_entry: torch.Tensor, reduction: str) -> torch.Tensor:
        """Mask, weight and reduce the ``(B, C)`` per-entry losses."""
        return reduce_multilabel(per_entry, self.targets, self.weights, reduction)


def check_reduction(reduction: str) -> str:
    return check_choice(reduction, MULTILABEL_REDUCTIONS, "reduction")


def focusing(base: torch.Tensor, gamma: float) -> torch.Tensor:
    """``base ** gamma`` for ``base`` in ``[0, 1]``, with zero (not NaN) gradients where ``base == 0``.

    ``pow`` alone would give ``0 * inf = NaN`` gradients at ``base == 0`` for ``0 < gamma < 1`` (ASL's probability
    shifting makes ``base == 0`` common), even for entries that a ``where`` later discards.
    """
    if gamma == 0:
        return torch.ones_like(base)
    safe = base.clamp_min(torch.finfo(base.dtype).tiny)
    return torch.where(base > 0, safe.pow(gamma), base.new_zeros(()))


def binary_targets(targets: torch.Tensor) -> torch.Tensor:
    """``1`` where present, ``0`` elsewhere (unknown entries get a placeholder 0 and are masked later)."""
    return (targets == 1).to(targets.dtype)


def check_positive_finite(value: float, name: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_gamma(value: float, name: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def class_vector(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
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


def check_width(vector: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    if vector.numel() != logits.shape[1]:
        raise ValueError(
            f"{name} has {vector.numel()} entries but logits have {logits.shape[1]} classes (shape "
            f"{tuple(logits.shape)})"
        )
