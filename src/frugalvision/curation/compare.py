"""Compare two data sets by prototypes: cluster their union, report the clusters one set dominates.

A cluster of the union (spherical k-means on the embeddings) is a *prototype*, a visual concept. Where both
sets appear in the usual proportions, they agree; a cluster made (almost) only of images of set A is a concept
that set B lacks: a class, background, camera or style that a model trained on A will meet unprepared in B (or
the reverse).

Set sizes differ, so shares are balanced: the share of A in cluster ``j`` is

    share_A(j) = (a_j / N_A) / (a_j / N_A + b_j / N_B)

(``a_j``, ``b_j`` members from each set, ``N_A``, ``N_B`` set sizes), i.e. what the share would be if both sets
had the same size. A cluster is *dominated by A* when ``share_A >= dominance`` (default 0.8), by B when
``share_A <= 1 - dominance``, and it holds at least ``min_size`` images.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from frugalvision.curation.clustering import default_clusters, kmeans
from frugalvision.metrics.knn import as_embeddings

__all__ = ["DatasetComparison", "compare_datasets", "write_comparison_report"]


@dataclass(frozen=True)
class DatasetComparison:
    """Clusters of the union of sets A and B.

    Attributes:
        cluster_a: ``(N_A,)`` cluster of each row of A.
        cluster_b: ``(N_B,)`` cluster of each row of B.
        count_a, count_b: ``(K,)`` members of each cluster from A and from B.
        share_a: ``(K,)`` size-balanced share of A (see the module docstring).
        dominated: ``(K,)`` ``"a"``, ``"b"`` or ``""``.
        centroids: ``(K, D)`` unit-norm cluster centroids.
        dominance, min_size: the settings used.
    """

    cluster_a: np.ndarray
    cluster_b: np.ndarray
    count_a: np.ndarray
    count_b: np.ndarray
    share_a: np.ndarray
    dominated: list[str]
    centroids: np.ndarray
    dominance: float
    min_size: int

    def flagged(self, side: str) -> list[int]:
        """Clusters dominated by ``side`` (``"a"`` or ``"b"``), most lopsided first."""
        ids = [j for j, d in enumerate(self.dominated) if d == side]
        key = self.share_a if side == "a" else 1.0 - self.share_a
        return sorted(ids, key=lambda j: (-float(key[j]), -int(self.count_a[j] + self.count_b[j])))


def compare_datasets(
    vectors_a: np.ndarray | torch.Tensor,
    vectors_b: np.ndarray | torch.Tensor,
    *,
    k: int | None = None,
    dominance: float = 0.8,
    min_size: int = 5,
    seed: int = 0,
    niter: int = 25,
) -> DatasetComparison:
    """Cluster the union of two embedding sets and flag the clusters one set dominates.

    Args:
        vectors_a: ``(N_A, D)`` embeddings of set A.
        vectors_b: ``(N_B, D)`` embeddings of set B (same model).
        k: clusters; ``None`` = about ``sqrt(N_A + N_B)``.
        dominance: balanced share (in ``(0.5, 1]``) from which a cluster counts as dominated.
        min_size: smallest cluster (members from both sets) that can be flagged.
        seed, niter: k-means settings.
    """
    a = as_embeddings(vectors_a, "vectors_a")
    b = as_embeddings(vectors_b, "vectors_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the two sets must have the same dimension, got {a.shape[1]} and {b.shape[1]}; embed both with one model"
        )
    if not 0.5 < dominance <= 1.0:
        raise ValueError(f"dominance must lie in (0.5, 1], got {dominance}")
    union = torch.cat([a, b])
    kk = default_clusters(union.shape[0]) if k is None else k
    centroids, assign = kmeans(union, kk, seed=seed, niter=niter)
    ca, cb = assign[: a.shape[0]], assign[a.shape[0] :]
    count_a = np.bincount(ca, minlength=kk)
    count_b = np.bincount(cb, minlength=kk)
    frac_a, frac_b = count_a / a.shape[0], count_b / b.shape[0]
    with np.errstate(invalid="ignore"):
        share = np.where(frac_a + frac_b > 0, frac_a / np.maximum(frac_a + frac_b, 1e-300), 0.5)
    big = (count_a + count_b) >= min_size
    dominated = [
        "a" if big[j] and share[j] >= dominance else "b" if big[j] and share[j] <= 1 - dominance else ""
        for j in range(kk)
    ]
    return DatasetComparison(ca, cb, count_a, count_b, share, dominated, centroids, dominance, min_size)


def _examples(vectors: np.ndarray, rows: np.ndarray, centroid: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` rows nearest to the centroid (the cluster's most typical members)."""
    if rows.size == 0:
        return rows
    sims = torch.nn.functional.normalize(torch.from_numpy(vectors[rows]).float(), dim=1).numpy() @ centroid
    return rows[np.argsort(-sims, kind="stable")[:count]]


def write_comparison_report(
    result: DatasetComparison,
    vectors_a: np.ndarray,
    paths_a: Sequence[str],
    vectors_b: np.ndarray,
    paths_b: Sequence[str],
    out: str | os.PathLike[str],
    *,
    names: tuple[str, str] = ("A", "B"),
    examples: int = 8,
    max_grids: int = 12,
) -> Path:
    """Write ``clusters.csv``, ``summary.json`` and one example grid per flagged cluster into ``out``.

    Each grid ``cluster_NNN.png`` shows, for the cluster, the members nearest its centroid from set A (top
    row) and from set B (bottom row, when it has any).
    """
    from frugalvision.curation._draw import save_contact_sheet

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    va, vb = np.asarray(vectors_a, np.float32), np.asarray(vectors_b, np.float32)
    with (target / "clusters.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cluster", f"count_{names[0]}", f"count_{names[1]}", f"share_{names[0]}", "dominated_by"])
        for j in range(len(result.dominated)):
            side = {"a": names[0], "b": names[1]}.get(result.dominated[j], "")
            w.writerow([j, int(result.count_a[j]), int(result.count_b[j]), f"{result.share_a[j]:.4f}", side])
    grids: list[str] = []
    flagged = {"a": result.flagged("a"), "b": result.flagged("b")}
    order = [("a", j) for j in flagged["a"]] + [("b", j) for j in flagged["b"]]
    for _, j in order[:max_grids]:
        rows, titles = [], []
        for label, vec, paths, assign in (
            (names[0], va, paths_a, result.cluster_a),
            (names[1], vb, paths_b, result.cluster_b),
        ):
            members = np.flatnonzero(assign == j)
            pick = _examples(vec, members, result.centroids[j], examples)
            if pick.size:
                rows.append([paths[i] for i in pick])
                titles.append(f"cluster {j}: {label} ({members.size} images)")
        name = f"cluster_{j:03d}.png"
        save_contact_sheet(rows, target / name, titles=titles)
        grids.append(name)
    summary = {
        "sets": {names[0]: int(result.cluster_a.size), names[1]: int(result.cluster_b.size)},
        "clusters": len(result.dominated),
        "dominance": result.dominance,
        "min_size": result.min_size,
        f"dominated_by_{names[0]}": [
            {
                "cluster": j,
                "count": int(result.count_a[j] + result.count_b[j]),
                "share": round(float(result.share_a[j]), 4),
            }
            for j in flagged["a"]
        ],
        f"dominated_by_{names[1]}": [
            {
                "cluster": j,
                "count": int(result.count_a[j] + result.count_b[j]),
                "share": round(1 - float(result.share_a[j]), 4),
            }
            for j in flagged["b"]
        ],
        "grids": grids,
    }
    (target / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return target
