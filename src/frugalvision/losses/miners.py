"""Vectorised in-batch miners returning ``(anchor, positive, negative)`` index tensors.

A triplet ``(a, p, n)`` is *valid* when ``a != p``, ``labels[a] == labels[p]`` and ``labels[n] != labels[a]``.
The miners take a precomputed distance matrix (:func:`frugalvision.losses.distances.pairwise_distance`) and
never loop over the batch in Python. Triplets come out sorted by ``(a, p, n)``, like pytorch-metric-learning's
``get_all_triplets_indices``. Selection uses the detached distances; pass the matrix the loss uses so the mined
triplets and the loss agree.

Memory: :func:`all_triplets` and :func:`semihard_triplets` work through a ``(P, B)`` mask, ``P`` being the number
of positive pairs (``B·(m−1)`` for batches of ``m`` samples per class), not the ``(B, B, B)`` cube.
"""

from __future__ import annotations

import torch

from frugalvision._checks import check_class_labels, check_ndim, check_positive, check_tensor

__all__ = ["all_triplets", "hard_triplets", "positive_pairs", "semihard_triplets"]

IndexTriplet = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _check_dist(dist: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    dist = check_tensor(dist, "dist")
    check_ndim(dist, 2, "dist", "(B, B)")
    if dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (B, B) matrix, got shape {tuple(dist.shape)}")
    return dist, check_class_labels(labels, dist.shape[0])


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(a, p)``, ``a != p``, with equal labels: two ``(P,)`` int64 tensors sorted by ``(a, p)``."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    same.fill_diagonal_(False)
    a, p = same.nonzero(as_tuple=True)
    return a, p


def _negatives_of(labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``(P, B)`` mask: ``[q, n]`` is true when ``labels[n] != labels[anchors[q]]``."""
    return labels[anchors].unsqueeze(1) != labels.unsqueeze(0)


def _expand(a: torch.Tensor, p: torch.Tensor, keep: torch.Tensor) -> IndexTriplet:
    pair, n = keep.nonzero(as_tuple=True)
    return a[pair], p[pair], n


def all_triplets(labels: torch.Tensor) -> IndexTriplet:
    """Every valid triplet of the batch (Hermans et al. 2017's "batch all").

    Args:
        labels: ``(B,)`` integer class ids.

    Returns:
        ``(anchor, positive, negative)``, three ``(T,)`` int64 tensors, ``T = Σ_a (#pos(a) · #neg(a))``.
    """
    labels = check_class_labels(labels, check_tensor(labels, "labels").shape[0])
    a, p = positive_pairs(labels)
    return _expand(a, p, _negatives_of(labels, a))


def semihard_triplets(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> IndexTriplet:
    """Valid triplets whose negative is farther than the positive but within the margin.

    Keeps ``d(a, p) < d(a, n) <= d(a, p) + margin`` (Schroff et al. 2015's semi-hard negatives; all of them, as
    pytorch-metric-learning's ``TripletMarginMiner(type_of_triplets="semihard")``, not one per pair).

    Args:
        dist: ``(B, B)`` distance matrix (smaller = closer).
        labels: ``(B,)`` integer class ids.
        margin: the triplet margin, in the units of ``dist``; ``> 0``.
    """
    dist, labels = _check_dist(dist, labels)
    check_positive(margin, "margin")
    a, p = positive_pairs(labels)
    keep = _semihard_mask(dist.detach(), labels, a, p, margin)
    return _expand(a, p, keep)


def _semihard_mask(
    dist: torch.Tensor, labels: torch.Tensor, a: torch.Tensor, p: torch.Tensor, margin: float
) -> torch.Tensor:
    d_ap = dist[a, p].unsqueeze(1)
    d_an = dist[a]
    return _negatives_of(labels, a) & (d_an > d_ap) & (d_an <= d_ap + margin)


def hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> IndexTriplet:
    """One triplet per anchor: its farthest positive and its closest negative (Hermans et al. 2017, "batch hard").

    Anchors without a positive or without a negative in the batch are skipped. Equals pytorch-metric-learning's
    ``BatchHardMiner`` (ties go to the lowest index).

    Args:
        dist: ``(B, B)`` distance matrix (smaller = closer).
        labels: ``(B,)`` integer class ids.

    Returns:
        ``(anchor, positive, negative)``, three ``(A,)`` int64 tensors, ``A <= B``, sorted by anchor.
    """
    dist, labels = _check_dist(dist, labels)
    d = dist.detach()
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    pos = same.clone()
    pos.fill_diagonal_(False)
    hardest_pos = d.masked_fill(~pos, float("-inf")).argmax(dim=1)
    hardest_neg = d.masked_fill(same, float("inf")).argmin(dim=1)
    anchors = (pos.any(dim=1) & (~same).any(dim=1)).nonzero(as_tuple=True)[0]
    return anchors, hardest_pos[anchors], hardest_neg[anchors]
