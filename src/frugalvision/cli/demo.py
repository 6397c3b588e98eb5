"""``frugalvision demo``: the whole image-search pipeline, offline, on built-in sample photos."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from frugalvision.cli._app import cli
from frugalvision.cli._options import model_option, out_option, progress_option, seed_option


@cli.command()
@out_option("Folder for the demo data, embeddings, index and PNG.", default="frugalvision-demo")
@click.option(
    "--views",
    default=16,
    type=click.IntRange(min=2),
    help="Random views (crops) generated per sample photo.",
)
@seed_option("Seed of the generated views and of the chosen queries.")
@model_option(help="Backbone; the default loads real ImageNet weights with no network.")
@progress_option()
def demo(out: Path, views: int, seed: int, model: str, progress: bool) -> None:
    """Run data -> embeddings -> metrics -> index -> search offline and show where the results went.

    The demo data are random crops of the photos that ship with scikit-image (one class per photo); the
    task is to find the other crops of the same photo.
    """
    from frugalvision.demo import run_demo

    result = run_demo(out, model=model, views_per_photo=views, seed=seed, progress=progress)
    click.echo(f"\n{result.num_images} images of {result.num_classes} photos, model {model}")
    click.echo(f"chance level of Recall@1: {1 / result.num_classes:.3f}")
    click.echo("retrieval metrics (each image queries all others):")
    for name, value in result.metrics.items():
        click.echo(f"  {name:<14} {value:.4f}")
    click.echo(f"\ndata:       {result.data_dir}")
    click.echo(f"embeddings: {result.store_dir}")
    click.echo(f"index:      {result.index_dir}")
    click.echo(f"PNG grid of query -> top-5 results: {result.grid_png}")
    query = result.data_dir / "chelsea" / "chelsea_000.jpg"
    try_it = shlex.join(["frugalvision", "search", str(result.index_dir), str(query), "-k", "5"])
    click.echo(f"\ntry: {try_it}")
