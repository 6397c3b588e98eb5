"""Quadruplet loss (Chen et al., CVPR 2017): the triplet term plus a term across unrelated negative pairs."""

from __future__ import annotations

from typing import Literal

import torch

from frugalvision.losses._base import FunctionalLoss, checked_options, non_negative, one_of
from frugalvision.losses._registry import register_loss
from frugalvision.losses.distances import DistanceName, pairwise_distance
from frugalvision.losses.miners import positive_pairs
from frugalvision.losses.reducers import Reduction, hinge_sums, masked_reduce
from frugalvision.losses.triplet import TUPLE_LOSS_CHECKS, check_tuple_inputs, triplet_term

__all__ = ["QuadrupletLoss", "quadruplet_loss"]

QuadMining = Literal["all", "hard"]
_QUAD_MINING: tuple[str, ...] = ("all", "hard")


def _pair_term_all(
    dist: torch.Tensor, labels: torch.Tensor, margin: float, reduction: Reduction
) -> torch.Tensor:
    """Batch-all second term: ``Σ [d(i,j) − d(l,k) + α2]_+`` over ``y_i = y_j`` and ``y_l, y_k, y_i`` all distinct.

    For a positive pair of class ``c`` and threshold ``t = d(i,j) + α2`` the sum over valid ordered ``(l, k)`` is
    the sum over all negative pairs minus the pairs touching ``c`` (``l ∈ c`` or ``k ∈ c``, twice the rows of
    ``c`` as the matrix is symmetric). Both come from :func:`~frugalvision.losses.reducers.hinge_sums` (values
    bucketed between sorted thresholds), so the cost is ``O(B² log P)`` instead of the ``O(P·B²)`` of
    enumerating quadruplets.
    """
    dist = 0.5 * (dist + dist.T)  # exactly symmetric, so "columns of c" == "rows of c"
    a, p = positive_pairs(labels)
    _, cls = torch.unique(labels, return_inverse=True)
    num_cls = int(cls.max()) + 1
    neg = cls.unsqueeze(1) != cls.unsqueeze(0)
    if a.numel() == 0 or num_cls < 3:
        return dist.sum() * 0.0

    thresholds = dist[a, p] + margin  # (P,)
    # Rank of each positive pair within its class, to lay the thresholds out as (class, rank).
    pair_cls = cls[a]
    per_cls = torch.bincount(pair_cls, minlength=num_cls)
    order = torch.argsort(pair_cls, stable=True)
    starts = torch.cumsum(per_cls, 0) - per_cls
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[pair_cls[order]]
    max_pairs = int(per_cls.max())
    by_cls = thresholds.new_zeros(num_cls, max_pairs).index_put((pair_cls, rank), thresholds)
    by_cls_present = torch.zeros(num_cls, max_pairs, dtype=torch.bool, device=dist.device)
    by_cls_present[pair_cls, rank] = True

    # Σ over all ordered negative pairs = twice the sum over l < k (symmetric matrix): one row holding every
    # unordered pair and every threshold.
    upper = torch.ones_like(neg).triu_(diagonal=1) & neg
    sum_all, cnt_all = hinge_sums(dist[upper].unsqueeze(0), thresholds.unsqueeze(0))
    # Σ over the negative pairs whose first index is in the pair's class: each row l evaluated at its class's
    # thresholds, then rows added up per class.
    row_sum, row_cnt = hinge_sums(dist, by_cls[cls], valid=neg, thresholds_valid=by_cls_present[cls])
    cls_sum = row_sum.new_zeros(num_cls, max_pairs).index_add(0, cls, row_sum)
    cls_cnt = row_cnt.new_zeros(num_cls, max_pairs).index_add(0, cls, row_cnt)

    sums = 2.0 * (sum_all.squeeze(0) - cls_sum[pair_cls, rank])
    if reduction == "sum":
        return sums.sum().to(dist.dtype)
    if reduction == "nonzero_mean":
        count = 2 * (cnt_all.squeeze(0) - cls_cnt[pair_cls, rank]).sum()
    else:
        negs_per_row = neg.sum(dim=1)
        negs_touching = torch.zeros(num_cls, dtype=negs_per_row.dtype, device=dist.device).index_add(
            0, cls, negs_per_row
        )
        count = (neg.sum() - 2 * negs_touching[pair_cls]).sum()
    return (sums.sum() / count.clamp_min(1)).to(dist.dtype)


