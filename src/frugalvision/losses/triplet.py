"""Triplet margin loss with batch-all, batch-hard and semi-hard mining."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from frugalvision._checks import check_class_labels
from frugalvision.losses._base import (
    FunctionalLoss,
    check_embeddings,
    checked_options,
    flag,
    non_negative,
    one_of,
)
from frugalvision.losses._registry import register_loss
from frugalvision.losses.distances import DISTANCES, DistanceName, pairwise_distance
from frugalvision.losses.miners import _negatives_of, _semihard_mask, hard_triplets, positive_pairs
from frugalvision.losses.reducers import REDUCTIONS, Reduction, hinge_sums, masked_reduce

__all__ = ["MINING_MODES", "TripletMarginLoss", "triplet_margin_loss", "triplet_term"]

Mining = Literal["all", "hard", "semihard"]
MINING_MODES: tuple[str, ...] = ("all", "hard", "semihard")


def check_tuple_inputs(embeddings: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared checks of the in-batch tuple losses: finite ``(B, D)`` embeddings, ``B >= 2``, int ``(B,)`` labels."""
    embeddings = check_embeddings(embeddings, "embeddings")
    labels = check_class_labels(labels, embeddings.shape[0], "labels")
    if embeddings.shape[0] < 2:
        raise ValueError(
            f"a tuple loss needs at least 2 embeddings in the batch, got {embeddings.shape[0]}; "
            "use a larger batch (ideally several samples per class)"
        )
    return embeddings, labels


#: The option checks of the in-batch tuple losses (triplet, quadruplet).
TUPLE_LOSS_CHECKS = {
    "distance": one_of(DISTANCES),
    "normalize": flag,
    "reduction": one_of(REDUCTIONS),
}


@checked_options(
    margin=non_negative, mining=one_of(MINING_MODES), swap=flag, smooth=flag, **TUPLE_LOSS_CHECKS
)
def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    mining: Mining = "all",
    distance: DistanceName = "euclidean",
    normalize: bool = True,
    swap: bool = False,
    smooth: bool = False,
    reduction: Reduction = "nonzero_mean",
) -> torch.Tensor:
    r"""Triplet margin loss over the triplets of a batch, mined in the batch.

    Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and Clustering", CVPR 2015,
    https://arxiv.org/abs/1503.03832; Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017, https://arxiv.org/abs/1703.07737.

    .. math:: \ell(a, p, n) = \big[\, d(a, p) - d(a, n) + \alpha \,\big]_+

    over triplets with ``y_a = y_p``, ``a != p``, ``y_n != y_a``, reduced by ``reduction``.

    Args:
        embeddings: ``(B, D)`` floating tensor, ``B >= 2``.
        labels: ``(B,)`` integer class ids ``>= 0``.
        margin: ``α``, in the units of ``distance`` (default 0.2, FaceNet's value; pml's default is 0.05).
        mining: ``"all"`` every valid triplet (batch all); ``"hard"`` per anchor the farthest positive and closest
            negative (batch hard); ``"semihard"`` triplets with ``d(a,p) < d(a,n) <= d(a,p) + α``.
        distance: ``"euclidean"`` (default; Hermans et al. found the non-squared distance more stable),
            ``"squared_euclidean"`` (FaceNet) or ``"cosine"`` (``1 − cos``).
        normalize: L2-normalise the embeddings first (default True, as FaceNet and pml's ``LpDistance``).
        swap: use ``min(d(a, n), d(p, n))`` as the negative distance (Balntas et al. 2016's distance swap).
        smooth: ``softplus`` instead of the hinge (pml's ``smooth_loss``; with ``α = 0`` Hermans' soft margin).
        reduction: ``"nonzero_mean"`` (default: mean over triplets with loss > 0, pml's ``AvgNonZeroReducer`` and
            Hermans' "BA≠0"), ``"mean"`` over all mined triplets (Hermans' batch hard), or ``"sum"``.

    Returns:
        Scalar tensor. A batch without any valid triplet (e.g. all labels distinct, or a single class) gives a zero
        that still carries a gradient: a random sampler can legitimately draw such a batch.

    Raises:
        ValueError: ``B < 2``, mismatched lengths, non-finite embeddings, labels not 1-D or negative, bad options.
        TypeError: labels not integer, embeddings not floating.

    Example:
        >>> emb, y = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> triplet_margin_loss(emb, y, mining="hard").shape
        torch.Size([])

    Cost: ``"all"`` (plain hinge, no swap) runs in ``O(B² log K)`` time and ``O(B²)`` memory (``K`` = largest class
    in the batch) by sorting each anchor's positive thresholds, never listing triplets; ``"semihard"``, ``swap`` or
    ``smooth`` take ``O(P·B)`` (``P`` positive pairs); ``"hard"`` ``O(B²)``.
    """
    embeddings, labels = check_tuple_inputs(embeddings, labels)
    dist = pairwise_distance(embeddings, distance=distance, normalize=normalize)
    return triplet_term(
        dist, labels, margin=margin, mining=mining, swap=swap, smooth=smooth, reduction=reduction
    )


