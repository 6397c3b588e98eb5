"""Pairwise distance matrices shared by the tuple losses (triplet, quadruplet).

Every option is a *distance* (smaller = more similar), so margins and miners read the same for all of them:

* ``"euclidean"``: ``‖x − y‖₂``;
* ``"squared_euclidean"``: ``‖x − y‖₂²``;
* ``"cosine"``: ``1 − cos(x, y)`` (always on L2-normalised rows).

pytorch-metric-learning expresses cosine as a similarity (``CosineSimilarity``, "inverted"); because
``(1 − s_ap) − (1 − s_an) = s_an − s_ap``, a margin loss on our cosine distance equals pml's on its similarity.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from frugalvision._checks import check_choice

__all__ = ["DISTANCES", "DistanceName", "cosine_matrix", "pairwise_distance", "safe_sqrt"]

DistanceName = Literal["euclidean", "squared_euclidean", "cosine"]
DISTANCES: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine")


def _squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # ‖x‖² + ‖y‖² − 2 x·y with one matmul, clamped at 0 against rounding.
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    return sq.clamp_min(0.0)


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None, *, eps: float = 1e-12) -> torch.Tensor:
    """``(N, M)`` cosines between the rows of ``x (N, D)`` and ``y (M, D)`` (``y = x`` when omitted).

    Equal to ``normalize(x) @ normalize(y).T`` (norms clamped at ``eps`` like ``F.normalize``), but when the
    output is smaller than the inputs it divides the ``(N, M)`` product by the outer product of the norms instead
    of normalising the ``(N, D)`` and ``(M, D)`` inputs: a classifier with ``C << D`` or a batch with ``B < D``
    then spends its elementwise work, forward and backward, on ``N·M`` entries rather than ``(N + M)·D``.
    """
    same = y is None
    y = x if y is None else y
    if x.shape[0] * y.shape[0] < (x.shape[0] + (0 if same else y.shape[0])) * x.shape[1]:
        x_norm = x.norm(dim=1).clamp_min(eps)
        y_norm = x_norm if same else y.norm(dim=1).clamp_min(eps)
        return (x @ y.T) / (x_norm.unsqueeze(1) * y_norm.unsqueeze(0))
    x_unit = F.normalize(x, dim=1, eps=eps)
    y_unit = x_unit if same else F.normalize(y, dim=1, eps=eps)
    return x_unit @ y_unit.T


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient is 0 (not inf/NaN) where ``x`` is 0.

    Values below the dtype's smallest normal number are clamped before the root; the clamp's zero gradient then
    cancels the root's huge one. Used for distances between identical rows.
    """
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def pairwise_distance(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    distance: DistanceName = "euclidean",
    normalize: bool = True,
) -> torch.Tensor:
    """Distance matrix ``(N, M)`` between the rows of ``x (N, D)`` and ``y (M, D)`` (``y = x`` when omitted).

    Args:
        x: ``(N, D)`` floating tensor.
        y: ``(M, D)`` or ``None``.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"`` (``1 − cos``, in ``[0, 2]``).
        normalize: L2-normalise the rows first (pml's ``LpDistance`` default). ``"cosine"`` always normalises.

    The matrix is computed with one matrix product (``‖x‖² + ‖y‖² − 2xy``, clamped at 0), like ``torch.cdist``'s
    fast path; the Euclidean root has a finite gradient at 0.

    Raises:
        ValueError: an unknown ``distance``.
    """
    check_choice(distance, DISTANCES, "distance")
    if normalize or distance == "cosine":
        cos = cosine_matrix(x, y)
        if distance == "cosine":
            return 1.0 - cos
        sq = (2.0 - 2.0 * cos).clamp_min(0.0)  # ‖x̂ − ŷ‖² of unit vectors
    else:
        sq = _squared_euclidean(x, x if y is None else y)
    return sq if distance == "squared_euclidean" else safe_sqrt(sq)
