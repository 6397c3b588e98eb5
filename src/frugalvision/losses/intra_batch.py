"""Intra-batch connections loss (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_class_labels, check_embedding_batch, check_positive, check_tensor
from frugalvision.layers.message_passing import IntraBatchMPN
from frugalvision.losses._base import (
    FunctionalLoss,
    OptionCheck,
    check_paired_batches,
    checked_options,
    in_range,
    non_negative,
    parameter,
    positive,
)
from frugalvision.losses._registry import register_loss

__all__ = ["IntraBatchLoss", "intra_batch_loss"]


def _size(value: int, name: str) -> int:
    check_positive(value, name)
    return value


@checked_options(
    temperature=positive,
    label_smoothing=in_range(0, 1),
    backbone_weight=non_negative,
    mpn_weight=non_negative,
)
def intra_batch_loss(
    backbone_logits: torch.Tensor,
    refined_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.2,
    label_smoothing: float = 0.1,
    backbone_weight: float = 1.0,
    mpn_weight: float = 1.0,
) -> torch.Tensor:
    r"""``w_b CE_ε(s_b / T, y) + w_m CE_ε(s_m / T, y)``: the two classification terms of the intra-batch method.

    ``s_b (B, C)`` are class logits from the backbone embeddings, ``s_m (B, C)`` from the embeddings refined by
    message passing, ``CE_ε`` is cross-entropy with label smoothing ``ε`` (target ``(1 - ε) onehot + ε / C``).

    Raises:
        ValueError: shapes that disagree, labels outside ``[0, C)``, non-positive temperature, smoothing outside
            ``[0, 1)`` or negative weights.
    """
    backbone_logits, refined_logits = check_paired_batches(
        backbone_logits, refined_logits, ("backbone_logits", "refined_logits"), "(B, C)"
    )
    labels = check_class_labels(labels, backbone_logits.shape[0], num_classes=backbone_logits.shape[1])
    labels = labels.to(backbone_logits.device)
    if labels.numel() == 0:
        return (backbone_logits.sum() + refined_logits.sum()) * 0.0
    backbone_term = F.cross_entropy(backbone_logits / temperature, labels, label_smoothing=label_smoothing)
    refined_term = F.cross_entropy(refined_logits / temperature, labels, label_smoothing=label_smoothing)
    return backbone_weight * backbone_term + mpn_weight * refined_term


@register_loss("intra_batch", "intrabatch", space="sphere")
class IntraBatchLoss(FunctionalLoss):
    r"""Classification through a message-passing network over the mini-batch (intra-batch connections).

    Seidenschwarz, Elezi, Leal-Taixé, "Learning Intra-Batch Connections for Deep Metric Learning", ICML 2021,
    https://arxiv.org/abs/2102.07753 (official code github.com/dvl-tum/intra_batch_connections). The batch's
    embeddings are the nodes of a fully connected graph; a message-passing network
    (:class:`~frugalvision.layers.IntraBatchMPN`) lets every sample attend to all others, and a classifier on the
    refined nodes is trained together with a classifier on the backbone embeddings:

    .. math::
        L = w_b\,\mathrm{CE}_\varepsilon\big(W_b x / T,\ y\big)
          + w_m\,\mathrm{CE}_\varepsilon\big(W_m\,\mathrm{BN}(\mathrm{MPN}(\hat x)) / T,\ y\big),
        \qquad \hat x = x / \|x\|

    As in the official code the backbone classifier ``W_b`` (with bias) sees the raw embedding ``x``, the MPN sees
    the L2-normalised ``x̂``, and its output passes a BatchNorm "neck" (bias frozen at 0) and a bias-free
    classifier ``W_m``. **At test time only the backbone embedding is used**: the MPN, the classifiers and this
    loss are training-time modules that shape the backbone, and are not needed for retrieval.

    Defaults follow the official CUB-200 configuration: 1 layer, 2 heads, dropout 0.1, ``T = 0.2``, label smoothing
    ``ε = 0.1`` (their ``CrossEntropyLabelSmooth``), ``w_b = w_m = 1``. The official Cars196 configuration uses
    2 layers, 8 heads, ``T = 0.11``; SOP 1 layer, 8 heads, ``T = 0.60``.

    Args:
        embedding_size: ``D``, size of the backbone embeddings.
        num_classes: ``C``, number of training classes.
        num_layers: message-passing layers.
        num_heads: attention heads (``D`` must be divisible by it).
        dropout: dropout inside the message-passing layers.
        temperature: ``T`` dividing both logits.
        label_smoothing: ``ε`` of both cross-entropies.
        backbone_weight: ``w_b``.
        mpn_weight: ``w_m``.
        knn: ``None`` for the fully connected graph (paper), or ``k`` for a k-nearest-neighbour graph.

    Shapes:
        ``embeddings (B, D)``, ``labels (B,)`` int64 in ``[0, C)``, ``B >= 2`` in training mode (BatchNorm).

    Raises:
        ValueError: bad sizes or hyper-parameters; at call time mismatched batch sizes, wrong ``D``, labels out of
            range, NaN embeddings, or a single-sample batch in training mode.

    Example:
        >>> loss = IntraBatchLoss(embedding_size=64, num_classes=10)
        >>> out = loss(torch.randn(12, 64), torch.randint(0, 10, (12,)))
        >>> out.backward()
    """

    function = staticmethod(intra_batch_loss)
    options = ("temperature", "label_smoothing", "backbone_weight", "mpn_weight")
    leading = (
        parameter("embedding_size", "int"),
        parameter("num_classes", "int"),
        parameter("num_layers", "int", 1, keyword_only=True),
        parameter("num_heads", "int", 2, keyword_only=True),
        parameter("dropout", "float", 0.1, keyword_only=True),
    )
    trailing = (parameter("knn", "int | None", None, keyword_only=True),)
    own_checks: ClassVar[dict[str, OptionCheck]] = {"embedding_size": _size, "num_classes": _size}
    embedding_size: int
    num_classes: int
    num_layers: int
    num_heads: int
    dropout: float
    knn: int | None

    def setup(self) -> None:
        d = self.embedding_size
        self.backbone_classifier = nn.Linear(d, self.num_classes)
        self.mpn = IntraBatchMPN(d, self.num_layers, self.num_heads, self.dropout, self.knn)
        self.neck = nn.BatchNorm1d(d)
        self.neck.bias.requires_grad_(False)  # "no shift", as in the official neck
        self.mpn_classifier = nn.Linear(d, self.num_classes, bias=False)
        nn.init.normal_(self.mpn_classifier.weight, std=0.001)  # the official classifier initialisation

    def refine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Node embeddings ``(B, D)`` after message passing over the batch ``embeddings (B, D)``."""
        return self.mpn(F.normalize(embeddings, dim=1))

    def logits(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(B, C)`` from the backbone embeddings and from the refined embeddings (before ``/ T``)."""
        return self.backbone_classifier(embeddings), self.mpn_classifier(self.neck(self.refine(embeddings)))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_tensor(embeddings, "embeddings")
        embeddings = check_embedding_batch(embeddings, "embeddings", dim=self.embedding_size)
        check_class_labels(labels, embeddings.shape[0], num_classes=self.num_classes)
        if embeddings.shape[0] == 0:
            return embeddings.sum() * 0.0
        if self.training and embeddings.shape[0] < 2:
            raise ValueError(
                f"IntraBatchLoss needs a batch of at least 2 samples in training mode, got {embeddings.shape[0]}"
            )
        backbone_logits, refined_logits = self.logits(embeddings)
        return super().forward(backbone_logits, refined_logits, labels)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, {super().extra_repr()}"
