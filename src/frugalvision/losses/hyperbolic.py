"""Hyperbolic pairwise cross-entropy of Hyp-ViT (Ermolov et al., CVPR 2022)."""

from __future__ import annotations

import math

import torch

from frugalvision._checks import check_class_labels, check_embedding_batch
from frugalvision.layers.hyperbolic import poincare_distance_matrix
from frugalvision.losses._base import FunctionalLoss, checked_options, positive
from frugalvision.losses._registry import register_loss

__all__ = ["HyperbolicPairwiseCELoss", "hyperbolic_pairwise_ce_loss"]


def _check_inside_ball(z: torch.Tensor, c: float, name: str) -> None:
    radius = 1 / math.sqrt(c)
    norms = z.detach().norm(dim=1)
    if bool((norms >= radius).any()):
        worst = int(norms.argmax())
        raise ValueError(
            f"{name} must lie inside the Poincaré ball of radius 1/sqrt(c) = {radius:.4g}; row {worst} has norm "
            f"{float(norms[worst]):.4g}. Map Euclidean features into the ball first, e.g. with "
            "frugalvision.layers.HyperbolicProjection or frugalvision.layers.to_poincare"
        )


@checked_options(c=positive, temperature=positive)
def hyperbolic_pairwise_ce_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    other_view: torch.Tensor | None = None,
    c: float = 0.1,
    temperature: float = 0.2,
) -> torch.Tensor:
    r"""Pairwise cross-entropy with hyperbolic distances, the loss of Hyp-ViT.

    Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets, "Hyperbolic Vision Transformers: Combining Improvements in
    Metric Learning", CVPR 2022, https://arxiv.org/abs/2203.10833 (official code github.com/htdt/hyp_metric,
    ``contrastive_loss`` in ``train.py``). For an anchor ``z_i``, its positives ``P(i)`` (other rows with the same
    label) and all other rows ``A(i) = {j != i}``:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
            \frac{\exp(-d_c(z_i, z_p) / \tau)}{\sum_{a \in A(i)} \exp(-d_c(z_i, z_a) / \tau)}, \qquad
        L = \operatorname{mean}_{i : |P(i)| > 0} \ell_i

    with :func:`~frugalvision.layers.poincare_distance_matrix` as ``d_c``. With two views per sample (one positive
    per anchor) this is the paper's loss; the official script adds the two directions ``L(z1, z2) + L(z2, z1)``,
    which is **twice** this mean over all ``2B`` anchors. With class labels and several samples per class it is
    the supervised-contrastive (SupCon "out") generalisation, as in the repository's ``hyp_loss``.

    Args:
        embeddings: points of the Poincaré ball ``(N, D)``, e.g. the output of
            :class:`~frugalvision.layers.HyperbolicProjection`.
        labels: ``(N,)`` integers; rows with equal labels are positives of each other. May be ``None`` when
            ``other_view`` is given: row ``k`` of ``embeddings`` and of ``other_view`` are then the only positives.
        other_view: optional second view ``(N, D)``; equivalent to ``embeddings = cat([embeddings, other_view])``
            with ``labels = cat([labels, labels])`` (or ``cat([arange(N), arange(N)])`` when ``labels`` is None).
        c: curvature magnitude of the ball (paper: 0.1).
        temperature: ``τ`` (paper and official defaults: 0.2).

    Returns:
        Scalar loss. When no anchor has a positive, a zero that still carries a gradient.

    Raises:
        ValueError: wrong shapes, NaN values, mismatched sizes, negative labels, non-positive ``c`` or ``τ``, or
            points outside the ball (the message says how to map features into it).
        TypeError: non-tensor inputs or non-integer labels.

    Example:
        >>> from frugalvision.layers import to_poincare
        >>> z1, z2 = to_poincare(torch.randn(8, 16), c=0.1), to_poincare(torch.randn(8, 16), c=0.1)
        >>> loss = hyperbolic_pairwise_ce_loss(z1, other_view=z2)   # views of the same 8 images
        >>> loss.ndim
        0
    """
    embeddings = check_embedding_batch(embeddings, "embeddings")
    if other_view is not None:
        other_view = check_embedding_batch(other_view, "other_view", dim=embeddings.shape[1])
        if other_view.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"embeddings and other_view must have the same batch size, got {embeddings.shape[0]} and "
                f"{other_view.shape[0]}"
            )
        if labels is None:
            labels = torch.arange(embeddings.shape[0], device=embeddings.device)
        else:
            labels = check_class_labels(labels, embeddings.shape[0]).to(embeddings.device)
        embeddings = torch.cat([embeddings, other_view])
        labels = torch.cat([labels, labels])
    elif labels is None:
        raise ValueError(
            "labels are required unless other_view is given (rows with equal labels are positives)"
        )
    labels = check_class_labels(labels, embeddings.shape[0]).to(embeddings.device)
    _check_inside_ball(embeddings, c, "embeddings" if other_view is None else "embeddings and other_view")

    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    num_positives = positives.sum(dim=1)
    anchors = num_positives > 0
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0

    logits = -poincare_distance_matrix(embeddings, embeddings, c) / temperature
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -positive_log_prob[anchors] / num_positives[anchors]
    return per_anchor.mean()


@register_loss("hyperbolic_pce", "hyperbolic", space="poincare")
class HyperbolicPairwiseCELoss(FunctionalLoss):
    """Module form of :func:`hyperbolic_pairwise_ce_loss` (Hyp-ViT, CVPR 2022); no learnable parameters.

    Args:
        c: curvature magnitude (paper: 0.1).
        temperature: ``τ`` (paper: 0.2).

    Call as ``loss(embeddings (N, D), labels (N,))`` with labels marking positives (sample ids of augmented views,
    or class labels), or ``loss(z1, None, other_view=z2)`` for two views of the same ``N`` samples. Embeddings
    must lie inside the ball of radius ``1/sqrt(c)``; put :class:`~frugalvision.layers.HyperbolicProjection` on
    the backbone. L2-normalised embeddings also qualify for ``c < 1``.

    Example:
        >>> from frugalvision.layers import HyperbolicProjection
        >>> head, loss = HyperbolicProjection(32, 16), HyperbolicPairwiseCELoss()
        >>> z = head(torch.randn(6, 32))
        >>> loss(z, torch.tensor([0, 0, 1, 1, 2, 2])).ndim
        0
    """

    function = staticmethod(hyperbolic_pairwise_ce_loss)
    options = ("c", "temperature")
