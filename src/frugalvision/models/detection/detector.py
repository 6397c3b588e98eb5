"""The YOLO-family detector: timm backbone (strides 8/16/32) -> PAN neck of CSP blocks -> decoupled head.

::

    from frugalvision.models.detection import DetectorConfig, create_detector, postprocess
    det = create_detector(DetectorConfig(num_classes=3))        # offline EfficientNet-Lite0, size "n", 416 px
    det.eval(); boxes, scores = det(images)                     # (B, N, 4) xyxy input px, (B, N, C) in [0, 1]
    detections = postprocess(boxes, scores, score_threshold=0.25)
    det.fuse()                                                  # RepConv / BN folding, aux head dropped: export

The backbone's features come from timm's feature-extraction API (``forward_intermediates`` at the indices whose
reduction is 8, 16, 32 -- the same stages ``features_only`` would return), on the full model built by
:func:`~frugalvision.models.create_backbone`, so offline / local / hub weights load exactly as for the other
tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from timm.utils import reparameterize_model
from torch import nn

from frugalvision.models.backbone import Backbone, create_backbone
from frugalvision.models.detection.anchors import default_anchors
from frugalvision.models.detection.heads import DetectionHead
from frugalvision.models.detection.neck import PANNeck, scaled_width

__all__ = ["SIZES", "Detector", "DetectorConfig", "create_detector"]

#: ``(depth, width)`` multipliers of each size (YOLOv5's n / s / m).
SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75)}
STRIDES = (8, 16, 32)
HEADS = ("anchor_free", "anchor")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to build the same detector again (saved in a detection bundle).

    Attributes:
        num_classes: ``C``.
        backbone: a timm name or an offline backbone (default: the offline EfficientNet-Lite0).
        pretrained: load the backbone's pretrained weights (offline ones need no network).
        size: ``"n"``, ``"s"`` or ``"m"`` (neck and head width / depth).
        image_size: input side ``S`` (multiple of 32).
        head: ``"anchor_free"`` (default) or ``"anchor"`` (YOLOv5-style, ``anchors`` per level in input px).
        anchors: for ``head="anchor"``: 3 levels of ``(w, h)``; ``None`` -> YOLOv3's, scaled to ``image_size``.
        repconv: RepConv blocks (3x3 + 1x1 + identity) in the neck's CSP bottlenecks, fused by ``fuse()``.
        aux_head: an auxiliary head on the top-down features (YOLOv7 lead-guided training), dropped by ``fuse()``.
        depthwise: depthwise-separable 3x3 convolutions (depthwise 3x3 + pointwise 1x1, BN + SiLU each) in the
            neck's CSP bottlenecks and downsamplings and in the head's branches, as YOLOX-nano / NanoDet /
            PP-PicoDet do: neck + head 1.85 -> 0.51 GFLOPs at size n (416 px, 80 classes). With ``repconv`` the
            RepConvs become depthwise RepConvs (still fused by ``fuse()``).
        backbone_kwargs: passed to ``timm.create_model`` (e.g. a tiny test configuration).
        dfl_bins: ``0`` (default: softplus side distances) or ``R + 1 >= 2``: each side distance is a distribution
            over ``0..R`` strides, trained with distribution focal loss (anchor-free head only; see
            :mod:`~frugalvision.models.detection.heads`).
    """

    num_classes: int
    backbone: str = "tf_efficientnet_lite0.in1k_offline"
    pretrained: bool = True
    size: str = "n"
    image_size: int = 416
    head: str = "anchor_free"
    anchors: list[list[tuple[float, float]]] | None = None
    repconv: bool = False
    aux_head: bool = False
    depthwise: bool = False
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dfl_bins: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes!r}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if not isinstance(self.image_size, int) or self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size!r}")
        if self.anchors is not None and self.head != "anchor":
            raise ValueError("anchors are only used with head='anchor'")
        bins = self.dfl_bins
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0 or bins == 1:
            raise ValueError(f"dfl_bins must be 0 (off) or an int >= 2, got {self.dfl_bins!r}")
        if self.dfl_bins and self.head != "anchor_free":
            raise ValueError(
                f"dfl_bins needs head='anchor_free' (an anchor head decodes centre and size, not side distances); "
                f"got head={self.head!r}, dfl_bins={self.dfl_bins}"
            )
        if not isinstance(self.depthwise, bool):
            raise ValueError(f"depthwise must be true or false, got {self.depthwise!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["anchors"] is not None:
            d["anchors"] = [[list(map(float, a)) for a in level] for level in d["anchors"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown detector config field(s) {unknown}; known: {sorted(known)}")
        values = dict(d)
        if values.get("anchors") is not None:
            values["anchors"] = [[(float(w), float(h)) for w, h in level] for level in values["anchors"]]
        return cls(**values)


class Detector(nn.Module):
    """Backbone + PAN neck + decoupled head (see the module docstring and :class:`DetectorConfig`).

    ``train()`` mode: ``forward(images (B, 3, S, S))`` returns a dict ``cls (B, N, C)`` logits, ``boxes (B, N, 4)``
    xyxy input pixels, ``points (N, 2)`` cell centres, ``strides (N,)``, ``box_dist (B, N, 4, R + 1)`` (the side
    distance logits, only with ``dfl_bins``), and ``aux`` (the same dict from the
    auxiliary head) when there is one -- what :class:`~frugalvision.losses.DetectionLoss` needs.
    ``eval()`` mode: ``(boxes (B, N, 4), scores (B, N, C))`` with scores ``sigmoid(cls)``, before NMS.

    Attributes:
        num_classes, image_size, strides, config, data_config (the backbone's mean / std).
    """

    def __init__(self, config: DetectorConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.image_size = config.image_size
        self.strides = STRIDES
        self.data_config = dict(backbone.data_config)
        self.backbone_spec = backbone.spec
        model = backbone.model
        info = list(model.feature_info)  # type: ignore[arg-type]
        try:
            self.feature_indices = [
                max(i for i, f in enumerate(info) if f["reduction"] == r) for r in self.strides
            ]
        except ValueError:
            raise ValueError(
                f"backbone {config.backbone!r} has no features at strides {self.strides} "
                f"(its reductions: {[f['reduction'] for f in info]})"
            ) from None
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"backbone {config.backbone!r} does not support timm's forward_intermediates")
        model.prune_intermediate_layers(self.feature_indices, prune_head=True)  # type: ignore[operator]
        self.backbone = model
        channels = tuple(int(info[i]["num_chs"]) for i in self.feature_indices)
        depth, width = SIZES[config.size]
        self.neck = PANNeck(channels, width, depth, rep=config.repconv, depthwise=config.depthwise)  # type: ignore[arg-type]
        hidden = scaled_width(256, width)
        anchors = None
        if config.head == "anchor":
            anchors = config.anchors if config.anchors is not None else default_anchors(config.image_size)
        bins, dw = config.dfl_bins, config.depthwise
        self.head = DetectionHead(
            self.neck.out_channels, config.num_classes, self.strides, hidden, anchors, bins, dw
        )
        self.aux_head: DetectionHead | None = (
            DetectionHead(self.neck.aux_channels, config.num_classes, self.strides, hidden, anchors, bins, dw)
            if config.aux_head
            else None
        )

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone maps at strides 8, 16, 32."""
        return list(
            self.backbone.forward_intermediates(  # type: ignore[operator]
                images, indices=self.feature_indices, intermediates_only=True
            )
        )

    def forward(self, images: torch.Tensor) -> Any:
        outs, aux_feats = self.neck(self.features(images))
        cls, boxes, points, strides, dist = self.head(outs)
        if not self.training:
            return boxes, torch.sigmoid(cls)
        result: dict[str, Any] = {"cls": cls, "boxes": boxes, "points": points, "strides": strides}
        if dist is not None:
            result["box_dist"] = dist
        if self.aux_head is not None:
            a_cls, a_boxes, _, _, a_dist = self.aux_head(aux_feats)
            result["aux"] = {"cls": a_cls, "boxes": a_boxes, "points": points, "strides": strides}
            if a_dist is not None:
                result["aux"]["box_dist"] = a_dist
        return result

    @torch.no_grad()
    def fuse(self) -> Detector:
        """For export, in place: re-parameterize every block that has train-time structure -- our RepConv and
        conv-BN blocks and timm's re-parameterizable backbones (repvgg, mobileone, fastvit) through
        :func:`timm.utils.reparameterize_model` -- and drop the auxiliary head. Eval-mode outputs are unchanged
        (up to float rounding). Returns ``self``."""
        self.aux_head = None
        self.eval()
        reparameterize_model(self, inplace=True)
        return self


def create_detector(config: DetectorConfig) -> Detector:
    """Build a :class:`Detector` (in eval mode); the backbone's weights load as
    :func:`~frugalvision.models.create_backbone` loads them (raises ``WeightsError`` rather than carry on)."""
    backbone = create_backbone(config.backbone, pretrained=config.pretrained, **config.backbone_kwargs)
    return Detector(config, backbone).eval()
