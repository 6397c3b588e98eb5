"""``frugalvision select``: rank candidate backbones on labelled images before any training."""

from __future__ import annotations

import json
from pathlib import Path

import click

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    batch_size_option,
    device_option,
    format_option,
    json_option,
    on_corrupt_option,
    out_option,
    pretrained_option,
    progress_option,
    seed_option,
    threads_option,
    workers_option,
)

_SCORES = (
    "linear_probe",
    "knn_recall_at_1",
    "map_at_r",
    "logme",
)  # = frugalvision.selection.SCORES (no torch here)


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--models",
    "-m",
    "models",
    required=True,
    help="Comma-separated candidates: timm names (tagged or not), offline backbone names, or ARCH=FILE for "
    "local weights of a timm architecture (e.g. resnet18=my.safetensors).",
)
@out_option(
    "Folder for selection.json, selection.png and the per-model cache (cache/): re-running with more models "
    "embeds only the new ones."
)
@pretrained_option("Load pretrained weights for names without =FILE; --no-pretrained gives random weights.")
@click.option(
    "--rank-by",
    type=click.Choice(_SCORES),
    default="linear_probe",
    help="The score that orders the table and the Pareto front.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=2),
    default=None,
    help="Score at most this many images per class (drawn with --seed) [default: all].",
)
@click.option("--folds", type=click.IntRange(min=2), default=5, help="Linear-probe CV folds.")
@seed_option("CV folds, the --per-class draw and --no-pretrained weights.")
@click.option(
    "--speed/--no-speed",
    default=True,
    help="Export each model to ONNX (cached) and measure ONNX Runtime images/s at batch 1 and 32.",
)
@threads_option("ONNX Runtime threads for the speed.", default=2)
@click.option(
    "--speed-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    help="Seconds spent timing each batch size.",
)
@click.option(
    "--remeasure", is_flag=True, help="Measure the speed again instead of reading it from the cache."
)
@format_option(
    ["auto", "folder", "manifest"],
    "How to read DATA: class-per-folder tree or CSV/JSONL manifest (path,label).",
)
@json_option()
@batch_size_option(32)
@workers_option()
@on_corrupt_option()
@device_option()
@progress_option("Show progress bars.")
def select(
    data: Path,
    models: str,
    out: Path,
    pretrained: bool,
    rank_by: str,
    per_class: int | None,
    folds: int,
    seed: int,
    speed: bool,
    threads: int,
    speed_seconds: float,
    remeasure: bool,
    fmt: str,
    as_json: bool,
    batch_size: int,
    workers: int | None,
    on_corrupt: str,
    device: str,
    progress: bool,
) -> None:
    """Which pretrained backbone fits the labelled images in DATA? Score each of --models on them, before any
    training, beside its cost.

    \b
    Quality (frozen features, higher is better):
      R@1, MAP@R  leave-one-out cosine kNN retrieval
      probe       cross-validated logistic-regression accuracy
      LogME       log maximum evidence of a Bayesian linear model (You et al., ICML 2021)
    Cost: parameters; ONNX Runtime images/s at batch 1 and 32 (--threads) on this machine.

    Writes OUT/selection.json and OUT/selection.png (quality against speed, the Pareto front marked: no other
    model is both better and faster). Features are cached per model in OUT/cache, so adding a model to the
    list embeds with that one only, and a killed run resumes.
    """
    from frugalvision.data import open_dataset
    from frugalvision.selection import (
        check_candidate,
        parse_candidates,
        save_selection_plot,
        select_backbones,
    )

    candidates = parse_candidates(models, pretrained=pretrained)
    for candidate in candidates:  # a misspelt name is one error line before anything else happens
        check_candidate(candidate)
    dataset = open_dataset(data, format=fmt, on_corrupt=on_corrupt)
    click.echo(f"data: {dataset!r}", err=True)
    with data_warnings():
        result = select_backbones(
            dataset,
            candidates,
            out / "cache",
            rank_by=rank_by,
            per_class=per_class,
            folds=folds,
            seed=seed,
            speed=speed,
            threads=threads,
            speed_seconds=speed_seconds,
            remeasure=remeasure,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            progress=progress,
        )
    from frugalvision._fs import write_text_atomic

    payload = result.to_dict()
    write_text_atomic(out / "selection.json", json.dumps(payload, indent=2))
    png = save_selection_plot(result, out / "selection.png")
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"{result.images} images, {result.classes} classes; ranked by {rank_by}")
        click.echo(result.table())
        click.echo(f"wrote {out / 'selection.json'} and {png}", err=True)
