"""Pairwise sigmoid loss of SigLIP (Zhai, Mustafa, Kolesnikov, Beyer, ICCV 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_class_labels, check_embedding_batch, check_positive, check_tensor
from frugalvision.losses._registry import register_loss

__all__ = ["SigLIPLoss", "siglip_loss"]


def siglip_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    log_temperature: torch.Tensor | float,
    bias: torch.Tensor | float,
    text_embeddings: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    r"""Sigmoid loss over all pairs of a batch (SigLIP).

    Zhai, Mustafa, Kolesnikov, Beyer, "Sigmoid Loss for Language Image Pre-Training", ICCV 2023,
    https://arxiv.org/abs/2303.15343 (eq. 1 and Algorithm 1):

    .. math::
        L = -\frac{1}{|B|} \sum_{i=1}^{|B|} \sum_{j} \log \sigma\big(z_{ij}\,(t\, x_i \cdot y_j + b)\big),
        \qquad t = e^{t'}

    with ``z_ij = 1`` for a matching pair and ``-1`` otherwise, computed as ``logsigmoid`` (stable for any logit).

    * Image–text (the paper): ``x = embeddings (B, D)``, ``y = text_embeddings (B, D)``. Without ``labels``,
      row ``i`` matches text ``i`` only; with ``labels (B,)`` (text ``j`` carries ``labels[j]``),
      every pair with equal labels matches, e.g. several captions of one class.
    * Image–image: ``text_embeddings=None`` and ``labels (B,)`` required; ``x = y = embeddings``, pairs with equal
      labels match, and the ``B`` trivial self-pairs ``i == j`` are left out of the sum.

    Args:
        embeddings: ``(B, D)`` image embeddings.
        labels: ``(B,)`` integers, see above.
        log_temperature: ``t'`` (scalar tensor or float); the paper initialises it to ``log 10``.
        bias: ``b`` (scalar tensor or float); the paper initialises it to ``-10``.
        text_embeddings: ``(B, D)`` text embeddings or ``None``.
        normalize: L2-normalise both sides first, as the paper does (default ``True``).

    Returns:
        Scalar loss, normalised by the batch size ``B`` as in the paper (not by the number of pairs).

    Raises:
        ValueError: wrong shapes, NaN values, mismatched batch or feature sizes, negative labels, or no labels for
            the image–image form.
        TypeError: non-tensor inputs or non-integer labels.

    Example:
        >>> x, y = torch.randn(4, 8), torch.randn(4, 8)
        >>> siglip_loss(x, text_embeddings=y, log_temperature=math.log(10), bias=-10.0).ndim
        0
    """
    embeddings = check_embedding_batch(embeddings, "embeddings")
    batch = embeddings.shape[0]
    if text_embeddings is not None:
        text_embeddings = check_embedding_batch(text_embeddings, "text_embeddings", dim=embeddings.shape[1])
    if labels is not None:
        labels = check_class_labels(labels, batch).to(embeddings.device)
    if text_embeddings is None and labels is None:
        raise ValueError(
            "siglip_loss needs text_embeddings (image–text pairs) or labels (image–image pairs), got neither"
        )
    if text_embeddings is not None and text_embeddings.shape[0] != batch:
        raise ValueError(
            f"embeddings and text_embeddings must have the same batch size (row i of both is a pair), got "
            f"{batch} and {text_embeddings.shape[0]}"
        )
    if batch == 0:
        return embeddings.sum() * 0.0

    x = F.normalize(embeddings, dim=1) if normalize else embeddings
    if text_embeddings is None:
        y = x
    else:
        y = F.normalize(text_embeddings, dim=1) if normalize else text_embeddings
    log_temperature = torch.as_tensor(log_temperature, dtype=x.dtype, device=x.device)
    bias = torch.as_tensor(bias, dtype=x.dtype, device=x.device)
    logits = log_temperature.exp() * (x @ y.T) + bias

    if labels is None:
        matches = torch.eye(batch, dtype=torch.bool, device=x.device)
    else:
        matches = labels.unsqueeze(1) == labels.unsqueeze(0)
    signs = matches.to(x.dtype) * 2 - 1
    pair_loss = -F.logsigmoid(signs * logits)
    if text_embeddings is None:  # image–image: drop the trivial self-pairs
        pair_loss = pair_loss.masked_fill(torch.eye(batch, dtype=torch.bool, device=x.device), 0.0)
    return pair_loss.sum() / batch


@register_loss("siglip", space="sphere")
class SigLIPLoss(nn.Module):
    """Module form of :func:`siglip_loss` holding the learnable log-temperature ``t'`` and bias ``b``.

    Args:
        init_temperature: initial ``t = exp(t')`` (paper: 10, i.e. ``t' = log 10``).
        init_bias: initial ``b`` (paper: -10, which makes the initial logits strongly negative so the many
            negative pairs do not dominate the first steps).
        normalize: L2-normalise the embeddings first (paper: yes).
        learnable: make ``t'`` and ``b`` trainable parameters (paper: yes); otherwise fixed buffers.

    Call as ``loss(image_embeddings, text_embeddings=text)`` (row ``i`` matches row ``i``), or
    ``loss(embeddings, labels)`` for image–image pairs with equal labels as positives.

    Example:
        >>> loss = SigLIPLoss()
        >>> out = loss(torch.randn(6, 16), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> out.backward(); loss.log_temperature.grad is not None
        True
    """

    def __init__(
        self,
        init_temperature: float = 10.0,
        init_bias: float = -10.0,
        normalize: bool = True,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        check_positive(init_temperature, "init_temperature")
        if not math.isfinite(init_bias):
            raise ValueError(f"init_bias must be finite, got {init_bias}")
        self.normalize = bool(normalize)
        log_temperature = torch.tensor(math.log(init_temperature))
        bias = torch.tensor(float(init_bias))
        if learnable:
            self.log_temperature = nn.Parameter(log_temperature)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_temperature", log_temperature)
            self.register_buffer("bias", bias)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        text_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(embeddings, "embeddings")
        return siglip_loss(
            embeddings,
            labels,
            log_temperature=self.log_temperature,
            bias=self.bias,
            text_embeddings=text_embeddings,
            normalize=self.normalize,
        )

    def extra_repr(self) -> str:
        t, b = float(self.log_temperature.detach().exp()), float(self.bias.detach())
        return f"temperature={t:.4g}, bias={b:.4g}"
