"""``frugalvision distill``: a large teacher teaches a small student (a thin layer over
:func:`frugalvision.distill.distill`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    config_option,
    data_option,
    holdout_options,
    lightning_run_options,
    out_option,
    recipe_option,
    weights_option,
    workers_option,
)

#: The configuration whose field defaults the help text shows (imported only when help is shown).
DISTILL = "frugalvision.distill.config:DistillConfig"

# flag name -> DistillConfig field; a flag left out keeps the default (or, with --resume, the run's config.yaml).
_FLAGS = (
    "data", "out", "teacher", "teacher_weights", "teacher_pretrained", "teacher_input_size", "teacher_cache",
    "student", "student_pretrained", "student_weights", "input_size", "pooling", "drop_path_rate", "temperature",
    "learnable_temperature", "mse_weight", "contrastive_weight", "symmetric", "epochs", "batch_size", "lr",
    "weight_decay", "warmup_epochs", "head_only_epochs", "recipe", "val_split", "val_fraction", "val_data", "eval_every", "num_workers",
    "seed", "accelerator", "devices", "strategy", "precision", "progress",
)  # fmt: skip
F = TypeVar("F", bound=Callable[..., Any])
_PATHS = ("data", "out", "teacher_weights", "teacher_cache", "student_weights", "val_data")


#: ``click.option`` for a flag of this command: default None, help ending in the configuration's default.
option = config_option(DISTILL, None)


def _resolution_option(name: str, help: str) -> Callable[[F], F]:
    """The input side in pixels of the teacher or the student; ``None``: the model's own (its pretrained config)."""
    return click.option(name, type=click.IntRange(min=8), default=None, help=help)


