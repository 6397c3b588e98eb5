"""Pooling and embedding heads: what turns a backbone's feature map into a retrieval embedding.

* :class:`GeM` -- generalized-mean pooling with a learnable exponent (Radenović et al. 2018).
* :class:`GlobalPool` -- one door for ``"avg"``, ``"gem"``, ``"max"`` (ProxyNCA++'s fourth change) or
  ``"native"`` (the backbone's own pre-logits pooling, e.g. a ViT's class token) over CNN maps
  ``(B, C, H, W)``, channels-last maps ``(B, H, W, C)`` or transformer tokens ``(B, N, C)``.
* :class:`EmbeddingHead` -- linear or MLP projection, then L2 normalisation, a map into the Poincaré ball
  (Hyp-ViT, via :class:`~frugalvision.layers.HyperbolicProjection`) or nothing.

Example:
    >>> pool, head = GlobalPool("gem"), EmbeddingHead(1280, 128, normalization="l2")
    >>> head(pool(torch.randn(2, 1280, 7, 7))).norm(dim=1)  # doctest: +SKIP
    tensor([1.0000, 1.0000], grad_fn=...)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_choice, check_finite, check_positive, check_tensor
from frugalvision.layers.hyperbolic import HyperbolicProjection, to_poincare

__all__ = [
    "HEAD_KINDS",
    "NORMALIZATIONS",
    "POOLINGS",
    "EmbeddingHead",
    "GeM",
    "GlobalPool",
    "gem",
]

#: Pooling kinds accepted by :class:`GlobalPool`.
POOLINGS: tuple[str, ...] = ("native", "avg", "gem", "max")
#: Projection kinds accepted by :class:`EmbeddingHead`.
HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "identity")
#: Output normalisations accepted by :class:`EmbeddingHead`.
NORMALIZATIONS: tuple[str, ...] = ("l2", "poincare", "none")


def gem(x: torch.Tensor, p: torch.Tensor | float, dims: tuple[int, ...], eps: float = 1e-6) -> torch.Tensor:
    r"""Generalized mean over ``dims``: ``(mean(clamp(x, eps)^p))^(1/p)``.

    Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018,
    https://arxiv.org/abs/1711.02512, eq. 2. ``p = 1`` is average pooling; ``p -> inf`` tends to max pooling.
    Computed as ``m · mean((x/m)^p)^(1/p)`` with ``m`` the maximum, so large ``p`` cannot overflow.

    Args:
        x: activations; values below ``eps`` are clamped to ``eps`` (GeM is meant for non-negative maps).
        p: exponent ``> 0``, a float or a 0-d tensor (learnable).
        dims: dimensions pooled over.
        eps: lower clamp.
    """
    x = x.clamp(min=eps)
    peak = x.amax(dim=dims, keepdim=True).detach()
    scaled = (x / peak).pow(p).mean(dim=dims, keepdim=True).pow(1.0 / p) * peak
    return scaled.squeeze(dims)


class GeM(nn.Module):
    """Generalized-mean pooling with exponent ``p`` (learnable by default); see :func:`gem`.

    Args:
        p: initial exponent (paper: 3).
        learnable: make ``p`` a parameter (paper: yes). The frozen-backbone fast path caches pooled features, so
            ``p`` is fixed there.
        eps: lower clamp of the activations.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive(p, "gem_p")
        check_positive(eps, "eps")
        value = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
        return gem(x, self.p.clamp(min=1e-3), dims, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.4g}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class GlobalPool(nn.Module):
    """Global pooling of a backbone's unpooled output to ``(B, C)``.

    Args:
        kind: ``"avg"``, ``"gem"``, ``"max"`` or ``"native"`` (the backbone's own pooling: timm's pre-logits, i.e.
            average for CNNs and the class token for most ViTs; :class:`~frugalvision.models.EmbeddingModel`
            then calls ``backbone.forward`` and this module is not used).
        gem_p: initial GeM exponent.
        gem_learnable: learnable GeM exponent.
        num_prefix_tokens: leading tokens (class / register tokens) dropped before pooling token outputs.
        channels_last: 4-D inputs are ``(B, H, W, C)`` (timm models with ``output_fmt == "NHWC"``, e.g. Swin).

    Shapes:
        ``(B, C, H, W)``, ``(B, H, W, C)`` (``channels_last``) or ``(B, N, C)`` tokens -> ``(B, C)``.
    """

    def __init__(
        self,
        kind: str = "avg",
        *,
        gem_p: float = 3.0,
        gem_learnable: bool = True,
        num_prefix_tokens: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.kind = check_choice(kind, POOLINGS, "pooling")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.channels_last = bool(channels_last)
        self.gem = GeM(gem_p, learnable=gem_learnable) if kind == "gem" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "features")
        if self.kind == "native":
            raise RuntimeError(
                "pooling='native' uses the backbone's own pooling; call backbone.forward instead"
            )
        if x.ndim == 4:
            dims: tuple[int, ...] = (1, 2) if self.channels_last else (2, 3)
        elif x.ndim == 3:
            x = x[:, self.num_prefix_tokens :]
            if x.shape[1] == 0:
                raise ValueError("no patch tokens left to pool after dropping the prefix tokens")
            dims = (1,)
        else:
            raise ValueError(f"features must be (B, C, H, W) or (B, N, C), got shape {tuple(x.shape)}")
        if self.kind == "avg":
            return x.mean(dim=dims)
        if self.kind == "max":
            return x.amax(dim=dims)
        assert self.gem is not None  # kind == "gem", set in __init__
        return self.gem(x, dims)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (GeM's current ``p`` included)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.gem is not None:
            out["gem_p"] = float(self.gem.p.detach())
            out["gem_learnable"] = isinstance(self.gem.p, nn.Parameter)
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_prefix_tokens={self.num_prefix_tokens}, channels_last={self.channels_last}"


class EmbeddingHead(nn.Module):
    """Projection of pooled features to the embedding, then normalisation.

    Args:
        in_features: size of the pooled features.
        embedding_size: output size ``D`` (ignored for ``kind="identity"``, which keeps ``in_features``).
        kind: ``"linear"`` (one layer), ``"mlp"`` (Linear-GELU-Dropout-Linear with ``hidden_size``) or
            ``"identity"`` (no parameters: the pooled features themselves).
        normalization: ``"l2"`` (unit rows; cosine similarity = inner product), ``"poincare"`` (Poincaré ball of
            curvature ``-c``: the last linear layer is a :class:`~frugalvision.layers.HyperbolicProjection`, as in
            Hyp-ViT, Ermolov et al. CVPR 2022) or ``"none"``.
        hidden_size: width of the MLP's hidden layer (default: ``in_features``).
        dropout: dropout on the input features (timm's ``drop_rate``: the pre-classifier dropout).
        c: ball curvature for ``"poincare"`` (Hyp-ViT: 0.1).
        clip_r: feature-clipping radius before the exponential map (Hyp-ViT code: 2.3; ``None`` disables it).

    Shapes:
        ``(B, in_features) -> (B, D)``; rows have norm 1 (``"l2"``) or lie strictly inside the ball of radius
        ``1/sqrt(c)`` (``"poincare"``).
    """

    def __init__(
        self,
        in_features: int,
        embedding_size: int = 128,
        *,
        kind: str = "linear",
        normalization: str = "l2",
        hidden_size: int | None = None,
        dropout: float = 0.0,
        c: float = 0.1,
        clip_r: float | None = 2.3,
    ) -> None:
        super().__init__()
        check_positive(in_features, "in_features")
        check_positive(embedding_size, "embedding_size")
        self.kind = check_choice(kind, HEAD_KINDS, "head")
        self.normalization = check_choice(normalization, NORMALIZATIONS, "normalization")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_positive(c, "hyperbolic_c")
        self.in_features = int(in_features)
        self.c = float(c)
        self.clip_r = None if clip_r is None else float(clip_r)
        self.hidden_size = int(hidden_size) if hidden_size is not None else int(in_features)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.body: nn.Module = nn.Identity()
        width = self.in_features
        if kind == "mlp":
            check_positive(self.hidden_size, "hidden_size")
            self.body = nn.Sequential(nn.Linear(width, self.hidden_size), nn.GELU())
            width = self.hidden_size
        self.out: nn.Module
        if kind == "identity":
            self.out = nn.Identity()
            self.embedding_size = width
        elif normalization == "poincare":
            self.out = HyperbolicProjection(width, embedding_size, c=self.c, clip_r=self.clip_r)
            self.embedding_size = int(embedding_size)
        else:
            self.out = nn.Linear(width, embedding_size)
            self.embedding_size = int(embedding_size)
            # Orthogonal rows, zero bias (as Hyp-ViT's head): the projection keeps the pretrained features'
            # geometry as far as D allows (exactly, up to a rotation, when D == in_features), so training starts
            # from the backbone's own retrieval quality instead of a random distortion of it.
            nn.init.orthogonal_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_tensor(features, "features")
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be (B, {self.in_features}), got shape {tuple(features.shape)}")
        check_finite(features, "features")
        x = self.out(self.body(self.dropout(features)))
        if self.normalization == "l2":
            return F.normalize(x, dim=1)
        if self.normalization == "poincare" and self.kind == "identity":
            return to_poincare(x, self.c, self.clip_r)
        return x  # "none", or "poincare" already applied by HyperbolicProjection

    def describe(self) -> dict[str, Any]:
        """JSON-able settings, enough to rebuild the same head."""
        return {
            "kind": self.kind,
            "embedding_size": self.embedding_size,
            "normalization": self.normalization,
            "hidden_size": self.hidden_size if self.kind == "mlp" else None,
            "dropout": float(self.dropout.p) if isinstance(self.dropout, nn.Dropout) else 0.0,
            "c": self.c,
            "clip_r": self.clip_r,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, embedding_size={self.embedding_size}, kind={self.kind!r}, "
            f"normalization={self.normalization!r}"
        )
