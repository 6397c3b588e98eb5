"""Convolution blocks of the detector's neck and heads: conv-BN-activation, RepConv, the depthwise-separable
convolution and the CSP block.

Every block that holds train-time structure has ``reparameterize()`` (the method name
:func:`timm.utils.reparameterize_model` calls), which folds it into plain convolutions for export:

* :class:`ConvBNAct` folds BatchNorm into the convolution's weight and bias;
* :class:`RepConv` (RepVGG, Ding et al. 2021, https://arxiv.org/abs/2101.03697; YOLOv7's ``RepConv``) folds its
  3x3, 1x1 and identity-BN branches into one 3x3 convolution.

Folding a BatchNorm ``y = gamma (x - mu) / sqrt(var + eps) + beta`` into the convolution before it::

    W' = W * gamma / sqrt(var + eps)        (per output channel)
    b' = beta + (b - mu) * gamma / sqrt(var + eps)

and the branches of a RepConv add up because convolution is linear: the 1x1 kernel is zero-padded to 3x3 and the
identity is the 3x3 kernel with a 1 at the centre of channel ``i -> i`` (eq. 3-4 of the RepVGG paper).

Depthwise-separable convolutions (:class:`DWConv`, MobileNet, Howard et al. 2017, https://arxiv.org/abs/1704.04861;
the ``depthwise=True`` neck and head of YOLOX-nano, NanoDet and PP-PicoDet) replace a dense ``k x k`` convolution
``c_in -> c_out`` (``k^2 c_in c_out`` multiply-adds per pixel) by a ``k x k`` convolution per channel (``groups =
c_in``) followed by a 1x1 one (``k^2 c_in + c_in c_out``): at ``c_in = c_out = 64``, ``k = 3`` that is 7.9x fewer.
The grouped RepConv keeps folding: each branch is grouped the same way, and the identity of channel ``i`` sits at
index ``i mod (c_in / groups)`` of its group's kernel (MobileOne, Vasu et al. 2023,
https://arxiv.org/abs/2206.04040, re-parameterizes its depthwise convolutions so).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CSPBlock", "ConvBNAct", "DWConv", "RepConv", "conv3x3", "fold_batchnorm"]


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(weight, bias)`` of one convolution equal to ``bn(conv(x))`` in eval mode (see module docstring).

    Args:
        weight: conv kernel ``(C_out, C_in, k, k)``.
        bias: conv bias ``(C_out,)`` or ``None``.
        bn: the BatchNorm that follows (its running statistics are used).
    """
    assert bn.running_var is not None and bn.running_mean is not None, "BatchNorm without running statistics"
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    b = bias if bias is not None else torch.zeros_like(std)
    factor = gamma / std
    return weight * factor.reshape(-1, 1, 1, 1), beta + (b - bn.running_mean) * factor


