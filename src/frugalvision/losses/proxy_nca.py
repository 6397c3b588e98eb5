"""Proxy-based NCA losses: ProxyNCA (2017) and ProxyNCA++ (2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frugalvision._checks import check_positive
from frugalvision.losses._base import (
    ClassMatrixLoss,
    check_class_matrix_inputs,
    checked_options,
    parameter,
    positive,
)
from frugalvision.losses._registry import register_loss
from frugalvision.losses.distances import cosine_matrix

__all__ = ["ProxyNCALoss", "ProxyNCAPlusPlusLoss", "proxy_nca_loss", "proxy_nca_plus_plus_loss"]


def _proxy_logits(embeddings: torch.Tensor, proxies: torch.Tensor, scale: float) -> torch.Tensor:
    """``−scale · ‖x̂ − p̂‖²`` for L2-normalised rows, ``(B, C)``."""
    sq_dist = (2.0 - 2.0 * cosine_matrix(embeddings, proxies)).clamp_min(0.0)
    return -scale * sq_dist


def proxy_nca_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    *,
    scale: float = 1.0,
    exclude_positive: bool = True,
) -> torch.Tensor:
    r"""ProxyNCA: NCA against one learnable proxy per class.

    Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017,
    https://arxiv.org/abs/1703.07464, with ``d(x, p) = ‖x̂ − p̂‖²`` on L2-normalised embeddings and proxies:

    .. math:: L = -\log \frac{\exp(-s\, d(x, p_y))}{\sum_{z \in Z} \exp(-s\, d(x, p_z))}

    with ``Z`` all proxies but the positive one (the paper's form, ``exclude_positive=True``; the loss can then be
    negative) or all proxies (``exclude_positive=False``, which is what pytorch-metric-learning's
    ``ProxyNCALoss(softmax_scale=s)`` computes, and ProxyNCA++'s "proxy assignment probability").

    Args:
        embeddings: ``(B, D)`` floating tensor (normalised inside).
        labels: ``(B,)`` integer class ids in ``[0, C)``.
        proxies: ``(C, D)`` proxies (normalised inside).
        scale: ``s``, multiplies the squared distances (pml's ``softmax_scale``; 1 in the paper).
        exclude_positive: leave the positive proxy out of the denominator (paper; needs ``C >= 2``).

    Returns:
        Mean over the batch (scalar), computed in log space.

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-finite embeddings, ``scale <= 0``,
            ``exclude_positive`` with a single proxy.

    Example:
        >>> proxies = torch.randn(10, 32)
        >>> proxy_nca_loss(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]), proxies).shape
        torch.Size([])
    """
    check_positive(scale, "scale")
    embeddings, labels, proxies = check_class_matrix_inputs(embeddings, labels, proxies, "proxies")
    if exclude_positive and proxies.shape[0] < 2:
        raise ValueError("exclude_positive=True needs at least 2 proxies (num_classes >= 2)")
    if embeddings.shape[0] == 0:
        return embeddings.sum() * 0.0 + proxies.sum() * 0.0
    logits = _proxy_logits(embeddings, proxies, scale)
    if not exclude_positive:
        return F.cross_entropy(logits, labels)
    positive = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    return (torch.logsumexp(others, dim=1) - positive).mean()


@checked_options(temperature=positive)
def proxy_nca_plus_plus_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    *,
    temperature: float = 1.0 / 9.0,
) -> torch.Tensor:
    r"""ProxyNCA++: proxy assignment probability with low-temperature scaling.

    Teh, DeVries, Taylor, "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component Analysis",
    ECCV 2020, https://arxiv.org/abs/2004.01113 (official code github.com/euwern/proxynca_pp):

    .. math:: L = -\log \frac{\exp(-d(x̂, p̂_y) / T)}{\sum_{z=1}^{C} \exp(-d(x̂, p̂_z) / T)}, \qquad d = \|\cdot\|_2^2

    i.e. a softmax cross-entropy over all proxies, positive included. The official code multiplies both normalised
    vectors by ``sqrt(1/T) = 3``, which is ``T = 1/9``. Since ``‖x̂ − p̂‖² = 2 − 2cos``, this equals a
    normalised-softmax with logits ``(2/T)·cos``.

    Args:
        embeddings: ``(B, D)`` floating tensor (normalised inside).
        labels: ``(B,)`` integer class ids in ``[0, C)``.
        proxies: ``(C, D)`` proxies (normalised inside).
        temperature: ``T > 0`` (paper: 1/9). ``T = 1`` is plain ``cross_entropy(−‖x̂ − p̂‖², y)``.

    Returns:
        Mean over the batch (scalar).

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-finite embeddings, ``temperature <= 0``.

    Example:
        >>> proxies = torch.randn(10, 32)
        >>> proxy_nca_plus_plus_loss(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]), proxies).shape
        torch.Size([])
    """
    return proxy_nca_loss(embeddings, labels, proxies, scale=1.0 / temperature, exclude_positive=False)


class _ProxyLoss(ClassMatrixLoss):
    matrix_name = "proxies"
    proxies: torch.nn.Parameter

    def reset_parameters(self) -> None:
        """Proxies drawn from ``N(0, 1/64)``, as the official ProxyNCA++ code (``randn / 8``)."""
        torch.nn.init.normal_(self.proxies, std=1.0 / 8.0)


@register_loss("proxynca", "proxy_nca", space="sphere")
class ProxyNCALoss(_ProxyLoss):
    """ProxyNCA with its own ``proxies (num_classes, embedding_size)``; see :func:`proxy_nca_loss`.

    To reproduce pml's ``ProxyNCALoss(num_classes, embedding_size, softmax_scale=s)`` use ``softmax_scale=s,
    exclude_positive=False`` and copy ``proxies`` (same layout).

    Example:
        >>> loss_fn = ProxyNCALoss(num_classes=10, embedding_size=32)
        >>> loss = loss_fn(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]))
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        softmax_scale: float = 1.0,
        exclude_positive: bool = True,
        lr_multiplier: float = 1.0,
    ) -> None:
        check_positive(softmax_scale, "softmax_scale")
        if exclude_positive and num_classes < 2:
            raise ValueError("exclude_positive=True needs num_classes >= 2")
        super().__init__(num_classes, embedding_size, lr_multiplier)
        self.softmax_scale, self.exclude_positive = float(softmax_scale), bool(exclude_positive)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``embeddings (B, D)``, ``labels (B,)`` -> scalar loss."""
        return proxy_nca_loss(
            embeddings, labels, self.proxies, scale=self.softmax_scale, exclude_positive=self.exclude_positive
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, softmax_scale={self.softmax_scale}, "
            f"exclude_positive={self.exclude_positive}, lr_multiplier={self.lr_multiplier}"
        )


@register_loss("proxynca++", "proxyncapp", "proxy_nca_pp", "proxy_nca_plus_plus", space="sphere")
class ProxyNCAPlusPlusLoss(_ProxyLoss):
    """ProxyNCA++ with its own ``proxies (num_classes, embedding_size)``; see :func:`proxy_nca_plus_plus_loss`.

    The paper's four changes to ProxyNCA: (1) the proxy assignment probability (positive proxy in the
    denominator) and (2) low-temperature scaling ``T = 1/9`` on L2-normalised embeddings and proxies are this loss;
    (3) *fast moving proxies* is ``lr_multiplier``, read by :func:`frugalvision.losses.loss_param_groups`;
    (4) global *max* pooling belongs to the model head (``frugalvision.models``), not to the loss.

    On (3): the official code trains with Adam(eps=1.0) and proxies at lr 4e2 against 4e-3 for the network
    (x1e5 on CUB/Cars, x1e4 on SOP). With eps=1 and small gradients Adam acts like momentum SGD, so those
    ratios do not carry over to an optimiser with the usual eps=1e-8, where each step is ~lr in size whatever the
    gradient. Our default, x100, is the proxy/backbone ratio Proxy-Anchor (Kim et al. 2020) uses with AdamW; use
    the official ratios only together with Adam(eps=1.0).

    Example:
        >>> loss_fn = ProxyNCAPlusPlusLoss(num_classes=10, embedding_size=32)
        >>> loss = loss_fn(torch.randn(4, 32), torch.tensor([0, 3, 3, 9]))
    """

    function = staticmethod(proxy_nca_plus_plus_loss)
    options = ("temperature",)
    shown = ("lr_multiplier",)
    trailing = (parameter("lr_multiplier", "float", 100.0),)