def _positives_table(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` indices of each row's positives (``K`` = most positives of a row) and the mask of real entries."""
    rows, cols = pos.nonzero(as_tuple=True)  # sorted by row
    per_row = pos.sum(dim=1)
    width = int(per_row.max()) if rows.numel() else 0
    rank = torch.arange(rows.numel(), device=pos.device) - (per_row.cumsum(0) - per_row)[rows]
    table = torch.zeros(pos.shape[0], width, dtype=torch.long, device=pos.device)
    present = torch.zeros(pos.shape[0], width, dtype=torch.bool, device=pos.device)
    table[rows, rank] = cols
    present[rows, rank] = True
    return table, present


def _batch_all_fast(
    dist: torch.Tensor, labels: torch.Tensor, margin: float, reduction: Reduction
) -> torch.Tensor:
    """Batch-all hinge triplet loss through per-anchor sorted thresholds, ``O(B² log K)`` instead of ``O(P·B)``.

    For anchor ``a`` the sum over its triplets is ``Σ_p Σ_n [d_ap + α − d_an]_+``: per threshold ``d_ap + α``, a
    hinge sum over the row's negatives, which :func:`~frugalvision.losses.reducers.hinge_sums` evaluates without
    materialising the ``(P, B)`` matrix.
    """
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    table, present = _positives_table(pos)
    if table.shape[1] == 0:
        return dist.sum() * 0.0
    thresholds = dist.gather(1, table) + margin
    sums, counts = hinge_sums(dist, thresholds, valid=~same, thresholds_valid=present)
    total = sums.sum()
    if reduction == "sum":
        return total.to(dist.dtype)
    if reduction == "nonzero_mean":
        count = counts.sum()
    else:
        count = (pos.sum(dim=1) * (~same).sum(dim=1)).sum()
    return (total / count.clamp_min(1)).to(dist.dtype)


def triplet_term(
    dist: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    mining: Mining,
    swap: bool = False,
    smooth: bool = False,
    reduction: Reduction = "nonzero_mean",
) -> torch.Tensor:
    """The reduced triplet loss from a ``(B, B)`` distance matrix (shared with the quadruplet loss); no input checks.

    ``"all"`` with the plain hinge goes through sorted thresholds (:func:`_batch_all_fast`); ``"semihard"``,
    ``swap`` and ``smooth`` use a ``(P, B)`` matrix of (positive pair, negative) losses; ``"hard"`` one loss per
    anchor.
    """
    if mining == "all" and not swap and not smooth:
        return _batch_all_fast(dist, labels, margin, reduction)
    hinge = F.softplus if smooth else F.relu
    if mining == "hard":
        a, p, n = hard_triplets(dist, labels)
        if a.numel() == 0:
            return dist.sum() * 0.0
        d_an = dist[a, n]
        if swap:
            d_an = torch.minimum(d_an, dist[p, n])
        return masked_reduce(hinge(dist[a, p] - d_an + margin), None, reduction)
    a, p = positive_pairs(labels)
    if a.numel() == 0:
        return dist.sum() * 0.0
    if mining == "semihard":
        valid = _semihard_mask(dist.detach(), labels, a, p, margin)
    else:
        valid = _negatives_of(labels, a)
    d_an = dist[a]  # (P, B): anchor-to-everything rows, one per positive pair
    if swap:
        d_an = torch.minimum(d_an, dist[p])
    return masked_reduce(hinge(dist[a, p].unsqueeze(1) - d_an + margin), valid, reduction)


@register_loss("triplet", "triplet_margin", space="sphere")
class TripletMarginLoss(FunctionalLoss):
    """Module form of :func:`triplet_margin_loss`; see there for the equation, arguments and references.

    Example:
        >>> loss_fn = TripletMarginLoss(margin=0.2, mining="semihard")
        >>> loss = loss_fn(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    function = staticmethod(triplet_margin_loss)
    options = ("margin", "mining", "distance", "normalize", "swap", "smooth", "reduction")
