"""``frugalvision curate duplicates | select | compare``: data curation with embeddings."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import click
import numpy as np

from frugalvision.cli._app import cli
from frugalvision.cli._options import (
    ModelSettings,
    RunSettings,
    cache_option,
    clusters_option,
    duplicate_threshold_option,
    model_options,
    out_option,
    run_options,
    seed_option,
)
from frugalvision.cli.foundation import load_store


@cli.group()
def curate() -> None:
    """Curate image data with embeddings: duplicates, balanced subsets, data-set comparison.

    Each command takes an embedding store (from `frugalvision embed`) or images, which it embeds with --model.
    """


#: ``--cache`` of the commands that embed one DATA.
_CACHE_HELP = "Keep the embeddings of DATA in this store folder."


@curate.command()
@click.argument("source", metavar="STORE_OR_DATA", type=click.Path(exists=True, path_type=Path))
@out_option("Write exact.csv, near.csv and near_pairs.png to this folder.", required=False)
@duplicate_threshold_option(
    "--threshold",
    "Cosine similarity from which two images are near duplicates [default: frugalvision.curation."
    "NEAR_DUPLICATE_THRESHOLD, calibrated for the default model by benchmarks/duplicates.py; tune it for others].",
)
@click.option(
    "--max-pairs",
    default=32,
    type=click.IntRange(min=1),
    help="Pairs drawn on near_pairs.png.",
)
@click.option(
    "--search",
    "method",
    type=click.Choice(["auto", "exact", "approximate"]),
    default="auto",
    help="Near-duplicate search: exact all pairs (quadratic), or approximate (PCA + IVF candidates, each checked "
    "exactly; its pair recall against exact search on a sample is printed); auto = approximate from "
    "frugalvision.curation.APPROXIMATE_FROM (200,000) images.",
)
@cache_option(_CACHE_HELP)
@model_options()
@run_options
def duplicates(
    source: Path,
    out: Path | None,
    threshold: float | None,
    max_pairs: int,
    method: str,
    cache: Path | None,
    model: ModelSettings,
    run: RunSettings,
) -> None:
    """Find exact duplicates (same bytes) and near duplicates (cosine >= --threshold)."""
    from frugalvision.curation import (
        NEAR_DUPLICATE_THRESHOLD,
        DuplicatePairs,
        duplicate_groups,
        exact_duplicates,
        near_duplicates,
        save_pair_grid,
        write_pairs_csv,
    )

    if threshold is None:
        threshold = NEAR_DUPLICATE_THRESHOLD
    store = load_store(source, model, cache, run)
    present = [i for i, p in enumerate(store.paths) if os.path.isfile(p)]
    exact = [[present[i] for i in g] for g in exact_duplicates([store.paths[i] for i in present])]
    pairs = near_duplicates(store.vectors, threshold, method=method)  # type: ignore[arg-type]  # click.Choice
    groups = duplicate_groups(pairs, len(store))
    click.echo(
        f"{len(store)} images: {len(exact)} group(s) of exact duplicates "
        f"({sum(len(g) - 1 for g in exact)} redundant file(s)); {len(pairs)} near-duplicate pair(s) "
        f"at cosine >= {threshold} in {len(groups)} group(s)"
    )
    if pairs.recall is not None:
        r = pairs.recall
        found = "no exact pair among them" if r["recall"] is None else f"pair recall {r['recall']:.3f}"
        click.echo(
            f"  approximate search: {found} ({r['exact_pairs']} exact pairs of {r['sample_rows']} sampled images)"
        )
    for g in exact[:10]:
        click.echo("  exact: " + "  ==  ".join(store.paths[i] for i in g))
    for a, b, s in list(zip(pairs.first, pairs.second, pairs.similarity, strict=True))[:10]:
        click.echo(f"  near {s:.3f}: {store.paths[a]}  ~  {store.paths[b]}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ea = np.array([g[0] for g in exact for _ in g[1:]], dtype=np.int64)
        eb = np.array([j for g in exact for j in g[1:]], dtype=np.int64)
        write_pairs_csv(
            DuplicatePairs(ea, eb, np.ones(len(ea), np.float32)), store.paths, out / "exact.csv", kind="exact"
        )
        write_pairs_csv(pairs, store.paths, out / "near.csv")
        if len(pairs):
            save_pair_grid(pairs, store.paths, out / "near_pairs.png", max_pairs=max_pairs)
        click.echo(f"written to {out}", err=True)


@curate.command()
@click.argument("source", metavar="STORE_OR_DATA", type=click.Path(exists=True, path_type=Path))
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of images to select.")
@out_option("Manifest CSV of the selection (path,label,cluster).", kind="file")
@clusters_option("k-means clusters (flat) [default: about sqrt(N)].")
@click.option(
    "--levels",
    default=None,
    help="Hierarchical k-means, clusters per level fine to coarse, e.g. 200,20 (overrides --clusters).",
)
@click.option(
    "--within",
    type=click.Choice(["random", "closest"]),
    default="random",
    help="How a cluster gives its quota: random members, or those closest to its centre.",
)
@seed_option("Random seed (k-means and draws).")
@cache_option(_CACHE_HELP)
@model_options()
@run_options
def select(
    source: Path,
    n: int,
    out: Path,
    clusters: int | None,
    levels: str | None,
    within: str,
    seed: int,
    cache: Path | None,
    model: ModelSettings,
    run: RunSettings,
) -> None:
    """Select N images spread evenly over k-means clusters (balanced sampling) and write them as a manifest."""
    from frugalvision.curation import select_balanced

    store = load_store(source, model, cache, run)
    if levels is not None:
        try:
            ks: list[int] | None = [int(v) for v in levels.split(",")]
        except ValueError:
            raise click.BadParameter(
                f"expected comma-separated integers, got {levels!r}", param_hint="--levels"
            ) from None
    else:
        ks = [clusters] if clusters is not None else None
    chosen, leaf = select_balanced(store.vectors, n, levels=ks, within=within, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.resolve().parent
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "cluster"])
        for i in chosen:
            w.writerow([os.path.relpath(store.paths[i], base), "|".join(store.labels[i]), int(leaf[i])])
    used = np.bincount(leaf[chosen], minlength=int(leaf.max()) + 1)
    click.echo(
        f"selected {len(chosen)} of {len(store)} images from {int((used > 0).sum())} clusters "
        f"(per cluster: min {int(used[used > 0].min())}, max {int(used.max())}); wrote {out}"
    )


@curate.command()
@click.argument("data_a", metavar="DATA_A", type=click.Path(exists=True, path_type=Path))
@click.argument("data_b", metavar="DATA_B", type=click.Path(exists=True, path_type=Path))
@out_option("Report folder (clusters.csv, summary.json, cluster_NNN.png).")
@clusters_option("k-means clusters of the union [default: about sqrt(N)].", min=2)
@click.option(
    "--dominance",
    default=0.8,
    type=click.FloatRange(0.5, 1, min_open=True),
    help="Size-balanced share from which a cluster counts as dominated by one set.",
)
@click.option(
    "--min-size",
    default=5,
    type=click.IntRange(min=1),
    help="Smallest cluster that can be flagged.",
)
@seed_option("k-means seed.")
@model_options()
@run_options
def compare(
    data_a: Path,
    data_b: Path,
    out: Path,
    clusters: int | None,
    dominance: float,
    min_size: int,
    seed: int,
    model: ModelSettings,
    run: RunSettings,
) -> None:
    """Compare two data sets (stores or images) by clustering their union: report the clusters one set dominates."""
    from frugalvision.curation import compare_datasets, write_comparison_report

    a = load_store(data_a, model, None, run)
    b = load_store(data_b, model, None, run)
    result = compare_datasets(
        a.vectors, b.vectors, k=clusters, dominance=dominance, min_size=min_size, seed=seed
    )
    names = (data_a.name or "A", data_b.name or "B")
    if names[0] == names[1]:
        names = ("A", "B")
    write_comparison_report(result, a.vectors, a.paths, b.vectors, b.paths, out, names=names)
    fa, fb = result.flagged("a"), result.flagged("b")
    click.echo(
        f"{len(a)} + {len(b)} images in {len(result.dominated)} clusters; "
        f"{len(fa)} dominated by {names[0]}, {len(fb)} by {names[1]} (share >= {dominance})"
    )
    for side, ids, name in (("a", fa, names[0]), ("b", fb, names[1])):
        for j in ids[:10]:
            share = result.share_a[j] if side == "a" else 1 - result.share_a[j]
            click.echo(
                f"  cluster {j:>3}: {int(result.count_a[j])} {names[0]} + {int(result.count_b[j])} {names[1]} -> {share:.0%} {name}"
            )
    click.echo(f"report: {out}", err=True)
