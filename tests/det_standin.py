"""A small stand-in for ``frugalvision.models.detection.Detector`` (issue 14's contract), for the export, runtime and
service tests: a tiny conv net whose eval ``forward(images (B, 3, S, S))`` returns ``(boxes (B, N, 4) xyxy in input
pixels, scores (B, N, C) in [0, 1])`` before NMS, N = all grid cells of its levels (strides 8 and 16).

Anchor-free decoding as in YOLOX: ``cx = (gx + 0.5 + tanh(dx)) * stride``, ``w = exp(clamp(dw)) * 2 * stride``.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TinyDetector(nn.Module):
    def __init__(
        self,
        num_classes: int = 3,
        image_size: int = 64,
        width: int = 8,
        seed: int = 0,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.upsample = (
            upsample  # a PAN-like top-down path (Resize in ONNX: ORT's symbolic shapes cannot follow it)
        )
        torch.manual_seed(seed)
        self.num_classes, self.image_size, self.strides = num_classes, image_size, (8, 16)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.SiLU(),
        )  # fmt: skip
        self.down = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.SiLU())
        self.heads = nn.ModuleList(nn.Conv2d(2 * width, 4 + num_classes, 1) for _ in self.strides)
        for head in self.heads:
            nn.init.normal_(head.weight, std=0.5)

    def _decode(self, out: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h, w = out.shape
        out = out.flatten(2).transpose(1, 2)  # (B, HW, 4 + C)
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=out.dtype), torch.arange(w, dtype=out.dtype), indexing="ij"
        )
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (HW, 2)
        centre = (grid + 0.5 + torch.tanh(out[..., :2])) * stride
        half = torch.exp(out[..., 2:4].clamp(-4, 4)) * stride
        boxes = torch.cat([centre - half, centre + half], dim=2)
        return boxes, torch.sigmoid(out[..., 4:])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.stem(images)
        f16 = self.down(f8)
        if self.upsample:
            f8 = f8 + nn.functional.interpolate(f16, scale_factor=2.0)
        parts = [
            self._decode(head(f), s) for head, f, s in zip(self.heads, (f8, f16), self.strides, strict=True)
        ]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def export_tiny(folder, *, classes=("a", "b", "c"), image_size: int = 64, upsample: bool = False, **kwargs):
    """Export a :class:`TinyDetector` with the NMS inside (``frugalvision.deploy.export_detector``); returns
    ``(model, result)``."""
    from frugalvision.deploy import export_detector

    model = TinyDetector(num_classes=len(classes), image_size=image_size, upsample=upsample).eval()
    kwargs = {"score_threshold": 0.5, "iou_threshold": 0.5, **kwargs}
    result = export_detector(
        model, folder, image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=classes, **kwargs
    )
    return model, result
