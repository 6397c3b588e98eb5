"""Contact sheets: rows of captioned thumbnails (duplicate pairs, cluster examples, review queues).

Pillow only, like :mod:`frugalvision.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from frugalvision.plots import thumbnail

__all__ = ["save_contact_sheet"]

_TEXT = (0, 0, 0)
_FRAME = (200, 200, 200)


def save_contact_sheet(
    rows: Sequence[Sequence[str | os.PathLike[str]]],
    out: str | os.PathLike[str],
    *,
    captions: Sequence[Sequence[str]] | None = None,
    titles: Sequence[str] | None = None,
    thumb: int = 112,
) -> Path:
    """Draw rows of thumbnails, each with an optional caption under it and an optional title over the row.

    Args:
        rows: image files, one list per row (rows may differ in length).
        out: PNG file to write (folders are created).
        captions: one caption per image, same nesting as ``rows``.
        titles: one line of text above each row.
        thumb: thumbnail side in pixels.

    Returns:
        The path written.
    """
    if not rows or not any(rows):
        raise ValueError("nothing to draw: no images")
    if captions is not None and [len(c) for c in captions] != [len(r) for r in rows]:
        raise ValueError("captions must have one entry per image, in the same rows as the images")
    if titles is not None and len(titles) != len(rows):
        raise ValueError(f"titles must have one entry per row: {len(rows)} rows, {len(titles)} titles")
    pad, text_h = 4, 13
    title_h = text_h + 4 if titles is not None else 0
    caption_h = text_h * 2 if captions is not None else 0
    cell_w = thumb + 2 * pad
    row_h = title_h + thumb + 2 * pad + caption_h
    width = cell_w * max(len(r) for r in rows)
    canvas = Image.new("RGB", (width, row_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, images in enumerate(rows):
        y = r * row_h
        if titles is not None:
            draw.text((pad, y + 2), titles[r], fill=_TEXT)
        for c, path in enumerate(images):
            x = c * cell_w
            top = y + title_h
            draw.rectangle([x, top, x + cell_w - 1, top + thumb + 2 * pad - 1], outline=_FRAME)
            canvas.paste(thumbnail(path, thumb), (x + pad, top + pad))
            if captions is not None:
                for i, line in enumerate(str(captions[r][c]).split("\n")[:2]):
                    draw.text((x + pad, top + thumb + 2 * pad + i * text_h), line, fill=_TEXT)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)
    return target
