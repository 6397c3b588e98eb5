"""Pictures people would rather look at than read: retrieval grids (query -> top-k results).

Pillow only, so it also works where matplotlib is absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from frugalvision.data import load_image

__all__ = ["save_retrieval_grid"]

_GREEN = (40, 160, 60)
_RED = (210, 50, 40)
_GREY = (150, 150, 150)
_QUERY = (40, 90, 200)


def _thumb(path: str | os.PathLike[str], size: int) -> Image.Image:
    try:
        img = load_image(path)
    except OSError:  # a file that vanished or broke since indexing: draw a placeholder
        return Image.new("RGB", (size, size), (230, 230, 230))
    return ImageOps.pad(img, (size, size), color=(255, 255, 255))


def save_retrieval_grid(
    queries: Sequence[str | os.PathLike[str]],
    results: Sequence[Sequence[str | os.PathLike[str]]],
    out: str | os.PathLike[str],
    *,
    scores: Sequence[Sequence[float]] | None = None,
    correct: Sequence[Sequence[bool]] | None = None,
    thumb: int = 112,
) -> Path:
    """Draw one row per query: the query (blue frame), then its results left to right.

    Args:
        queries: query image files, ``Q`` of them.
        results: for each query, the result image files (best first).
        out: PNG file to write (folders are created).
        scores: optional similarity per result, printed under each thumbnail.
        correct: optional flag per result: green frame if it shares the query's label, red if not.
        thumb: thumbnail side in pixels.

    Returns:
        The path written.
    """
    if len(results) != len(queries):
        raise ValueError(f"results must have one row per query: {len(queries)} queries, {len(results)} rows")
    if not queries:
        raise ValueError("nothing to draw: no queries")
    k = max((len(r) for r in results), default=0)
    pad, gap, text_h = 6, 18, 14
    cell = thumb + 2 * pad
    width = cell * (k + 1) + gap
    height = (cell + text_h) * len(queries)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, (q, hits) in enumerate(zip(queries, results, strict=True)):
        y = row * (cell + text_h)
        draw.rectangle([0, y, cell - 1, y + cell - 1], fill=_QUERY)
        canvas.paste(_thumb(q, thumb), (pad, y + pad))
        draw.text((pad, y + cell), "query", fill=(0, 0, 0))
        for col, hit in enumerate(hits):
            x = cell * (col + 1) + gap
            colour = _GREY if correct is None else (_GREEN if correct[row][col] else _RED)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            canvas.paste(_thumb(hit, thumb), (x + pad, y + pad))
            if scores is not None:
                draw.text((x + pad, y + cell), f"#{col + 1}  {scores[row][col]:.3f}", fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
