"""Pictures people would rather look at than read: retrieval grids (query -> top-k results), per-class AP,
training curves; a classifier's confusion matrix and reliability diagram; for detection, precision-recall curves,
the confusion matrix and drawn boxes.

The retrieval grid needs Pillow only, so it also works where matplotlib is absent; the charts import
matplotlib when called.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from frugalvision.data import load_image

__all__ = [
    "draw_detections",
    "save_confusion_matrix",
    "save_detection_confusion_matrix",
    "save_figure",
    "save_per_class_ap_plot",
    "save_pr_curves",
    "save_reliability_diagram",
    "save_retrieval_grid",
    "save_training_curves",
    "thumbnail",
]

_GREEN = (40, 160, 60)
_RED = (210, 50, 40)
_GREY = (150, 150, 150)
_QUERY = (40, 90, 200)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders created), close it and return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def thumbnail(path: str | os.PathLike[str], size: int) -> Image.Image:
    """The image at ``path`` padded (white) to ``size`` x ``size``; a grey square when it cannot be read (it vanished
    or broke since it was listed)."""
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
        canvas.paste(thumbnail(q, thumb), (pad, y + pad))
        draw.text((pad, y + cell), "query", fill=(0, 0, 0))
        for col, hit in enumerate(hits):
            x = cell * (col + 1) + gap
            colour = _GREY if correct is None else (_GREEN if correct[row][col] else _RED)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            canvas.paste(thumbnail(hit, thumb), (x + pad, y + pad))
            if scores is not None:
                draw.text((x + pad, y + cell), f"#{col + 1}  {scores[row][col]:.3f}", fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def save_per_class_ap_plot(
    ap: Iterable[float],
    positives: Iterable[int],
    classes: Iterable[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Average precision per class (most frequent at the top)",
) -> Path:
    """Horizontal bars of per-class AP, classes sorted by their number of positives, to show the long tail.

    Each bar is labelled with the class name and its positive count; a class without AP (``nan``: no known
    positive) gets no bar and the text ``n/a``. A dashed line marks the mean AP (mAP).

    Args:
        ap: ``(C,)`` AP per class, e.g. from :func:`frugalvision.metrics.average_precision_per_class`.
        positives: ``(C,)`` positive counts used for the order (training or validation frequency).
        classes: ``C`` class names.
        path: PNG file to write (folders are created).
        title: the chart's title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [float(v) for v in ap]
    counts = [int(n) for n in positives]
    names = [str(c) for c in classes]
    if not (len(values) == len(counts) == len(names)):
        raise ValueError(
            f"ap, positives and classes must have one entry per class, got {len(values)}, {len(counts)} "
            f"and {len(names)}"
        )
    if not values:
        raise ValueError("nothing to draw: no classes")
    order = sorted(range(len(values)), key=lambda c: (-counts[c], names[c]))  # most frequent first
    rows = range(len(order))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.24 * len(order)))
    shown = [0.0 if math.isnan(values[c]) else values[c] for c in order]
    ax.barh(rows, shown, color="C0", height=0.75)
    for row, c in zip(rows, order, strict=True):
        text = "n/a" if math.isnan(values[c]) else f"{values[c]:.3f}"
        ax.text(shown[row] + 0.01, row, text, va="center", fontsize="x-small")
    ax.set_yticks(list(rows), [f"{names[c]} ({counts[c]})" for c in order], fontsize="small")
    known = [v for v in values if not math.isnan(v)]
    if known:
        mean_ap = sum(known) / len(known)
        ax.axvline(mean_ap, color="C3", linestyle="--", linewidth=1, label=f"mAP {mean_ap:.3f}")
        ax.legend(loc="lower right", fontsize="small")
    ax.set(title=title, xlabel="average precision", xlim=(0, 1.1), ylim=(len(order) - 0.5, -0.5))
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def save_training_curves(
    history: Sequence[Mapping[str, Any]],
    out: str | os.PathLike[str],
    baseline: Mapping[str, Any] | None = None,
) -> Path:
    """A bundle's ``curves.png``: training loss (left) and validation metrics (right) per epoch; dashed lines:
    ``baseline`` (the pretrained backbone's metrics). ``history``: one dict per epoch (``epoch``, ``train/loss``,
    ``val/...``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h.get("epoch") for h in history]
    losses = [h.get("train/loss") for h in history]
    if any(v is not None for v in losses):
        ax_loss.plot(epochs, [math.nan if v is None else v for v in losses], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    val_keys = sorted({k for h in history for k in h if k.startswith("val/")})
    for i, key in enumerate(val_keys):
        colour = f"C{i}"
        ax_val.plot(epochs, [h.get(key, math.nan) for h in history], marker="o", color=colour, label=key[4:])
        if baseline and baseline.get(key) is not None:
            ax_val.axhline(float(baseline[key]), color=colour, linestyle="--", linewidth=0.8)
    ax_val.set(title="validation (dashed: pretrained backbone)", xlabel="epoch", ylim=(0, 1.02))
    if val_keys:
        ax_val.legend(fontsize="small")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, out)


def save_pr_curves(
    recall: Sequence[float],
    precision: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Precision-recall at IoU 0.5",
) -> Path:
    """One interpolated precision-recall curve per class and their mean (bold), the legend giving each class's AP.

    Args:
        recall: ``(R,)`` recall points, e.g. ``DetectionEvaluation.recall_thresholds``.
        precision: ``(C, R)`` precision per class at those recalls (``nan`` rows: a class without ground truth,
            drawn as nothing), e.g. ``DetectionEvaluation.pr_curve(0.5)``.
        classes: ``C`` class names.
        path: PNG file to write (folders are created).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64)
    if prec.ndim != 2 or prec.shape != (len(classes), len(rec)):
        raise ValueError(f"precision must have shape (C, R) = ({len(classes)}, {len(rec)}), got {prec.shape}")
    if not len(classes):
        raise ValueError("nothing to draw: no classes")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, row in zip(classes, prec, strict=True):
        if np.isnan(row).all():
            continue
        ax.plot(rec, row, linewidth=1, label=f"{name} {np.nanmean(row):.3f}" if len(classes) <= 20 else None)
    defined = ~np.isnan(prec).all(axis=1)
    if defined.any():
        mean = np.nanmean(prec[defined], axis=0)
        ax.plot(rec, mean, color="k", linewidth=2.5, label=f"all classes {float(np.mean(mean)):.3f}")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower left")
    return save_figure(fig, path)


