"""``frugalvision train``: train an embedding model from a folder of labelled images (a thin layer over
:func:`frugalvision.train.fit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    LazyChoice,
    config_option,
    data_option,
    holdout_options,
    input_option,
    lightning_run_options,
    out_option,
    recipe_option,
    workers_option,
)

#: The configuration whose field defaults the help text shows (imported only when help is shown).
TRAIN = "frugalvision.train.config:TrainConfig"

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
    "class_agnostic": "detection.class_agnostic",
}


def _task_names() -> list[str]:
    """The training tasks registered with :func:`frugalvision.train.register_task` (imports torch)."""
    from frugalvision.train import list_tasks

    return list(list_tasks())


#: ``click.option`` for a flag of this command: default None, help ending in the configuration's default.
option = config_option(TRAIN, _FLAG_KEYS)


@cli.command()
@option(
    "--task",
    type=LazyChoice(_task_names, metavar="[embedding|multilabel|...]"),
    help="What to train: embedding = an image-retrieval embedding (metric learning); classification = a calibrated classifier (one label per image); multilabel = a tagger that gives each image any number of labels; or any task registered with frugalvision.train.register_task.",
)
@data_option(
    "Training images: a class-per-folder tree or a CSV/JSONL manifest (path,label; multilabel: "
    "path,labels[,unknown])."
)
@out_option(
    "Run folder: config.yaml, checkpoints/, logs/, tensorboard/ and the bundle model/.", required=False
)
@input_option(
    "--config",
    "config_file",
    kind="file",
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
@option(
    "--model",
    "-m",
    "model",
    help="timm backbone name or offline backbone.",
)
@option(
    "--pretrained/--no-pretrained",
    help="Start from pretrained weights; --no-pretrained for random weights.",
)
@option(
    "--freeze-backbone/--fine-tune",
    "freeze_backbone",
    help="--freeze-backbone: compute pooled features once, cache them and train only the head (seconds on a CPU); --fine-tune: train the whole network.",
)
@option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=2),
    help="Images per batch and device, a multiple of --m-per-class.",
)
@option(
    "--m-per-class",
    type=click.IntRange(min=2),
    help="Embedding task: images of each class in a batch.",
)
@option(
    "--lr",
    type=float,
    help="Backbone learning rate; the head gets 10x, a loss's proxies their own multiple.",
)
@recipe_option(option, "Augmentation/regularisation preset after AugReg (see frugalvision.train.recipes).")
@holdout_options(
    option,
    ["auto", "classes", "images", "none"],
    "Validation: hold out a fraction of the classes (class-disjoint, the metric-learning protocol), of the images, "
    "or none.",
    " = classes for embedding, images for multilabel and classification",
)
@workers_option()
@option(
    "--partial",
    type=click.Choice(["ignore", "negative", "selective"]),
    help="Multilabel: what unknown (unannotated) labels mean: ignore them, take them as absent, or selective (class-aware selective loss: ignored for likely-present classes).",
)
@click.option(
    "--class-agnostic",
    is_flag=True,
    default=None,
    help="Detection: train one class, 'object', from boxes of any class (e.g. the pseudo-boxes of `frugalvision "
    "discover`, CutLER's second stage); the same as --set detection.class_agnostic=true.",
)
@lightning_run_options(option)
def train(config_file: Path | None, overrides: tuple[str, ...], resume: bool, **flags: Any) -> None:
    """Train an embedding model (or, with --task multilabel, a tagger) on labelled images and save it as a
    model bundle.

    \b
      frugalvision train --data photos/ --out runs/x --freeze-backbone          # seconds on a CPU
      frugalvision train --data photos/ --out runs/x --loss triplet --epochs 5  # fine-tune everything
      frugalvision train --out runs/x --resume                                  # continue a killed run
      frugalvision train --task multilabel --data tags.jsonl --out runs/t --freeze-backbone --loss asl
      frugalvision train --task classification --data photos/ --out runs/c --epochs 3

    Embeddings: every epoch reports Recall@K, MAP@R and NMI on the validation split; the best epoch (by MAP@R) is
    kept. The bundle in OUT/model loads with frugalvision.load() and works with `frugalvision embed --model
    OUT/model`. Multilabel: every epoch reports mAP and CF1/OF1; the best epoch (by mAP) is kept, per-class
    thresholds are tuned on the validation images, and `frugalvision predict OUT/model IMAGES` tags images.
    Classification: every epoch reports top-1/top-5 accuracy, balanced accuracy and macro-F1; the best epoch (by
    top-1) is kept, a temperature is fitted on the validation images (calibrated probabilities), and
    `frugalvision predict OUT/model IMAGES` prints the top classes. LP-FT: --set model.head_epochs=N; Mixup /
    CutMix: --set augment.mixup=0.2 / augment.cutmix=1.0; class-balanced batches: --set data.sampler=class_aware.
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
    from_file = read_yaml(config_file) if config_file else None  # read once: its out, then the whole config
    out = values.get("out") or (from_file or {}).get("out")
    base = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out (the run folder to continue)")
        saved = Path(out) / "config.yaml"
        base = read_yaml(saved) if saved.is_file() else None
    config = load_config(config_file, values, base=base, file_values=from_file)
    if flags["class_agnostic"] and config.task != "detection":
        raise ConfigError(f"--class-agnostic goes with --task detection (the task is {config.task!r})")
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
        width = max(12, *(len(k) - 4 for k in result.metrics if k.startswith("val/")))
        click.echo(f"  {'metric':<{width}} {'trained':>8} {'backbone':>9}")
        for key, value in result.metrics.items():
            if key.startswith("val/"):
                before = result.baseline.get(key)
                shown = f"{before:>9.4f}" if before is not None else f"{'-':>9}"
                click.echo(f"  {key[4:]:<{width}} {value:>8.4f} {shown}")
    click.echo(f"model bundle: {result.bundle}  (report: {result.bundle / 'report.md'})")
    if config.task in ("multilabel", "classification"):
        if result.temperature is not None:
            click.echo(f"temperature (fitted on the validation images): {result.temperature:.4f}")
        click.echo(f"try: frugalvision predict {result.bundle} IMAGES... --json")
        return
    if config.task == "detection":
        click.echo(f"try: frugalvision predict {result.bundle} IMAGES... --draw boxes/")
        return
    click.echo(
        f"try: frugalvision embed {config.data.path} --model {result.bundle} --out {Path(config.out) / 'embeddings'}"
    )