def _hardest_unrelated_pair(dist: torch.Tensor, cls: torch.Tensor, num_cls: int) -> torch.Tensor:
    """Per class ``c``: ``min d(l, k)`` over ``y_l != y_k`` with neither in ``c`` (``inf`` if none), ``(C,)``.

    For each row ``l`` the two candidates are its closest negative ``k1`` and its closest negative outside
    ``y_k1``'s class ``k2``; class ``c`` takes ``k1`` unless ``y_k1 = c``. Selection is detached, the chosen
    entries are gathered with their gradient.
    """
    d = dist.detach()
    neg = cls.unsqueeze(1) != cls.unsqueeze(0)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    k1 = torch.where(neg, d, inf).argmin(dim=1)
    ok2 = neg & (cls.unsqueeze(0) != cls[k1].unsqueeze(1))
    k2 = torch.where(ok2, d, inf).argmin(dim=1)
    v1 = torch.where(neg.any(dim=1), d.gather(1, k1.unsqueeze(1)).squeeze(1), inf)
    v2 = torch.where(ok2.any(dim=1), d.gather(1, k2.unsqueeze(1)).squeeze(1), inf)
    classes = torch.arange(num_cls, device=d.device)
    use_second = cls[k1].unsqueeze(1) == classes.unsqueeze(0)  # (B, C)
    cand = torch.where(use_second, v2.unsqueeze(1), v1.unsqueeze(1))
    # Rows of class c are no candidates for class c.
    cand = cand.masked_fill(cls.unsqueeze(1) == classes.unsqueeze(0), float("inf"))
    best, row = cand.min(dim=0)
    col = torch.where(use_second[row, classes], k2[row], k1[row])
    return torch.where(torch.isfinite(best), dist[row, col], inf)


def _pair_term_hard(
    dist: torch.Tensor, labels: torch.Tensor, margin: float, reduction: Reduction
) -> torch.Tensor:
    """Batch-hard second term: per anchor ``[max_p d(a,p) − min_{(l,k)} d(l,k) + α2]_+``."""
    _, cls = torch.unique(labels, return_inverse=True)
    num_cls = int(cls.max()) + 1
    same = cls.unsqueeze(1) == cls.unsqueeze(0)
    pos = same & ~torch.eye(len(cls), dtype=torch.bool, device=dist.device)
    hardest_pos = dist.detach().masked_fill(~pos, float("-inf")).argmax(dim=1)
    pair_min = _hardest_unrelated_pair(dist, cls, num_cls)[cls]  # (B,)
    anchors = (pos.any(dim=1) & torch.isfinite(pair_min)).nonzero(as_tuple=True)[0]
    if anchors.numel() == 0:
        return dist.sum() * 0.0
    losses = torch.relu(dist[anchors, hardest_pos[anchors]] - pair_min[anchors] + margin)
    return masked_reduce(losses, None, reduction)


