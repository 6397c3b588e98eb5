"""Detection heads: decoupled classification / box branches, anchor-free (default) or anchor-based.

Both heads share one structure per level (YOLOX's decoupled head, Ge et al. 2021, https://arxiv.org/abs/2107.08430):
a 1x1 stem, then two 3x3 convs + a 1x1 prediction for the classes and, separately, two 3x3 convs + a 1x1
prediction for the box (with ``depthwise``, the 3x3 convs are depthwise-separable, as in YOLOX-nano's head). There
is no objectness branch: the classification score is trained to predict the IoU
of its box (varifocal targets, see :mod:`frugalvision.losses.detection`), so it ranks boxes on its own.

Box decoding (``p = (x + 0.5, y + 0.5) * s`` is the centre of grid cell ``(x, y)`` at stride ``s``; ``t`` the raw
prediction):

* anchor-free (no DFL: the four distances are regressed directly, which keeps the exported graph small):
  ``(l, t, r, b) = softplus(t) * s`` and the box is ``(p_x - l, p_y - t, p_x + r, p_y + b)``;
* anchor-based (YOLOv5's bounded decoding, ``A`` anchors ``(w_a, h_a)`` per level, in input pixels):
  ``centre = p + (2 sigmoid(t_xy) - 1) * s``, ``(w, h) = (2 sigmoid(t_wh))^2 * (w_a, h_a)`` -- a box can reach
  at most 4x its anchor, hence the best-possible-recall threshold 4 of :func:`~.anchors.best_possible_recall`.

Outputs are flattened level by level, cell by cell (row-major), anchor by anchor: ``N = sum_l H_l W_l A``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from frugalvision.models.detection.blocks import ConvBNAct, conv3x3

__all__ = ["DetectionHead", "grid_points"]

#: The initial probability of every class (focal-loss prior, Lin et al. 2017): keeps the first losses small.
PRIOR_PROB = 0.01


def grid_points(h: int, w: int, stride: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cell centres ``(h * w, 2)`` as ``(x, y)`` in input pixels, row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


class _Branch(nn.Module):
    def __init__(self, c_in: int, hidden: int, out: int, depthwise: bool = False) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv3x3(c_in, hidden, 1, depthwise), conv3x3(hidden, hidden, 1, depthwise))
        self.pred = nn.Conv2d(hidden, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.convs(x))


class DetectionHead(nn.Module):
    """Decoupled head over feature maps of ``in_channels`` at ``strides``.

    Args:
        in_channels: channels per level.
        num_classes: ``C``.
        strides: stride of each level (e.g. ``(8, 16, 32)``).
        hidden: width of the branches.
        anchors: ``None`` (anchor-free) or per level a list of ``(w, h)`` in input pixels (anchor-based); every
            level must have the same number ``A`` of anchors.
        depthwise: depthwise-separable 3x3 convolutions in the branches.

    ``forward(feats)`` returns ``(cls_logits (B, N, C), boxes (B, N, 4) xyxy input pixels, points (N, 2),
    strides (N,))``.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        num_classes: int,
        strides: tuple[int, ...],
        hidden: int,
        anchors: list[list[tuple[float, float]]] | None = None,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if anchors is not None and (
            len(anchors) != len(strides) or len({len(a) for a in anchors}) != 1 or not anchors[0]
        ):
            raise ValueError(
                f"anchors must give the same number of (w, h) pairs for each of the {len(strides)} levels, "
                f"got {anchors!r}"
            )
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self.num_anchors = 1 if anchors is None else len(anchors[0])
        self.anchor_based = anchors is not None
        self.register_buffer(
            "anchors",
            torch.tensor(anchors, dtype=torch.float32)
            if anchors is not None
            else torch.zeros(len(strides), 1, 2),
        )
        a = self.num_anchors
        self.stems = nn.ModuleList(ConvBNAct(c, hidden, 1) for c in in_channels)
        self.cls = nn.ModuleList(_Branch(hidden, hidden, a * num_classes, depthwise) for _ in in_channels)
        self.box = nn.ModuleList(_Branch(hidden, hidden, a * 4, depthwise) for _ in in_channels)
        self._init_bias()

    def _init_bias(self) -> None:
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for branch in self.cls:
            assert isinstance(branch, _Branch) and branch.pred.bias is not None
            nn.init.constant_(branch.pred.bias, prior)
        # anchor-free: softplus(b) = 2 -> boxes 4 strides wide; anchor-based: 0 -> the anchor itself
        box_bias = 0.0 if self.anchor_based else math.log(math.expm1(2.0))
        for branch in self.box:
            assert isinstance(branch, _Branch) and branch.pred.bias is not None
            nn.init.constant_(branch.pred.bias, box_bias)

    def forward(
        self, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a, c = self.num_anchors, self.num_classes
        logits, boxes, points, strides = [], [], [], []
        for level, x in enumerate(feats):
            b, _, h, w = x.shape
            s = self.strides[level]
            y = self.stems[level](x)
            cls = self.cls[level](y).reshape(b, a, c, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, c)
            # decoded in float32 even under autocast: a bfloat16 box is off by up to 1 pixel at 400 pixels
            t = (
                self.box[level](y)
                .float()
                .reshape(b, a, 4, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(b, h * w, a, 4)
            )
            p = grid_points(h, w, s, x.device, t.dtype)  # (hw, 2)
            boxes.append(self._decode(t, p, s, level).reshape(b, h * w * a, 4))
            logits.append(cls)
            points.append(p.repeat_interleave(a, dim=0))
            strides.append(torch.full((h * w * a,), float(s), device=x.device, dtype=t.dtype))
        return torch.cat(logits, 1), torch.cat(boxes, 1), torch.cat(points, 0), torch.cat(strides, 0)

    def _decode(self, t: torch.Tensor, p: torch.Tensor, s: int, level: int) -> torch.Tensor:
        """``t (B, hw, A, 4)`` raw, ``p (hw, 2)`` cell centres -> boxes ``(B, hw, A, 4)`` xyxy."""
        centre = p[None, :, None, :]
        if not self.anchor_based:
            d = F.softplus(t) * s
            return torch.cat([centre - d[..., :2], centre + d[..., 2:]], dim=-1)
        xy = centre + (2.0 * torch.sigmoid(t[..., :2]) - 1.0) * s
        wh = (2.0 * torch.sigmoid(t[..., 2:])) ** 2 * self.anchors[level].to(t.dtype)[None, None]  # type: ignore[index]
        return torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
