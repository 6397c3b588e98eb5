"""Token Merging (ToMe) for timm Vision Transformers: fewer tokens block after block, so less work per image.

Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023). Written here from the paper's equations (the
authors' code is CC-BY-NC and is not used). In every transformer block, after the attention and before the MLP,
``r`` tokens are merged into others:

1. *Bipartite soft matching.* The (non-prefix) tokens are split alternately into sets ``A`` (even positions) and
   ``B`` (odd positions). The similarity of two tokens is the cosine of their attention keys averaged over the
   heads, ``m_i = mean_h k_{h,i}`` (shape ``(B, N, head_dim)``): ``S_ab = m_a . m_b / (|m_a| |m_b|)``. Each ``a``
   keeps only its most similar ``b``: ``best(a) = max_b S_ab``; the ``r`` tokens of ``A`` with the largest
   ``best(a)`` are merged into their ``b``, the other tokens of ``A`` and all of ``B`` are kept. No iteration, no
   clustering: two matrix products, a max, a sort and a gather.
2. *Size-weighted average.* Every token carries a size ``s`` (how many input patches it stands for; 1 at the
   start). Merging a set ``M`` of tokens into one gives ``x = sum_{i in M} s_i x_i / sum_{i in M} s_i`` and
   ``s = sum_{i in M} s_i`` (computed as a ``scatter_add`` of ``s x`` and of ``s``, then a division: ONNX Runtime
   has a ``ScatterElements`` ``add`` reduction, not a ``mean`` one).
3. *Proportional attention.* A merged token must weigh as much as the tokens it replaced, so the attention logits
   get ``log s`` of the key added: ``softmax(q k^T / sqrt(d) + log s^T)``; with integer sizes this equals the
   attention over a sequence in which each token appears ``s`` times.

Prefix tokens (class, register, distillation) never take part in the matching and are never merged. With
``r`` tokens merged per block a ViT of depth ``L`` ends with ``N - L r`` patch tokens (``r`` is capped at half of
the remaining patch tokens in each block). The class token pools the result (``global_pool="token"``); for
``global_pool="avg"`` the tokens that ``forward_features`` returns are scaled by ``s_i M / N`` (``M`` tokens left,
``N`` patches at the start), so the head's plain mean is the size-weighted mean, i.e. the mean over the original
patches.

:func:`apply_tome` returns a copy of a model (a timm ``VisionTransformer`` or any module holding one, e.g. a
:class:`~frugalvision.models.Backbone` or an embedding model) whose ViT merges tokens; with ``r = 0`` it runs the
original blocks unchanged (outputs identical to the original). :func:`tome_support` says why a model is not
supported (other block or attention classes, attention pooling, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from frugalvision.errors import UnsupportedModelError

__all__ = ["apply_tome", "bipartite_merge", "find_vit", "merged_token_counts", "tome_support"]


def find_vit(model: nn.Module) -> nn.Module | None:
    """The first timm ``VisionTransformer`` in ``model`` (itself or a submodule), or ``None``."""
    from timm.models.vision_transformer import VisionTransformer

    return next((m for m in model.modules() if isinstance(m, VisionTransformer)), None)


def tome_support(model: nn.Module) -> str | None:
    """Why ToMe cannot be applied to ``model``, or ``None`` when it can.

    Supported: a timm ``VisionTransformer`` (plain ViT, DeiT, AugReg, DINO(v2)-style with register tokens) whose
    blocks are timm's pre-norm ``Block`` with its standard ``Attention``, pooled by the class token or by the mean of
    the patch tokens (the ViT's own pooling: not a pooling of ``forward_features``' tokens by a wrapper).
    """
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    vit = find_vit(model)
    if vit is None:
        return f"{type(model).__name__} holds no timm VisionTransformer (ToMe applies to plain ViTs only)"
    assert isinstance(vit, VisionTransformer)
    if getattr(vit, "attn_pool", None) is not None:
        return "attention pooling (global_pool='map') is not supported"
    if vit.global_pool not in ("token", "avg"):
        return f"global_pool={vit.global_pool!r} is not supported (only 'token' and 'avg')"
    if vit.global_pool == "avg" and getattr(vit, "pool_include_prefix", False):
        return "average pooling that includes the prefix tokens is not supported"
    if vit.global_pool == "token" and vit.cls_token is None:
        return "global_pool='token' without a class token"
    for m in model.modules():  # e.g. an EmbeddingModel pooling forward_features' tokens itself (GeM, max...)
        kind = getattr(getattr(m, "pooling", None), "kind", "native")
        if kind != "native":
            return f"pooling {kind!r} over the tokens is not supported (only the ViT's own pooling)"
    for i, blk in enumerate(vit.blocks):
        if type(blk) is not Block:
            return f"block {i} is a {type(blk).__name__}, not timm's pre-norm Block"
        if type(blk.attn) is not Attention:
            return f"block {i}'s attention is a {type(blk.attn).__name__}, not timm's Attention"
    return None


def merged_token_counts(num_tokens: int, num_prefix: int, r: Sequence[int]) -> list[int]:
    """Token count (prefix included) after each block when block ``i`` merges ``r[i]`` tokens (capped at half of the
    patch tokens it receives)."""
    counts, n = [], num_tokens
    for ri in r:
        n -= min(int(ri), (n - num_prefix) // 2)
        counts.append(n)
    return counts


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` by bipartite soft matching on ``metric`` (see the module docstring).

    Args:
        x: tokens ``(B, N, C)``; the first ``num_prefix`` are kept apart and returned first, unchanged.
        size: ``(B, N, 1)`` how many patches each token stands for.
        metric: ``(B, N, D)`` matching features (the keys averaged over the heads).
        r: tokens to merge; capped at ``(N - num_prefix) // 2``.

    Returns:
        ``(x, size)`` with ``N - r`` tokens: the prefix, the unmerged tokens of ``A``, then ``B`` (merged into).
    """
    r = min(int(r), (x.shape[1] - num_prefix) // 2)
    if r <= 0:
        return x, size
    px, ps = x[:, :num_prefix], size[:, :num_prefix]
    x, size, metric = x[:, num_prefix:], size[:, num_prefix:], metric[:, num_prefix:]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    sim = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # (B, Na, Nb) cosine
    best, best_b = sim.max(dim=-1)  # (B, Na): each a's most similar b
    order = best.argsort(dim=-1, descending=True)  # (B, Na)
    merged_a, kept_a = order[:, :r], order[:, r:]
    target_b = best_b.gather(1, merged_a)  # (B, r)

    c = x.shape[-1]
    xa, xb = x[:, 0::2] * size[:, 0::2], x[:, 1::2] * size[:, 1::2]  # size-weighted sums
    sa, sb = size[:, 0::2], size[:, 1::2]
    sum_x = xb.scatter_add(
        1, target_b[..., None].expand(-1, -1, c), xa.gather(1, merged_a[..., None].expand(-1, -1, c))
    )
    sum_s = sb.scatter_add(1, target_b[..., None], sa.gather(1, merged_a[..., None]))
    keep_x = x[:, 0::2].gather(1, kept_a[..., None].expand(-1, -1, c))
    keep_s = sa.gather(1, kept_a[..., None])
    return torch.cat([px, keep_x, sum_x / sum_s], dim=1), torch.cat([ps, keep_s, sum_s], dim=1)


def _attention(attn: Any, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` with proportional attention (``+ log s`` on the logits); returns the output and the keys
    averaged over the heads ``(B, N, head_dim)``."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + size.log().transpose(1, 2)[:, None]  # (B, H, N, N)
    out = attn.attn_drop(logits.softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def _tome_block(
    blk: Any, x: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    y, metric = _attention(blk.attn, blk.norm1(x), size)
    x = x + blk.drop_path1(blk.ls1(y))
    x, size = bipartite_merge(x, size, metric, r, num_prefix)
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, size


def _tome_forward_features(
    self: Any, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """``VisionTransformer.forward_features`` with token merging (bound to a ToMe'd ViT by :func:`apply_tome`)."""
    if attn_mask is not None or is_causal:
        raise UnsupportedModelError("a ToMe ViT takes no attention mask (merging changes the token set)")
    r: list[int] = self.tome_r
    x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
    p = int(self.num_prefix_tokens)
    num_patches = x.shape[1] - p
    size = x.new_ones(x.shape[0], x.shape[1], 1)
    for blk, ri in zip(self.blocks, r, strict=True):
        if ri == 0 and x.shape[1] - p == num_patches:
            x = blk(x)  # nothing merged yet: the original block, unchanged
        else:
            x, size = _tome_block(blk, x, size, ri, p)
    x = self.norm(x)
    if self.global_pool == "avg" and x.shape[1] - p != num_patches:
        # the head's plain mean over the M patch tokens then equals the size-weighted mean over the N patches
        m = x.shape[1] - p
        x = torch.cat([x[:, :p], x[:, p:] * size[:, p:] * (m / num_patches)], dim=1)
    return x


def apply_tome(model: nn.Module, r: int | Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose timm ViT merges ``r`` tokens per block (an int for every block, or one per block).

    The copy shares nothing with ``model`` (its parameters are copied); ``r = 0`` gives a model whose outputs are
    identical to the original's. Use it for inference (eval mode): merging is not meant for training here.

    Raises:
        UnsupportedModelError: the model is not a supported ViT (the message says why), or ``r`` is invalid.
    """
    why = tome_support(model)
    if why is not None:
        raise UnsupportedModelError(f"Token Merging cannot be applied: {why}")
    depth = len(find_vit(model).blocks)  # type: ignore[union-attr,arg-type]
    rs = [r] * depth if isinstance(r, int) else list(r)
    if len(rs) != depth or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in rs):
        raise UnsupportedModelError(f"r must be an int >= 0 or {depth} of them (one per block), got {r!r}")
    clone = copy.deepcopy(model)
    vit = find_vit(clone)
    assert vit is not None
    vit.tome_r = rs  # type: ignore[assignment]
    vit.forward_features = _tome_forward_features.__get__(vit)
    return clone
