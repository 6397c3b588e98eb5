"""``frugalvision predict``: classify images with a classification model, or tag them with a multi-label model
(training bundle or ONNX deploy bundle; dispatched on the bundle's task); and the multi-label side of
``frugalvision evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from frugalvision.cli._app import cli
from frugalvision.cli._evaluate import echo_json, evaluate_on
from frugalvision.cli._options import batch_size_option, json_option
from frugalvision.errors import FrugalVisionError


@cli.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@json_option("Print one JSON object per image (path, labels, scores).")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Print the K most probable classes of each image (classification: default 5; multilabel: instead of those over their thresholds).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Multilabel: one decision threshold for every class instead of the per-class thresholds saved in the bundle.",
)
@batch_size_option(32, "Images per batch.")
@click.option(
    "--draw",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Detection models: write each image with its boxes drawn as a PNG into this folder.",
)
def predict(
    model: Path,
    images: tuple[Path, ...],
    as_json: bool,
    top_k: int | None,
    threshold: float | None,
    batch_size: int,
    draw: Path | None,
) -> None:
    """Classify or tag IMAGES (files or folders) with MODEL and print each image's labels with probabilities.

    MODEL is a bundle from `frugalvision train --task classification` or `--task multilabel` (runs on torch) or a
    deploy bundle from `frugalvision export` (runs on ONNX Runtime, no torch). Classification: the top-k classes
    with their calibrated probabilities (softmax of the logits divided by the temperature fitted on validation
    images). Multilabel: a label is printed when its probability reaches the class's threshold (tuned on
    validation images when the model was trained).

    With a detection MODEL (`frugalvision train --task detection`, or its deploy bundle) print each image's boxes
    in its own pixels, with class and score over --threshold (default 0.25); --draw DIR writes them as PNGs.

    \b
      frugalvision predict runs/cls/model photo.jpg --top-k 3
      frugalvision predict runs/tags/model photos/ --json
      frugalvision predict runs/tags/deploy a.jpg b.jpg --top-k 3
    """
    from frugalvision.runtime.config import is_deploy_bundle
    from frugalvision.tagging import expand_images

    files = expand_images(images)
    if not files:
        raise click.UsageError("no image files found in " + ", ".join(map(str, images)))
    from frugalvision.cli.detection import is_detection_bundle, is_detection_deploy_bundle

    if is_detection_bundle(model) or is_detection_deploy_bundle(model):
        from frugalvision.cli.detection import predict_detection

        predict_detection(
            model, files, as_json=as_json, draw=draw, threshold=threshold, batch_size=batch_size
        )
        return
    if draw is not None:
        raise click.UsageError("--draw goes with a detection model")
    task = _task_of(model)
    if task == "classification" and threshold is not None:
        raise click.UsageError(
            "--threshold is for multilabel models; a classifier prints its --top-k classes"
        )
    if task == "embedding":
        raise FrugalVisionError(
            f"{model} is an embedding model; `predict` classifies or tags with classification or multilabel "
            "models (embedding models are used with `frugalvision search`)"
        )
    if task == "classification" and is_deploy_bundle(model):
        from frugalvision.runtime import Predictor

        predictor = Predictor(model, batch_size=batch_size)
        results = predictor.predict([str(f) for f in files], top_k=top_k or 5)
    elif task == "classification":
        from frugalvision.classify import Classifier

        results = Classifier(model).predict(files, top_k=top_k or 5, batch_size=batch_size)
    elif is_deploy_bundle(model):
        from frugalvision.runtime import Predictor

        predictor = Predictor(model, batch_size=batch_size)
        probs = predictor.probabilities(predictor.run(predictor.preprocess([str(f) for f in files])))
        from frugalvision.tagging import decide

        saved = predictor.config.thresholds or [0.5] * len(predictor.classes)
        results = decide(probs, list(predictor.classes), saved if threshold is None else threshold, top_k)
    else:
        from frugalvision.tagging import Tagger

        tagger = Tagger(model, thresholds=threshold)
        results = tagger.predict(files, top_k=top_k, batch_size=batch_size)
    for path, p in zip(files, results, strict=True):
        if as_json:
            click.echo(json.dumps({"path": str(path), **p.to_dict()}))
        else:
            shown = ", ".join(f"{label} {score:.2f}" for label, score in zip(p.labels, p.scores, strict=True))
            click.echo(f"{path}: {shown or '(no label over its threshold)'}")


def _task_of(model: Path) -> str:
    """The task recorded in a deploy bundle's ``deploy.json`` or a model bundle's ``config.json``."""
    from frugalvision.runtime.config import is_deploy_bundle, read_deploy_config

    if is_deploy_bundle(model):
        return read_deploy_config(model).task
    from frugalvision.bundle import read_bundle_config

    return str(read_bundle_config(model).get("task", "embedding"))


def evaluate_tagging(
    bundle: Path, data: Path, *, as_json: bool, workers: int | None, progress: bool, top_k: int
) -> None:
    """``frugalvision evaluate BUNDLE --data DATA`` for a multilabel bundle: mAP, CF1/OF1 and a per-class table."""
    from frugalvision.tagging import Tagger, evaluate_tagger

    tagger = Tagger(bundle)
    result = evaluate_on(evaluate_tagger, tagger, data, workers=workers, progress=progress, top_k=top_k)
    if as_json:
        echo_json(bundle, data, result)
        return
    m = result["metrics"]
    click.echo(f"{result['images']} images, {len(tagger.classes)} classes")
    click.echo(f"  {'mAP':<10} {m['map']:.4f}")
    click.echo(f"  {'':<10} {'thresholds':>10} {'at 0.5':>8} {'top-' + str(top_k):>8}")
    for name in ("cp", "cr", "cf1", "op", "or", "of1"):
        top = m.get(f"{name}@top{top_k}", float("nan"))
        click.echo(f"  {name.upper():<10} {m[name]:>10.4f} {m[name + '@0.5']:>8.4f} {top:>8.4f}")
    click.echo(f"\n  {'class':<24} {'AP':>6} {'P':>6} {'R':>6} {'F1':>6} {'thr':>5} {'pos':>5}")
    for row in result["per_class"]:
        ap = row.get("ap")
        click.echo(
            f"  {str(row.get('class'))[:24]:<24} {ap if ap is not None else float('nan'):>6.3f} "
            f"{row.get('precision', 0):>6.3f} {row.get('recall', 0):>6.3f} {row.get('f1', 0):>6.3f} "
            f"{row.get('threshold', 0):>5.2f} {row.get('positives', 0):>5d}"
        )
