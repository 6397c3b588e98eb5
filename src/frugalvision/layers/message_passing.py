r"""Message passing over the mini-batch graph, after Seidenschwarz, Elezi and Leal-Taixé (ICML 2021).

"Learning Intra-Batch Connections for Deep Metric Learning", https://arxiv.org/abs/2102.07753, official code
github.com/dvl-tum/intra_batch_connections. The samples of a mini-batch are the nodes of a graph (fully connected
in the paper, self-loops included); each node collects messages from its neighbours with multi-head dot-product
attention and is refined by a transformer-style block:

.. math::
    \alpha^h_{ij} = \operatorname{softmax}_{j \in \mathcal{N}(i)}
        \frac{\langle W^h_q x_i, W^h_k x_j \rangle}{\sqrt{d_h}}, \qquad
    m_i = W_o \big\Vert_h \sum_{j \in \mathcal{N}(i)} \alpha^h_{ij} W^h_v x_j

    x_i \leftarrow \operatorname{LN}(x_i + m_i), \qquad
    x_i \leftarrow \operatorname{LN}(x_i + W_2\, \operatorname{ReLU}(W_1 x_i))

(dropout after the attention weights, after ``m_i``, inside and after the feed-forward block, all 0.1 in the
official configs). The network is a training-time device: the refined embeddings feed a classifier whose loss
shapes the backbone, and at test time the backbone embedding is used alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_finite, check_positive, check_tensor

__all__ = [
    "IntraBatchMPN",
    "MessagePassingLayer",
    "MultiHeadGraphAttention",
    "full_graph",
    "knn_graph",
]


def full_graph(num_nodes: int, device: torch.device | None = None) -> torch.Tensor:
    """Adjacency of the fully connected graph with self-loops, the paper's choice: all-``True`` ``(B, B)`` bool."""
    check_positive(num_nodes, "num_nodes")
    return torch.ones(num_nodes, num_nodes, dtype=torch.bool, device=device)