@cli.command()
@data_option(
    "Images to distil on: a folder of photos (labels not needed), a class-per-folder tree or a manifest."
)
@option(
    "--teacher",
    "-t",
    help="Teacher: a timm/offline/open_clip:ARCH/TAG model name, a model bundle folder, or an embedding store of "
    "the teacher's embeddings of these images (from `frugalvision embed`).",
)
@option(
    "--student",
    "-s",
    help="Student: a timm model name; its head maps to the teacher's dimension.",
)
@out_option(
    "Run folder: config.yaml, teacher_cache/, checkpoints/, logs/ and the student bundle model/.",
    required=False,
)
@weights_option("Local .safetensors/.pth weights for a teacher model name.", name="--teacher-weights")
@option(
    "--teacher-pretrained/--no-teacher-pretrained",
    help="Load the teacher model's pretrained weights.",
)
@_resolution_option("--teacher-input-size", "Teacher resolution in pixels [default: the teacher's own].")
@click.option(
    "--teacher-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the teacher's cached embeddings, shareable between runs [default: OUT/teacher_cache].",
)
@option(
    "--student-pretrained/--no-student-pretrained",
    help="Start the student from pretrained weights (--no-student-pretrained: from scratch, offline).",
)
@weights_option("Local .safetensors/.pth weights to start the student from.", name="--student-weights")
@_resolution_option(
    "--input-size",
    "Student resolution in pixels, e.g. 128 or 160 for a fast CPU model [default: the student's own].",
)
@option(
    "--pooling",
    type=click.Choice(["auto", "native", "avg", "gem", "max"]),
    help="Student pooling; auto = the model's pre-logits, or average pooling where they do not fit.",
)
@option(
    "--drop-path-rate",
    type=click.FloatRange(min=0, max=1, max_open=True),
    help="Stochastic depth of the student (timm's drop_path_rate).",
)
@option(
    "--temperature",
    type=click.FloatRange(min=0.01),
    help="InfoNCE temperature tau.",
)
@option(
    "--learnable-temperature/--fixed-temperature",
    help="Learn the temperature as CLIP learns its logit scale.",
)
@option(
    "--mse-weight",
    type=click.FloatRange(min=0),
    help="Weight of the squared error between normalised embeddings.",
)
@option(
    "--contrastive-weight",
    type=click.FloatRange(min=0),
    help="Weight of the InfoNCE term.",
)
@option(
    "--symmetric/--one-sided",
    help="Symmetric InfoNCE (student->teacher and teacher->student) or student->teacher only.",
)
@option(
    "--batch-size",
    "-b",
    type=click.IntRange(min=2),
    help="Images per batch and device; the other images of a batch are InfoNCE's negatives.",
)
@option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="AdamW learning rate.",
)
@option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    help="AdamW weight decay.",
)
@option(
    "--warmup-epochs",
    type=click.FloatRange(min=0),
    help="Linear warm-up before the cosine decay.",
)
@option(
    "--head-only-epochs",
    type=click.IntRange(min=0),
    help="Train only the student's head for this many epochs first (linear probing, then fine-tuning): for "
    "pretrained students.",
)
@recipe_option(
    option,
    "Augmentation of the student's images (frugalvision.train.recipes); the teacher always sees clean images.",
)
@holdout_options(
    option,
    ["images", "classes", "none"],
    "Held-out images for student-vs-teacher metrics: a share of each class's images, whole classes, or none.",
)
@option(
    "--eval-every",
    type=click.IntRange(min=1),
    help="Epochs between held-out evaluations; the last epoch is always evaluated.",
)
@workers_option(dest="num_workers")
@lightning_run_options(option)
def distill(resume: bool, **flags: Any) -> None:
    """Distil a large teacher into a small student that runs cheaply on a CPU.

    \b
      frugalvision distill --data photos/ --out runs/d                   # lite0 teaches mobilenetv3_small_100
      frugalvision distill --data photos/ --teacher store/ --out runs/d  # teacher embeddings from `embed`
      frugalvision distill --out runs/d --resume                         # continue a killed run

    The teacher embeds every clean image once (cached); the student learns to map augmented views of each image
    to that embedding (InfoNCE + squared error, Li et al., ICCV 2023). Prints student vs teacher on held-out
    images -- kNN Recall@1 and MAP@R when the images have labels -- and writes a model bundle to OUT/model that
    works with `frugalvision embed/search/evaluate --model` and `frugalvision export`.
    """
    from frugalvision.distill import DistillConfig
    from frugalvision.distill import distill as run
    from frugalvision.train.config import ConfigError

    values = {name: flags[name] for name in _FLAGS if flags.get(name) is not None}
    for name in _PATHS:
        if name in values:
            values[name] = str(values[name])
    if "out" not in values:
        raise ConfigError("no run folder: pass --out")
    start = DistillConfig()
    if resume:
        saved = Path(values["out"]) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {saved} not found (start the run without --resume)")
        start = DistillConfig.from_yaml(saved)
    config = start.replace(**values)
    if config.data is None:
        raise ConfigError("no training images: pass --data")
    with data_warnings():
        result = run(config, resume=resume)
    if result.bundle is None:  # a secondary process of a multi-device run
        return
    student, teacher = result.metrics, result.teacher_metrics
    click.echo(f"\nheld-out images, final epoch ({config.epochs}):")
    click.echo(f"  {'metric':<14} {'teacher':>9} {'student':>9}")
    for key in ("val/recall@1", "val/map@r", "val/cosine", "val/nn_agreement"):
        if key in student:
            ref = teacher.get(key, 1.0 if key in ("val/cosine", "val/nn_agreement") else None)
            shown = f"{ref:>9.4f}" if ref is not None else f"{'-':>9}"
            click.echo(f"  {key[4:]:<14} {shown} {student[key]:>9.4f}")
    if "val/recall@1" not in student and student:
        click.echo("  (no labels on the held-out images: kNN Recall@1 needs them)")
    teacher_params = result.teacher.get("params")
    params = f"{teacher_params / 1e6:>8.2f}M" if teacher_params else f"{'-':>9}"
    click.echo(f"  {'parameters':<14} {params} {result.student_params / 1e6:>8.2f}M")
    click.echo(f"model bundle: {result.bundle}  (report: {result.bundle / 'report.md'})")
    click.echo(f"try: frugalvision export {result.bundle} --out {Path(config.out) / 'deploy'}")
