"""Detection heads: decoupled classification / box branches, anchor-free (default) or anchor-based.

Both heads share one structure per level (YOLOX's decoupled head, Ge et al. 2021, https://arxiv.org/abs/2107.08430):
a 1x1 stem, then two 3x3 convs + a 1x1 prediction for the classes and, separately, two 3x3 convs + a 1x1
prediction for the box (with ``depthwise``, the 3x3 convs are depthwise-separable, as in YOLOX-nano's head). There
is no objectness branch: the classification score is trained to predict the IoU
of its box (varifocal targets, see :mod:`frugalvision.losses.detection`), so it ranks boxes on its own.

Box decoding (``p = (x + 0.5, y + 0.5) * s`` is the centre of grid cell ``(x, y)`` at stride ``s``; ``t`` the raw
prediction):

* anchor-free (default, ``dfl_bins=0``: the four distances are regressed directly, which keeps the exported graph
  small): ``(l, t, r, b) = softplus(t) * s`` and the box is ``(p_x - l, p_y - t, p_x + r, p_y + b)``;
* anchor-free with ``dfl_bins = R + 1`` (Generalized Focal Loss, Li et al. 2020, https://arxiv.org/abs/2006.04388,
  eq. 5; YOLOv6 / v8): each distance is a distribution over ``0, 1, ..., R`` strides, ``4 (R + 1)`` logits ``z``
  per cell (side-major: side ``k`` owns channels ``k (R + 1) .. k (R + 1) + R``), and ``d_k = s * sum_i
  softmax(z_k)_i * i`` -- a softmax and a matmul with the fixed vector ``(0, 1, ..., R)`` in the exported graph.
  Distances are bounded by ``R`` strides. The logits go to the loss as ``box_dist (B, N, 4, R + 1)``
  (:mod:`frugalvision.losses.detection_dfl`);
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
        dfl_bins: ``0`` (softplus distances) or ``R + 1 >= 2`` bins of each side's distance distribution
            (anchor-free only).
        depthwise: depthwise-separable 3x3 convolutions in the branches.

    ``forward(feats)`` returns ``(cls_logits (B, N, C), boxes (B, N, 4) xyxy input pixels, points (N, 2),
    strides (N,), box_dist)`` with ``box_dist (B, N, 4, R + 1)`` the distance logits, ``None`` when
    ``dfl_bins=0``.

    Raises:
        ValueError: bad ``anchors``; ``dfl_bins`` with anchors.
    """

    project: torch.Tensor  # (R + 1,) = 0..R, only with dfl_bins

    def __init__(
        self,
        in_channels: tuple[int, ...],
        num_classes: int,
        strides: tuple[int, ...],
        hidden: int,
        anchors: list[list[tuple[float, float]]] | None = None,
        dfl_bins: int = 0,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if dfl_bins and anchors is not None:
            raise ValueError(
                "dfl_bins needs an anchor-free head (anchors=None): anchors decode centre and size"
            )
        if isinstance(dfl_bins, bool) or not isinstance(dfl_bins, int) or dfl_bins < 0 or dfl_bins == 1:
            raise ValueError(f"dfl_bins must be 0 (off) or an int >= 2, got {dfl_bins!r}")
        self.dfl_bins = int(dfl_bins)
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
        self.box = nn.ModuleList(_Branch(hidden, hidden, a * self.box_width, depthwise) for _ in in_channels)
        if self.dfl_bins:  # the integral's fixed weights 0..R (not saved: rebuilt from the config)
            self.register_buffer(
                "project", torch.arange(self.dfl_bins, dtype=torch.float32), persistent=False
            )
        self._init_bias()

    @property
    def box_width(self) -> int:
        """Box channels per anchor: 4 distances, or 4 distributions of ``dfl_bins`` logits."""
        return 4 * self.dfl_bins if self.dfl_bins else 4

    def _init_bias(self) -> None:
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for branch in self.cls:
            assert isinstance(branch, _Branch) and branch.pred.bias is not None
            nn.init.constant_(branch.pred.bias, prior)
        # anchor-free: softplus(b) = 2 -> boxes 4 strides wide; anchor-based: 0 -> the anchor itself
        box_bias = 0.0 if self.anchor_based else math.log(math.expm1(2.0))
        for branch in self.box:
            assert isinstance(branch, _Branch) and branch.pred.bias is not None
            if self.dfl_bins:
                # DFL: logits -(i - c)^2 / 2, a discretised unit Gaussian at c = min(2, R / 2) strides -> boxes about
                # 4 strides wide, as without DFL (a uniform start would put every side at R / 2)
                i = torch.arange(self.dfl_bins, dtype=torch.float32)
                c = min(2.0, (self.dfl_bins - 1) / 2)
                with torch.no_grad():
                    branch.pred.bias.copy_((-((i - c) ** 2) / 2).repeat(self.num_anchors * 4))
            else:
                nn.init.constant_(branch.pred.bias, box_bias)

    def forward(
        self, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        a, c, k = self.num_anchors, self.num_classes, self.box_width
        logits, boxes, points, strides, dists = [], [], [], [], []
        for level, x in enumerate(feats):
            b, _, h, w = x.shape
            s = self.strides[level]
            y = self.stems[level](x)
            cls = self.cls[level](y).reshape(b, a, c, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, c)
            # decoded in float32 even under autocast: a bfloat16 box is off by up to 1 pixel at 400 pixels
            t = (
                self.box[level](y)
                .float()
                .reshape(b, a, k, h, w)
                .permute(0, 3, 4, 1, 2)
                .reshape(b, h * w, a, k)
            )
            p = grid_points(h, w, s, x.device, t.dtype)  # (hw, 2)
            boxes.append(self._decode(t, p, s, level).reshape(b, h * w * a, 4))
            if self.dfl_bins:
                dists.append(t.reshape(b, h * w * a, 4, self.dfl_bins))
            logits.append(cls)
            points.append(p.repeat_interleave(a, dim=0))
            strides.append(torch.full((h * w * a,), float(s), device=x.device, dtype=t.dtype))
        dist = torch.cat(dists, 1) if dists else None
        return torch.cat(logits, 1), torch.cat(boxes, 1), torch.cat(points, 0), torch.cat(strides, 0), dist

    def _decode(self, t: torch.Tensor, p: torch.Tensor, s: int, level: int) -> torch.Tensor:
        """``t (B, hw, A, K)`` raw (``K = 4``, or ``4 (R + 1)`` with DFL), ``p (hw, 2)`` cell centres -> boxes
        ``(B, hw, A, 4)`` xyxy."""
        centre = p[None, :, None, :]
        if self.dfl_bins:
            z = t.reshape(*t.shape[:-1], 4, self.dfl_bins)
            # (B, hw, A, 4): sum_i S_i i, times the stride -> pixels
            d = torch.matmul(torch.softmax(z, dim=-1), self.project.to(t.dtype)) * s
            return torch.cat([centre - d[..., :2], centre + d[..., 2:]], dim=-1)
        if not self.anchor_based:
            d = F.softplus(t) * s
            return torch.cat([centre - d[..., :2], centre + d[..., 2:]], dim=-1)
        xy = centre + (2.0 * torch.sigmoid(t[..., :2]) - 1.0) * s
        wh = (2.0 * torch.sigmoid(t[..., 2:])) ** 2 * self.anchors[level].to(t.dtype)[None, None]  # type: ignore[index]
        return torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
