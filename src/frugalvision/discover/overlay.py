"""A picture of what MaskCut found: masks tinted in distinct colours, boxes and scores drawn on the image.

Pillow only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from frugalvision.discover.maskcut import Discovery

__all__ = ["draw_discovery", "save_overlay"]

# Colour-blind-safe qualitative palette (Okabe & Ito 2008), cycled when there are more objects.
_PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)


def draw_discovery(
    image: Image.Image,
    discovery: Discovery,
    *,
    alpha: float = 0.45,
    ground_truth: np.ndarray | None = None,
) -> Image.Image:
    """Return a copy of ``image`` with each mask tinted, its box outlined and labelled ``#k score``.

    Args:
        image: the image the discovery was made on (same size).
        discovery: MaskCut's result.
        alpha: opacity of the mask tint, in [0, 1].
        ground_truth: optional ``(G, 4)`` ``(x0, y0, x1, y1)`` boxes drawn as thin white frames.
    """
    if image.size != discovery.image_size:
        raise ValueError(f"image is {image.size} but the discovery was made on {discovery.image_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for k, mask in enumerate(discovery.masks):
        tint = np.asarray(_PALETTE[k % len(_PALETTE)], dtype=np.float32)
        canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * tint
    out = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 150))
    if ground_truth is not None:
        for box in np.asarray(ground_truth, dtype=np.float64).reshape(-1, 4):
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255), width=1)
    for k, (box, score) in enumerate(zip(discovery.boxes, discovery.scores, strict=True)):
        colour = _PALETTE[k % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
        label = f"#{k + 1} {float(score):.2f}"
        tx, ty = x0 + width, y0 + width
        text_box = draw.textbbox((tx, ty), label)
        draw.rectangle(text_box, fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=colour)
    return out


def save_overlay(
    image: Image.Image,
    discovery: Discovery,
    out: str | os.PathLike[str],
    *,
    alpha: float = 0.45,
    ground_truth: np.ndarray | None = None,
) -> Path:
    """Draw :func:`draw_discovery` and write it as a PNG (folders are created); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_discovery(image, discovery, alpha=alpha, ground_truth=ground_truth).save(path, format="PNG")
    return path