def knn_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    """Adjacency ``A (B, B)`` where ``A[i, j]`` is True when ``x_j`` is among the ``k`` rows most cosine-similar to
    ``x_i`` (itself included, so every node keeps its self-loop). ``k >= B`` gives the full graph.

    Row ``i`` of the adjacency lists the neighbours node ``i`` receives messages from.
    """
    check_tensor(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {tuple(x.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    num_nodes = x.shape[0]
    if k >= num_nodes:
        return full_graph(num_nodes, device=x.device)
    with torch.no_grad():
        unit = F.normalize(x, dim=1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(float("inf"))  # a node is always its own neighbour
        neighbours = similarity.topk(k, dim=1).indices
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.bool, device=x.device)
    adjacency.scatter_(1, neighbours, True)
    return adjacency


def _check_adjacency(adjacency: torch.Tensor, num_nodes: int) -> None:
    check_tensor(adjacency, "adjacency")
    if adjacency.dtype != torch.bool or adjacency.shape != (num_nodes, num_nodes):
        raise ValueError(
            f"adjacency must be a bool ({num_nodes}, {num_nodes}) tensor, got {adjacency.dtype} "
            f"{tuple(adjacency.shape)}"
        )
    if not bool(adjacency.any(dim=1).all()):
        raise ValueError("every node needs at least one neighbour: adjacency has an all-False row")


class MultiHeadGraphAttention(nn.Module):
    """Multi-head scaled dot-product attention of every node over its graph neighbours.

    Args:
        dim: node feature size ``D``; must be divisible by ``num_heads``.
        num_heads: number of heads ``H`` (head size ``D / H``).
        dropout: dropout on the attention weights (official code: 0.1).

    Shapes:
        ``x (B, D)``, ``adjacency (B, B)`` bool -> messages ``(B, D)`` and, if asked, the attention weights
        ``(H, B, B)`` before dropout (row ``i`` sums to 1 over the neighbours of ``i`` and is 0 elsewhere).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        check_positive(dim, "dim")
        check_positive(num_heads, "num_heads")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.query, self.key, self.value, self.out):  # the official initialisation
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_nodes = x.shape[0]
        heads = (self.num_heads, self.head_dim)
        q = self.query(x).view(num_nodes, *heads).transpose(0, 1)  # (H, B, d_h)
        k = self.key(x).view(num_nodes, *heads).transpose(0, 1)
        v = self.value(x).view(num_nodes, *heads).transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)  # (H, B, B): node i (row) looks at node j
        scores = scores.masked_fill(~adjacency, float("-inf"))
        weights = scores.softmax(dim=-1)
        messages = self.dropout(weights) @ v  # (H, B, d_h)
        messages = messages.transpose(0, 1).reshape(num_nodes, self.num_heads * self.head_dim)
        return self.out(messages), weights


class MessagePassingLayer(nn.Module):
    """One message-passing step: attention messages, residual + LayerNorm, feed-forward, residual + LayerNorm.

    Args:
        dim: node feature size.
        num_heads: attention heads.
        dropout: dropout on attention weights, messages and the feed-forward block (official: 0.1).
        ffn_ratio: hidden size of the feed-forward block as a multiple of ``dim`` (official: 4).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1, ffn_ratio: int = 4) -> None:
        super().__init__()
        check_positive(ffn_ratio, "ffn_ratio")
        self.attention = MultiHeadGraphAttention(dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_ratio * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_ratio * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D)``, ``adjacency (B, B)`` -> refined ``(B, D)`` and attention weights ``(H, B, B)``."""
        messages, weights = self.attention(x, adjacency)
        x = self.norm1(x + self.dropout1(messages))
        x = self.norm2(x + self.dropout2(self.ffn(x)))
        return x, weights


class IntraBatchMPN(nn.Module):
    """Message-passing network over a mini-batch: a linear input projection, then ``num_layers`` layers.

    Args:
        dim: embedding size ``D`` (input and output).
        num_layers: message-passing steps. Official configs: 1 (CUB-200, SOP), 2 (Cars196). Default 1.
        num_heads: attention heads. Official configs: 2 (CUB-200), 8 (Cars196, SOP). Default 2.
        dropout: dropout probability everywhere in the layers (official: 0.1).
        knn: ``None`` for the fully connected graph (the paper's choice); an int ``k`` connects each node to its
            ``k`` most cosine-similar nodes (itself included).

    Shapes:
        ``x (B, D)`` -> ``(B, D)``. The network is permutation equivariant: permuting the batch permutes the output.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``, non-positive sizes; at call time a wrong shape,
        a bad adjacency or NaN features.

    Example:
        >>> mpn = IntraBatchMPN(64, num_heads=2).eval()
        >>> mpn(torch.randn(8, 64)).shape
        torch.Size([8, 64])
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 1,
        num_heads: int = 2,
        dropout: float = 0.1,
        knn: int | None = None,
    ) -> None:
        super().__init__()
        check_positive(dim, "dim")
        check_positive(num_layers, "num_layers")
        if knn is not None and (isinstance(knn, bool) or not isinstance(knn, int) or knn < 1):
            raise ValueError(f"knn must be None (full graph) or a positive int, got {knn!r}")
        self.dim = dim
        self.knn = knn
        self.input_projection = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(MessagePassingLayer(dim, num_heads, dropout) for _ in range(num_layers))

    def graph(self, x: torch.Tensor) -> torch.Tensor:
        """The adjacency this network uses for the batch ``x (B, D)``."""
        return full_graph(x.shape[0], device=x.device) if self.knn is None else knn_graph(x, self.knn)

    def forward(
        self,
        x: torch.Tensor,
        adjacency: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Refine ``x (B, D)``; ``adjacency (B, B)`` bool overrides the graph; ``return_attention`` also returns the
        per-layer attention weights, a list of ``(H, B, B)`` tensors."""
        check_tensor(x, "x")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got shape {tuple(x.shape)}")
        check_finite(x, "x")
        if adjacency is None:
            adjacency = self.graph(x)
        _check_adjacency(adjacency, x.shape[0])
        h = self.input_projection(x)
        attention = []
        for layer in self.layers:
            h, weights = layer(h, adjacency)
            attention.append(weights)
        return (h, attention) if return_attention else h
