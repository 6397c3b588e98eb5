"""PAN neck (Path Aggregation Network, Liu et al. 2018, https://arxiv.org/abs/1803.01534) of CSP blocks.

A top-down path (FPN) carries the semantics of stride 32 down to stride 8, then a bottom-up path carries the
localisation of stride 8 back up; every merge is a :class:`~frugalvision.models.detection.blocks.CSPBlock`::

    C5 -> f5 = conv1x1(C5) ------------------------------------------------> cat -> CSP -> P5 (stride 32)
           up(f5) ++ C4 -> CSP -> f4 -> r4 = conv1x1(f4) -----------> cat -> CSP -> P4 (stride 16)     ^
                                        up(r4) ++ C3 -> CSP -> P3 (stride 8) -> conv3x3/2 ^ -> conv3x3/2

Widths and depths scale with the size's multipliers (YOLOv5's convention): channels ``(256, 512, 1024) * width``,
``round(3 * depth)`` bottlenecks per CSP block. ``forward`` returns ``[P3, P4, P5]`` and, for the auxiliary head,
the top-down features ``[P3, f4, f5]``. With ``depthwise`` every 3x3 convolution (the CSP bottlenecks' and the two
stride-2 downsamplings) is depthwise-separable (:class:`~frugalvision.models.detection.blocks.DWConv`), as in
YOLOX-nano's PAN; the 1x1 convolutions stay.
"""

from __future__ import annotations

import torch
from torch import nn

from frugalvision.models.detection.blocks import ConvBNAct, CSPBlock, conv3x3

__all__ = ["PANNeck", "scaled_depth", "scaled_width"]


def scaled_width(channels: int, multiplier: float, divisor: int = 8) -> int:
    """``channels * multiplier`` rounded up to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(-(-channels * multiplier // divisor) * divisor))


def scaled_depth(n: int, multiplier: float) -> int:
    """``round(n * multiplier)``, at least 1."""
    return max(1, round(n * multiplier))


class PANNeck(nn.Module):
    """PAN over backbone features ``(C3, C4, C5)`` of channels ``in_channels``.

    Attributes:
        out_channels: channels of ``(P3, P4, P5)``.
        aux_channels: channels of the top-down features ``(P3, f4, f5)``.
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int],
        width: float,
        depth: float,
        rep: bool = False,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        w3, w4, w5 = (scaled_width(c, width) for c in (256, 512, 1024))
        n = scaled_depth(3, depth)
        self.reduce5 = ConvBNAct(c5, w4, 1)
        self.td4 = CSPBlock(w4 + c4, w4, n, rep=rep, depthwise=depthwise)
        self.reduce4 = ConvBNAct(w4, w3, 1)
        self.td3 = CSPBlock(w3 + c3, w3, n, rep=rep, depthwise=depthwise)
        self.down3 = conv3x3(w3, w3, 2, depthwise)
        self.bu4 = CSPBlock(2 * w3, w4, n, rep=rep, depthwise=depthwise)
        self.down4 = conv3x3(w4, w4, 2, depthwise)
        self.bu5 = CSPBlock(2 * w4, w5, n, rep=rep, depthwise=depthwise)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.out_channels = (w3, w4, w5)
        self.aux_channels = (w3, w4, w4)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``[C3, C4, C5] -> ([P3, P4, P5], [P3, f4, f5])``."""
        c3, c4, c5 = feats
        f5 = self.reduce5(c5)
        f4 = self.td4(torch.cat([self.up(f5), c4], 1))
        r4 = self.reduce4(f4)
        p3 = self.td3(torch.cat([self.up(r4), c3], 1))
        p4 = self.bu4(torch.cat([self.down3(p3), r4], 1))
        p5 = self.bu5(torch.cat([self.down4(p4), f5], 1))
        return [p3, p4, p5], [p3, f4, f5]