def save_detection_confusion_matrix(
    matrix: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    normalize: bool = True,
    title: str = "Detection confusion matrix",
) -> Path:
    """Heat map of a ``(C + 1, C + 1)`` detection confusion matrix (rows true, columns predicted, last = background;
    :func:`frugalvision.metrics.detection.detection_confusion_matrix`): :func:`save_confusion_matrix` with a
    ``background`` class, each row normalised to sum 1 when ``normalize``; counts are written in the cells when
    ``C <= 30``.

    Returns:
        The path written.
    """
    return save_confusion_matrix(
        matrix, [*map(str, classes), "background"], path, title=title, normalize=normalize
    )


def _palette(k: int) -> tuple[int, int, int]:
    """A distinct, saturated colour for class ``k`` (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: Image.Image | str | os.PathLike[str],
    boxes: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    scores: Any = None,
    out: str | os.PathLike[str] | None = None,
    width: int = 2,
) -> Image.Image:
    """Draw ``boxes (n, 4)`` xyxy (pixels of ``image``) as rectangles coloured by class, each captioned with its class
    name and, with ``scores``, its score. ``image``: a PIL image or a file (decoded upright with
    :func:`~frugalvision.data.load_image`). Pillow only.

    Returns:
        A new RGB image (also written to ``out`` as PNG when given).
    """
    import numpy as np

    canvas = load_image(image) if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
    canvas = canvas.copy()
    box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    score_array = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(label_array) != len(box_array) or (score_array is not None and len(score_array) != len(box_array)):
        raise ValueError(
            f"boxes, labels and scores must have one entry per box: {len(box_array)}, {len(label_array)}"
            + ("" if score_array is None else f", {len(score_array)}")
        )
    bad = [int(c) for c in label_array if not 0 <= c < len(classes)]
    if bad:
        raise ValueError(f"label {bad[0]} is outside [0, {len(classes)}) classes")
    draw = ImageDraw.Draw(canvas)
    for n, (box, label) in enumerate(zip(box_array, label_array, strict=True)):
        colour = _palette(int(label))
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        caption = str(classes[int(label)]) + ("" if score_array is None else f" {score_array[n]:.2f}")
        left, top, right, bottom = draw.textbbox((x0, y0), caption)
        lift = bottom - top + 2
        text_y = y0 - lift if y0 - lift >= 0 else y0
        draw.rectangle([x0, text_y, x0 + right - left + 3, text_y + lift], fill=colour)
        draw.text((x0 + 2, text_y), caption, fill=(255, 255, 255))
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
    return canvas


def save_confusion_matrix(
    matrix: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    normalize: bool = True,
) -> Path:
    """A ``(C, C)`` confusion matrix (rows: true class, columns: predicted) as a heat map of the row-normalised
    rates (each row sums to 1 over the images of that class; a class without images stays empty), or of the counts
    when not ``normalize``. Class names label the axes up to 60 classes; above that the picture is kept to a fixed
    size and unlabelled; up to 31 classes the counts are written in the cells. The default title gives the accuracy
    ``trace / sum``.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(matrix, dtype=np.float64)
    names = [str(c) for c in classes]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise ValueError(f"matrix must be (C, C) with C = {len(names)} class names, got shape {cm.shape}")
    shown = cm
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    c = len(names)
    side = min(16.0, 3.0 + 0.22 * c)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    fig.colorbar(
        image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class" if normalize else "count"
    )
    if c <= 60:
        ax.set_xticks(range(c), names, rotation=90, fontsize="x-small")
        ax.set_yticks(range(c), names, fontsize="x-small")
    if c <= 31:
        limit = np.nanmax(shown) / 2 if np.isfinite(shown).any() else 0.0
        for i, j in zip(*np.nonzero(cm), strict=True):
            colour = "white" if shown[i, j] > limit else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize="x-small", color=colour)
    acc = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    ax.set(xlabel="predicted", ylabel="true", title=title or f"confusion matrix (accuracy {acc:.3f})")
    return save_figure(fig, path)


def save_reliability_diagram(
    curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Reliability diagram (Guo et al., ICML 2017): per confidence bin, accuracy against mean confidence, one
    line per entry of ``curves`` (label -> :func:`frugalvision.metrics.classification.reliability_bins` output,
    e.g. before and after temperature scaling); the diagonal is perfect calibration; empty bins are skipped. A
    lower panel shows how many images fall in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not curves:
        raise ValueError("nothing to draw: no reliability curves")
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    width = None
    for i, (label, bins) in enumerate(curves.items()):
        conf, acc = np.asarray(bins["confidence"], float), np.asarray(bins["accuracy"], float)
        count = np.asarray(bins["count"], float)
        lower, upper = np.asarray(bins["lower"], float), np.asarray(bins["upper"], float)
        keep = count > 0
        ax.plot(conf[keep], acc[keep], marker="o", color=f"C{i}", label=label)
        width = (upper - lower) / (len(curves) + 1)
        ax_n.bar(lower + width * (i + 0.5), count, width=width, align="edge", color=f"C{i}", alpha=0.7)
    ax.set(title=title or "reliability diagram", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.set(xlabel="confidence (top-1 probability)", ylabel="images")
    ax_n.grid(alpha=0.3)
    return save_figure(fig, path)
