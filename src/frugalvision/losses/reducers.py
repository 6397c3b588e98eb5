"""Reductions of per-tuple losses to a scalar, over a mask of the tuples that exist.

``"nonzero_mean"`` averages only the tuples whose loss is > 0 (pytorch-metric-learning's ``AvgNonZeroReducer``,
the default of its ``TripletMarginLoss``; Hermans et al. 2017's "batch all ≠ 0"), ``"mean"`` averages over every
valid tuple, ``"sum"`` adds them up. When nothing qualifies the result is a zero that is still connected to the
graph, so ``backward()`` works and yields zero gradients.
"""

from __future__ import annotations

from typing import Literal

import torch

from frugalvision._checks import check_choice

__all__ = ["REDUCTIONS", "Reduction", "hinge_sums", "masked_reduce"]

Reduction = Literal["nonzero_mean", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("nonzero_mean", "mean", "sum")


def masked_reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: Reduction) -> torch.Tensor:
    """Reduce the entries of ``values`` where ``mask`` is true (all entries when ``mask`` is ``None``).

    Args:
        values: per-tuple losses, any shape, expected ``>= 0``.
        mask: boolean tensor of the same shape marking valid tuples, or ``None``.
        reduction: ``"nonzero_mean"``, ``"mean"`` or ``"sum"``.

    Returns:
        A scalar; ``0`` with a gradient path when no entry qualifies.
    """
    check_choice(reduction, REDUCTIONS, "reduction")
    if mask is None:
        kept = values
    else:
        # where(), not multiplication: masked-out entries may be inf/NaN by construction (e.g. padding).
        kept = torch.where(mask, values, values.new_zeros(()))
    total = kept.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = torch.as_tensor(values.numel(), device=values.device) if mask is None else mask.sum()
    else:
        count = (kept > 0).sum()
    # With no qualifying entry the (non-negative) sum is 0, so dividing by max(count, 1) returns that zero
    # with its graph intact, without a host sync on the count.
    return total / count.clamp_min(1).to(values.dtype)


def hinge_sums(
    values: torch.Tensor,
    thresholds: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    thresholds_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``Σ_k relu(t − values[r, k])`` and ``#{k : values[r, k] < t}`` for every threshold ``t`` of row ``r``.

    Computes what a dense ``(R, Q, N)`` hinge tensor would give in ``O(R·N·log Q)`` time and ``O(R·(N + Q))``
    memory: each value is put in the bucket between the row's sorted thresholds (``searchsorted``), bucket counts
    and value sums are accumulated, and their running sums give, for the ``q``-th threshold, the count ``c`` and
    sum ``s`` of the values below it: ``Σ relu(t − v) = c·t − s``. Differentiable in ``values`` and ``thresholds``
    (the same gradient as the dense hinge: relu's derivative at 0 is 0, and ``v < t`` is strict).

    Args:
        values: ``(R, N)`` floating tensor.
        thresholds: ``(R, Q)`` floating tensor.
        valid: ``(R, N)`` boolean mask of the values to include (all when ``None``).
        thresholds_valid: ``(R, Q)`` boolean mask of real thresholds; results at the others are 0.

    Returns:
        ``(sums, counts)``: ``(R, Q)`` float64 sums (accumulated in float64 so ``c·t − s`` keeps its digits) and
        ``(R, Q)`` int64 counts.
    """
    num_q = thresholds.shape[1]
    t_detached = thresholds.detach()
    if thresholds_valid is not None:
        t_detached = t_detached.masked_fill(~thresholds_valid, float("inf"))
    t_sorted, order = t_detached.sort(dim=1)
    bucket = torch.searchsorted(t_sorted, values.detach().contiguous(), right=True)  # thresholds <= value
    if valid is not None:
        bucket = bucket.masked_fill(~valid, num_q)  # beyond every threshold: never counted
    counts = torch.zeros(values.shape[0], num_q + 1, dtype=torch.int64, device=values.device)
    counts.scatter_add_(1, bucket, torch.ones_like(bucket))
    value_sums = values.new_zeros(values.shape[0], num_q + 1, dtype=torch.float64).scatter_add(
        1, bucket, values.to(torch.float64)
    )
    # Running sums over buckets 0..q = everything strictly below the q-th sorted threshold; back to input order.
    inverse = order.argsort(dim=1)
    below_count = counts.cumsum(dim=1)[:, :num_q].gather(1, inverse)
    below_sum = value_sums.cumsum(dim=1)[:, :num_q].gather(1, inverse)
    sums = below_count.to(torch.float64) * thresholds.to(torch.float64) - below_sum
    if thresholds_valid is not None:
        sums = torch.where(thresholds_valid, sums, sums.new_zeros(()))
        below_count = below_count.masked_fill(~thresholds_valid, 0)
    return sums, below_count