class ConvBNAct(nn.Module):
    """``act(bn(conv(x)))`` with "same" padding; ``reparameterize()`` folds the BatchNorm into the conv.

    ``groups`` as in :class:`torch.nn.Conv2d` (``groups = c_in = c_out``: a depthwise convolution)."""

    def __init__(
        self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the convolution (eval-mode equivalence)."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        w, b = fold_batchnorm(self.conv.weight, self.conv.bias, self.bn)
        conv = nn.Conv2d(
            self.conv.in_channels,
            self.conv.out_channels,
            self.conv.kernel_size,  # type: ignore[arg-type]
            self.conv.stride,  # type: ignore[arg-type]
            self.conv.padding,  # type: ignore[arg-type]
            groups=self.conv.groups,
            bias=True,
        ).to(w)
        conv.weight.copy_(w)
        conv.bias.copy_(b)  # type: ignore[union-attr]
        self.conv, self.bn = conv, nn.Identity()


class RepConv(nn.Module):
    """RepVGG block: ``act(bn3(conv3x3(x)) + bn1(conv1x1(x)) + bn_id(x))``, one 3x3 conv after
    :meth:`reparameterize`.

    The identity branch exists when ``c_in == c_out`` and ``s == 1``. Shapes: ``(B, c_in, H, W) -> (B, c_out,
    H/s, W/s)``. ``groups`` groups every branch (``groups = c_in = c_out``: a depthwise RepConv, as MobileOne's).
    """

    def __init__(self, c_in: int, c_out: int, s: int = 1, identity: bool = True, groups: int = 1) -> None:
        super().__init__()
        if c_in % groups or c_out % groups:
            raise ValueError(f"RepConv: groups={groups} must divide c_in={c_in} and c_out={c_out}")
        self.c_in, self.c_out, self.stride, self.groups = c_in, c_out, s, groups
        self.conv3 = nn.Conv2d(c_in, c_out, 3, s, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 1, s, 0, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn_id = nn.BatchNorm2d(c_out) if identity and c_in == c_out and s == 1 else None
        self.fused: nn.Conv2d | None = None
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
        if self.bn_id is not None:
            y = y + self.bn_id(x)
        return self.act(y)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 ``(weight (c_out, c_in / groups, 3, 3), bias (c_out,))`` equal to the three branches."""
        w3, b3 = fold_batchnorm(self.conv3.weight, None, self.bn3)
        w1, b1 = fold_batchnorm(self.conv1.weight, None, self.bn1)
        w = w3 + nn.functional.pad(w1, [1, 1, 1, 1])
        b = b3 + b1
        if self.bn_id is not None:
            eye = torch.zeros_like(w3)
            channels = torch.arange(self.c_in)
            eye[channels, channels % (self.c_in // self.groups), 1, 1] = 1.0
            wi, bi = fold_batchnorm(eye, None, self.bn_id)
            w, b = w + wi, b + bi
        return w, b

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one 3x3 convolution (eval-mode equivalence; idempotent)."""
        if self.fused is not None:
            return
        w, b = self.fused_kernel()
        conv = nn.Conv2d(self.c_in, self.c_out, 3, self.stride, 1, groups=self.groups, bias=True).to(w)
        conv.weight.copy_(w)
        conv.bias.copy_(b)  # type: ignore[union-attr]
        self.fused = conv
        del self.conv3, self.bn3, self.conv1, self.bn1, self.bn_id
        self.bn_id = None


class DWConv(nn.Module):
    """Depthwise-separable convolution: ``pw(dw(x))`` with ``dw`` a ``k x k`` conv-BN-SiLU per channel (stride
    ``s``) and ``pw`` a 1x1 conv-BN-SiLU ``c_in -> c_out`` (YOLOX's ``DWConv``); ``(B, c_in, H, W) -> (B, c_out,
    H/s, W/s)``. With ``rep`` the depthwise part is a depthwise :class:`RepConv` (3x3 only), folded by
    ``reparameterize()`` like the dense one."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, rep: bool = False) -> None:
        super().__init__()
        if rep and k != 3:
            raise ValueError(f"DWConv: rep=True needs k=3 (RepConv is 3x3), got k={k}")
        self.dw: nn.Module = (
            RepConv(c_in, c_in, s, groups=c_in) if rep else ConvBNAct(c_in, c_in, k, s, groups=c_in)
        )
        self.pw = ConvBNAct(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def conv3x3(c_in: int, c_out: int, s: int = 1, depthwise: bool = False, rep: bool = False) -> nn.Module:
    """The neck's and heads' 3x3 convolution: dense (:class:`ConvBNAct`, or :class:`RepConv` when ``rep``) or
    depthwise-separable (:class:`DWConv`) when ``depthwise``."""
    if depthwise:
        return DWConv(c_in, c_out, 3, s, rep=rep)
    return RepConv(c_in, c_out, s) if rep else ConvBNAct(c_in, c_out, 3, s)


class _Bottleneck(nn.Module):
    """``x + conv3x3(conv3x3(x))`` (the residual when shapes allow); the first conv is a RepConv when ``rep``,
    both are depthwise-separable when ``depthwise``."""

    def __init__(self, c: int, shortcut: bool, rep: bool, depthwise: bool = False) -> None:
        super().__init__()
        self.cv1 = conv3x3(c, c, depthwise=depthwise, rep=rep)
        self.cv2 = conv3x3(c, c, depthwise=depthwise)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """Cross-stage-partial block (CSPNet, Wang et al. 2020, https://arxiv.org/abs/1911.11929).

    The input is split by two 1x1 convs into a part that goes through ``n`` bottlenecks and a part that bypasses
    them; both are concatenated and mixed by a 1x1 conv: ``(B, c_in, H, W) -> (B, c_out, H, W)``. ``depthwise``:
    the bottlenecks' 3x3 convolutions are depthwise-separable (:class:`DWConv`).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n: int = 1,
        shortcut: bool = False,
        rep: bool = False,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        hidden = max(8, c_out // 2)
        self.cv1 = ConvBNAct(c_in, hidden)
        self.cv2 = ConvBNAct(c_in, hidden)
        self.blocks = nn.Sequential(
            *(_Bottleneck(hidden, shortcut, rep, depthwise) for _ in range(max(1, n)))
        )
        self.cv3 = ConvBNAct(2 * hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.blocks(self.cv1(x)), self.cv2(x)], dim=1))
