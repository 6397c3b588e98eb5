"""``frugalvision label``: zero-shot labeling of a folder from class names; helpers shared by ``ood`` and ``curate``."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    ModelSettings,
    RunSettings,
    cache_option,
    input_option,
    model_options,
    out_option,
    run_options,
)

DEFAULT_CLIP = "open_clip:ViT-B-32/laion2b_s34b_b79k"
F = TypeVar("F", bound=Callable[..., Any])


def load_store(source: Path, model: ModelSettings, cache: Path | None, run: RunSettings) -> Any:
    """An embedding store: ``source`` itself if it is one, else the images of ``source`` embedded with ``model``."""
    from frugalvision.embeddings import EmbeddingStore, extract_embeddings
    from frugalvision.foundation import open_images

    if EmbeddingStore.exists(source):
        return EmbeddingStore.load(source)
    dataset = open_images(source)
    click.echo(f"data: {dataset!r}", err=True)
    fm = model.feature_model()
    with data_warnings():
        if cache is not None:
            return extract_embeddings(fm, dataset, cache, **run.kwargs())
        with tempfile.TemporaryDirectory(prefix="frugalvision-") as tmp:
            return extract_embeddings(fm, dataset, Path(tmp) / "store", **run.kwargs())


def _abstain_option(name: str, what: str) -> Callable[[F], F]:
    """``--min-score`` / ``--min-margin``: an image whose ``what`` falls below this is left unlabeled (0: none is)."""
    return click.option(
        name,
        default=0.0,
        type=click.FloatRange(0, 1),
        help=f"Leave images unlabeled when {what} is below this.",
    )


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--classes", "classes_text", default=None, help='Comma-separated class names, e.g. "cat,dog,red fox".'
)
@input_option("--classes-file", kind="file", help="Text file with one class name per line.")
@out_option("Manifest CSV to write (path,label,prediction,score,margin).", kind="file")
@model_options(DEFAULT_CLIP)
@click.option(
    "--templates",
    default="default",
    help="Prompt templates: default, simple, or a file with one template per line ({} = class name).",
)
@_abstain_option("--min-score", "their top-1 probability")
@_abstain_option("--min-margin", "top-1 minus top-2 probability")
@cache_option(
    "Keep the image features in this store folder (re-labeling with other classes is then instant)."
)
@click.option(
    "--review/--no-review",
    default=True,
    help="Also write OUT.review.csv (most uncertain first) and OUT.review.png (contact sheet).",
)
@click.option(
    "--sheet-size",
    default=40,
    type=click.IntRange(min=1),
    help="Images on the review contact sheet.",
)
@run_options
def label(
    data: Path,
    classes_text: str | None,
    classes_file: Path | None,
    out: Path,
    model: ModelSettings,
    templates: str,
    min_score: float,
    min_margin: float,
    cache: Path | None,
    review: bool,
    sheet_size: int,
    run: RunSettings,
) -> None:
    """Label the images of DATA zero-shot from class names with a CLIP model (prompt ensembling).

    DATA is a folder of images (any depth) or any data set frugalvision reads. The manifest trains directly
    (frugalvision train OUT); uncertain images (--min-score, --min-margin) have an empty label and head the
    review queue.
    """
    from frugalvision.foundation import (
        open_images,
        parse_class_names,
        read_class_names,
        resolve_templates,
        write_label_manifest,
        write_review_queue,
        zero_shot_classify,
    )

    if (classes_text is None) == (classes_file is None):
        raise click.UsageError("give the class names with exactly one of --classes or --classes-file")
    names = parse_class_names(classes_text) if classes_text is not None else read_class_names(classes_file)  # type: ignore[arg-type]
    temps = resolve_templates(templates)
    dataset = open_images(data)
    click.echo(f"data: {dataset!r}; {len(names)} classes x {len(temps)} templates", err=True)
    fm = model.feature_model()
    with data_warnings():
        result = zero_shot_classify(fm, dataset, names, temps, cache=cache, **run.kwargs())
    write_label_manifest(result, out, min_score=min_score, min_margin=min_margin)
    labels = result.labels(min_score, min_margin)
    counts = Counter(lab for lab in labels if lab is not None)
    unlabeled = sum(lab is None for lab in labels)
    click.echo(f"wrote {out}: {len(labels) - unlabeled} labelled, {unlabeled} left unlabeled")
    for name in names:
        click.echo(f"  {name:<24} {counts.get(name, 0)}")
    if review:
        queue, sheet = out.with_suffix(".review.csv"), out.with_suffix(".review.png")
        write_review_queue(
            result, queue, sheet=sheet, sheet_size=sheet_size, min_score=min_score, min_margin=min_margin
        )
        click.echo(f"review queue: {queue} and {sheet}", err=True)