@checked_options(
    margin1=non_negative,
    margin2=non_negative,
    pair_weight=non_negative,
    mining=one_of(_QUAD_MINING),
    **TUPLE_LOSS_CHECKS,
)
def quadruplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin1: float = 0.2,
    margin2: float = 0.1,
    pair_weight: float = 1.0,
    mining: QuadMining = "all",
    distance: DistanceName = "squared_euclidean",
    normalize: bool = True,
    reduction: Reduction = "nonzero_mean",
) -> torch.Tensor:
    r"""Quadruplet loss: the triplet loss plus a margin between positive pairs and *unrelated* negative pairs.

    Chen, Chen, Zhang, Huang, "Beyond triplet loss: a deep quadruplet network for person re-identification",
    CVPR 2017, https://arxiv.org/abs/1704.01719:

    .. math:: L = \sum_{i,j,k} [d_{ij} - d_{ik} + \alpha_1]_+ + w \sum_{i,j,l,k} [d_{ij} - d_{lk} + \alpha_2]_+

    with ``y_i = y_j``, ``i != j``, ``y_k != y_i`` in the first term and ``y_l != y_k``, ``y_l != y_i``,
    ``y_k != y_i`` in the second: the second pushes every positive pair closer than *any* negative pair of other
    classes, not only those sharing the anchor. The paper uses squared distances (``d = g²``). Each term is
    reduced on its own (``"sum"`` gives the equation as written, over ordered index tuples); with
    ``pair_weight = 0`` the loss equals :func:`~frugalvision.losses.triplet_margin_loss` with ``margin=margin1``.

    Args:
        embeddings: ``(B, D)`` floating tensor, ``B >= 2``.
        labels: ``(B,)`` integer class ids ``>= 0``.
        margin1: ``α1`` of the triplet term, in units of ``distance``.
        margin2: ``α2`` of the pair term. The paper requires ``α2 < α1`` (a weaker, auxiliary constraint) and
            sets both from batch statistics; the fixed defaults 0.2 / 0.1 are ours (FaceNet's 0.2 for squared
            distances of unit vectors).
        pair_weight: ``w``, weight of the second term (the paper: 1).
        mining: ``"all"`` every valid triplet and quadruplet; ``"hard"`` per anchor its farthest positive, closest
            negative and closest negative pair of two other classes (batch-hard, in the spirit of the paper's
            online hard negative mining).
        distance: ``"squared_euclidean"`` (paper), ``"euclidean"`` or ``"cosine"``.
        normalize: L2-normalise the embeddings first (default True).
        reduction: ``"nonzero_mean"`` (default; per term, over tuples with positive loss), ``"mean"``, ``"sum"``.

    Returns:
        Scalar tensor; zero with a gradient when no tuple exists (e.g. fewer than 3 classes for the second term).

    Raises:
        ValueError: ``B < 2``, mismatched lengths, non-finite embeddings, labels not 1-D or negative, bad options.
        TypeError: labels not integer, embeddings not floating.

    Example:
        >>> emb, y = torch.randn(12, 16), torch.arange(4).repeat_interleave(3)
        >>> quadruplet_loss(emb, y).shape
        torch.Size([])

    Complexity (``"all"``): ``O(B² log P)`` time and ``O(B²)`` memory for both terms (``P`` positive pairs): the
    distances are bucketed between sorted thresholds instead of enumerating the ``P·B²`` quadruplets.
    """
    embeddings, labels = check_tuple_inputs(embeddings, labels)
    dist = pairwise_distance(embeddings, distance=distance, normalize=normalize)

    loss = triplet_term(dist, labels, margin=margin1, mining=mining, reduction=reduction)
    if pair_weight > 0:
        pair_term = _pair_term_all if mining == "all" else _pair_term_hard
        loss = loss + pair_weight * pair_term(dist, labels, margin2, reduction)
    return loss


@register_loss("quadruplet", space="sphere")
class QuadrupletLoss(FunctionalLoss):
    """Module form of :func:`quadruplet_loss`; see there for the equation, arguments and reference.

    Example:
        >>> loss_fn = QuadrupletLoss(margin1=0.2, margin2=0.1)
        >>> loss = loss_fn(torch.randn(12, 16), torch.arange(4).repeat_interleave(3))
    """

    function = staticmethod(quadruplet_loss)
    options = ("margin1", "margin2", "pair_weight", "mining", "distance", "normalize", "reduction")
