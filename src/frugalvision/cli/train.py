"""``frugalvision train``: train an embedding model from a folder of labelled images (a thin layer over
:func:`frugalvision.train.fit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from frugalvision.cli._app import cli, data_warnings

# flag name -> dotted config key; a flag left out keeps the value from --config / the defaults.
_FLAG_KEYS = {
    "task": "task",
    "data": "data.path",
    "out": "out",
    "loss": "loss.name",
    "model": "model.name",
    "pretrained": "model.pretrained",
    "freeze_backbone": "model.freeze_backbone",
    "epochs": "trainer.epochs",
    "batch_size": "data.batch_size",
    "m_per_class": "data.m_per_class",
    "lr": "optim.lr",
    "recipe": "recipe",
    "val_split": "data.val_split",
    "val_fraction": "data.val_fraction",
    "val_data": "data.val_data",
    "seed": "seed",
    "workers": "data.num_workers",
    "devices": "trainer.devices",
    "strategy": "trainer.strategy",
    "accelerator": "trainer.accelerator",
    "precision": "trainer.precision",
    "progress": "trainer.progress",
    "partial": "loss.partial",
}


@cli.command()
@click.option(
    "--task",
    type=click.Choice(["embedding", "multilabel"]),
    default=None,
    help="What to train: embedding = an image-retrieval embedding (metric learning); multilabel = a tagger that gives each image any number of labels [default: embedding].",
)
@click.option(
    "--data",
    "data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Training images: a class-per-folder tree or a CSV/JSONL manifest (path,label; multilabel: path,labels[,unknown]).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder: config.yaml, checkpoints/, logs/, tensorboard/ and the bundle model/.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML file of settings (sections data, model, loss, optim, augment, trainer); flags and --set win over it.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one setting by its dotted key, e.g. --set optim.lr=3e-4 --set loss.kwargs.margin=0.1 (repeatable; wins over everything).",
)
@click.option(
    "--loss",
    default=None,
    help="Loss. Embedding: proxynca++ [default], triplet, arcface, hyperbolic_pce, ...; multilabel: asl [default], bce, focal, db (see frugalvision.losses.list_losses(task=...)).",
)
@click.option(
    "--model",
    "-m",
    "model",
    default=None,
    help="timm backbone name or offline backbone [default: tf_efficientnet_lite0.in1k_offline].",
)
@click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Start from pretrained weights [default: yes]; --no-pretrained for random weights.",
)
@click.option(
    "--freeze-backbone/--fine-tune",
    "freeze_backbone",
    default=None,
    help="--freeze-backbone: compute pooled features once, cache them and train only the head (seconds on a CPU); --fine-tune: train the whole network [default].",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs [default: 10].")
@click.option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=2),
    default=None,
    help="Images per batch and device, a multiple of --m-per-class [default: 32].",
)
@click.option(
    "--m-per-class",
    type=click.IntRange(min=2),
    default=None,
    help="Embedding task: images of each class in a batch [default: 4].",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Backbone learning rate; the head gets 10x, a loss's proxies their own multiple [default: 1e-4].",
)
@click.option(
    "--recipe",
    type=click.Choice(["none", "light", "medium", "strong"]),
    default=None,
    help="Augmentation/regularisation preset after AugReg (see frugalvision.train.recipes) [default: light].",
)
@click.option(
    "--val-split",
    type=click.Choice(["auto", "classes", "images", "none"]),
    default=None,
    help="Validation: hold out a fraction of the classes (class-disjoint, the metric-learning protocol), of the images, or none [default: auto = classes for embedding, images for multilabel].",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=None,
    help="Share of classes or images held out for validation [default: 0.2].",
)
@click.option(
    "--val-data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A separate validation data set (wins over --val-split).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Random seed: splits, batches, augmentation, initialisation [default: 0].",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=0),
    default=None,
    help="Data-loading processes [default: one per core, at most 8].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last checkpoint (its config.yaml is reused; flags still override).",
)
@click.option(
    "--devices",
    default=None,
    help="Devices per node: 1, 2, ... or auto (with --strategy ddp, one process per device) [default: 1].",
)
@click.option(
    "--strategy",
    default=None,
    help="Lightning strategy: auto, ddp (several GPUs or CPU processes), ... [default: auto].",
)
@click.option("--accelerator", default=None, help="cpu, gpu, or auto [default: auto].")
@click.option(
    "--precision",
    default=None,
    help="32-true, bf16-mixed, 16-mixed, or auto (bf16-mixed on GPUs that support it, else 32-true) [default: auto].",
)
@click.option(
    "--partial",
    type=click.Choice(["ignore", "negative", "selective"]),
    default=None,
    help="Multilabel: what unknown (unannotated) labels mean: ignore them, take them as absent, or selective (class-aware selective loss: ignored for likely-present classes) [default: ignore].",
)
@click.option("--progress/--no-progress", default=None, help="Show progress bars [default: yes].")
def train(config_file: Path | None, overrides: tuple[str, ...], resume: bool, **flags: Any) -> None:
    """Train an embedding model (or, with --task multilabel, a tagger) on labelled images and save it as a
    model bundle.

    \b
      frugalvision train --data photos/ --out runs/x --freeze-backbone          # seconds on a CPU
      frugalvision train --data photos/ --out runs/x --loss triplet --epochs 5  # fine-tune everything
      frugalvision train --out runs/x --resume                                  # continue a killed run
      frugalvision train --task multilabel --data tags.jsonl --out runs/t --freeze-backbone --loss asl

    Embeddings: every epoch reports Recall@K, MAP@R and NMI on the validation split; the best epoch (by MAP@R) is
    kept. The bundle in OUT/model loads with frugalvision.load() and works with `frugalvision embed --model
    OUT/model`. Multilabel: every epoch reports mAP and CF1/OF1; the best epoch (by mAP) is kept, per-class
    thresholds are tuned on the validation images, and `frugalvision predict OUT/model IMAGES` tags images.
    """
    from frugalvision.train import fit, load_config, parse_override
    from frugalvision.train.config import ConfigError, read_yaml

    values = {_FLAG_KEYS[name]: value for name, value in flags.items() if value is not None}
    for name in ("data.path", "data.val_data", "out"):
        if name in values:
            values[name] = str(values[name])
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    out = values.get("out") or (read_yaml(config_file).get("out") if config_file else None)
    base = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out (the run folder to continue)")
        saved = Path(out) / "config.yaml"
        base = read_yaml(saved) if saved.is_file() else None
    config = load_config(config_file, values, base=base)
    if config.data.path is None:
        raise ConfigError("no training data: pass --data (or set data.path in --config)")
    if out is None and base is None:
        raise ConfigError("no run folder: pass --out (or set out in --config)")
    with data_warnings():
        result = fit(config, resume=resume)
    if result.bundle is None:  # a secondary process of a multi-device run
        return
    click.echo(f"\nbest epoch {result.metrics.get('best_epoch', '-')} of {config.trainer.epochs}")
    if any(k.startswith("val/") for k in result.metrics):
        click.echo(f"  {'metric':<12} {'trained':>8} {'backbone':>9}")
        for key, value in result.metrics.items():
            if key.startswith("val/"):
                before = result.baseline.get(key)
                shown = f"{before:>9.4f}" if before is not None else f"{'-':>9}"
                click.echo(f"  {key[4:]:<12} {value:>8.4f} {shown}")
    click.echo(f"model bundle: {result.bundle}  (report: {result.bundle / 'report.md'})")
    if config.task == "multilabel":
        click.echo(f"try: frugalvision predict {result.bundle} IMAGES... --json")
        return
    click.echo(
        f"try: frugalvision embed {config.data.path} --model {result.bundle} --out {Path(config.out) / 'embeddings'}"
    )
