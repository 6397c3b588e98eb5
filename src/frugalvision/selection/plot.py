"""The selection chart: quality against speed, one labelled point per candidate, the Pareto front joined."""

from __future__ import annotations

import os
from pathlib import Path

from frugalvision.plots import save_figure
from frugalvision.selection.cost import SPEED_BATCHES
from frugalvision.selection.run import SelectionResult

__all__ = ["SCORE_TITLES", "save_selection_plot"]

#: Axis titles of the scores.
SCORE_TITLES = {
    "knn_recall_at_1": "kNN Recall@1 (leave-one-out)",
    "map_at_r": "MAP@R (leave-one-out)",
    "linear_probe": "linear-probe accuracy (cross-validated)",
    "logme": "LogME",
}


def save_selection_plot(result: SelectionResult, path: str | os.PathLike[str]) -> Path:
    """Scatter of ``result.rank_by`` (y) against ONNX Runtime images/s at batch 32 (x, log scale) -- or against
    parameters (fewer to the right) when speed was not measured; Pareto-front points are filled red and joined.

    Returns:
        The PNG written (parent folders are created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = str(SPEED_BATCHES[-1])
    timed = all(batch in m.speed for m in result.models)
    points: list[tuple[float, float, str, bool]] = []
    for m in result.models:
        y = m.scores[result.rank_by]
        if y is not None:  # LogME can be undefined for a model: no point
            points.append((m.speed[batch] if timed else m.parameters / 1e6, y, m.model, m.pareto))
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for x, y, name, front in points:
        ax.scatter([x], [y], s=50, color="C3" if front else "C0", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize="small")
    front_pts = sorted((x, y) for x, y, _, f in points if f)
    if len(front_pts) > 1:
        ax.plot(*zip(*front_pts, strict=True), color="C3", linestyle="--", linewidth=1, label="Pareto front")
        ax.legend(loc="best", fontsize="small")
    if timed:
        ax.set_xscale("log")
        ax.set_xlabel(f"ONNX Runtime images/s at batch {batch}, {result.threads} threads (higher is faster)")
    else:
        ax.invert_xaxis()
        ax.set_xlabel("parameters, millions (fewer to the right)")
    ax.set_ylabel(SCORE_TITLES.get(result.rank_by, result.rank_by))
    ax.set_title(
        f"Backbones on {Path(result.data).name or 'the data'}: {result.images} images, {result.classes} classes"
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
