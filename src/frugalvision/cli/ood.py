"""``frugalvision ood fit | score | evaluate``: out-of-distribution detection with a pretrained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    ModelSettings,
    RunSettings,
    cache_option,
    json_option,
    model_options,
    out_option,
    run_options,
)


@cli.group()
def ood() -> None:
    """Out-of-distribution detection: fit on in-distribution images, score new ones (higher = more ID).

    \b
      frugalvision ood fit train_images/ --out detector/
      frugalvision ood score detector/ new_images/ --out scores.csv
      frugalvision ood evaluate detector/ id_test/ ood_test/
    """


class _AutoOr(click.ParamType):
    """``"auto"`` or a value of ``inner`` (e.g. ``click.IntRange(min=1)``)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"auto|{inner.name}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return self.inner.convert(value, param, ctx)


def _default_num_classes(name: str) -> int:
    """The size of the pretrained classifier timm registers for ``name`` (0 for none, for CLIP towers, open_clip)."""
    import timm

    from frugalvision.foundation import OPEN_CLIP_PREFIX
    from frugalvision.models import offline_architecture

    if name.startswith(OPEN_CLIP_PREFIX):
        return 0
    arch = offline_architecture(name) or name
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or "clip" in arch.split(".")[0]:
        return 0
    return int(cfg.num_classes or 0)


def _build(model: ModelSettings, num_classes: int | None) -> Any:
    from frugalvision.foundation import OPEN_CLIP_PREFIX
    from frugalvision.models import create_backbone

    if model.name.startswith(OPEN_CLIP_PREFIX):
        return model.feature_model()
    n = _default_num_classes(model.name) if num_classes is None else num_classes
    return create_backbone(model.name, pretrained=model.pretrained, weights=model.weights, num_classes=n)


def _inputs(backbone: Any, data: Path, cache: Path | None, run: RunSettings) -> Any:
    from frugalvision.foundation import open_images
    from frugalvision.ood import extract_ood_inputs

    dataset = open_images(data)
    click.echo(f"data: {dataset!r}", err=True)
    with data_warnings():
        return extract_ood_inputs(backbone, dataset, cache=cache, **run.kwargs())


def _load(detector_dir: Path) -> tuple[Any, Any]:
    from frugalvision.errors import StoreError
    from frugalvision.foundation import feature_model_from_spec
    from frugalvision.ood import OODDetector

    det = OODDetector.load(detector_dir)
    if "backbone" not in det.info:
        raise StoreError(f"detector {detector_dir} does not record its model; score it from Python instead")
    return det, feature_model_from_spec(det.info["backbone"])


@ood.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@out_option("Folder of the detector to write.")
@model_options()
@click.option(
    "--num-classes",
    type=click.IntRange(min=0),
    default=None,
    help="Classifier size to keep for logit scores [default: the pretrained classifier's, 0 for CLIP/DINOv2 towers].",
)
@click.option(
    "--scores",
    "score_names",
    default=None,
    help="Comma-separated scores [default: all the model allows]: msp,max_logit,energy,feature_norm,nan,block_norm,knn,mahalanobis.",
)
@click.option(
    "-k",
    "k",
    default="auto",
    type=_AutoOr(click.IntRange(min=1)),
    help="Neighbour rank of the kNN score, or 'auto': chosen from the number of images and images per class of DATA (frugalvision.ood.auto_knn_k).",
)
@click.option(
    "--temperature",
    default=1.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Temperature of the energy and MSP scores.",
)
@click.option(
    "--shrinkage",
    default="auto",
    type=_AutoOr(click.FloatRange(0, 1)),
    help="Mahalanobis covariance shrinkage towards a scaled identity: 'auto' = Ledoit-Wolf estimate (large with few images for the feature dimension), 0 = Lee et al.'s plain covariance.",
)
@click.option(
    "--select-block/--penultimate-block",
    default=False,
    help="Choose the block_norm block by NormRatio on jigsaw puzzles of DATA (Yu et al. 2023) instead of the penultimate block.",
)
@click.option(
    "--jigsaw-images",
    default=256,
    type=click.IntRange(min=1),
    help="Images of DATA used for NormRatio.",
)
@cache_option("Cache the model outputs for DATA in this folder (resumable).")
@run_options
def fit(
    data: Path,
    out: Path,
    model: ModelSettings,
    num_classes: int | None,
    score_names: str | None,
    k: int | str,
    temperature: float,
    shrinkage: float | str,
    select_block: bool,
    jigsaw_images: int,
    cache: Path | None,
    run: RunSettings,
) -> None:
    """Fit an OOD detector on the in-distribution images of DATA (labels, if any, serve Mahalanobis)."""
    from frugalvision.foundation import open_images
    from frugalvision.ood import OODDetector, jigsaw_block_norms

    backbone = _build(model, num_classes)
    inputs = _inputs(backbone, data, cache, run)
    names = [s.strip() for s in score_names.split(",")] if score_names else None
    det = OODDetector(
        scores=names,
        k=k,  # type: ignore[arg-type]  # an int or "auto" (checked by the option type)
        temperature=temperature,
        shrinkage=shrinkage,  # type: ignore[arg-type]
        info={
            "backbone": backbone.spec.to_dict(),
            "data_config": {
                k2: list(v) if isinstance(v, tuple) else v for k2, v in backbone.data_config.items()
            },
            "data": str(data),
        },
    )
    pseudo = None
    if select_block and inputs.block_norms is not None:
        dataset = open_images(data)
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(dataset), size=min(jigsaw_images, len(dataset)), replace=False))
        pseudo = jigsaw_block_norms(
            backbone,
            dataset.subset(rows),
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            device=run.device,
        )
    labels = inputs.labels if (inputs.labels >= 0).sum() >= 2 else None
    det.fit(
        features=inputs.features,
        logits=inputs.logits,
        labels=labels,
        block_norms=inputs.block_norms,
        pseudo_ood_block_norms=pseudo,
    )
    det.save(out)
    extra = f", block {det.state['block']} of {det.state['blocks']}" if "block" in det.state else ""
    extra += f", kNN k={det.state['k']}" if "k" in det.state else ""
    extra += f", Mahalanobis shrinkage {det.state['shrinkage']:.3f}" if "shrinkage" in det.state else ""
    click.echo(f"fitted on {len(inputs)} images: {', '.join(det.fitted_scores)}{extra}; saved to {out}")


@ood.command()
@click.argument(
    "detector_dir", metavar="DETECTOR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@out_option("Write per-image scores and OOD flags to this CSV.", kind="file", required=False)
@json_option("Print per-image scores as JSON instead of a summary.")
@cache_option("Cache the model outputs for DATA in this folder.")
@run_options
def score(
    detector_dir: Path,
    data: Path,
    out: Path | None,
    as_json: bool,
    cache: Path | None,
    run: RunSettings,
) -> None:
    """Score the images of DATA; an image is flagged OOD by a score when it falls below the threshold that
    keeps 95 % of the fit images."""
    det, backbone = _load(detector_dir)
    inputs = _inputs(backbone, data, cache, run)
    scores = det.score(features=inputs.features, logits=inputs.logits, block_norms=inputs.block_norms)
    names = list(scores)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", *names, *[f"ood_{n}" for n in names]])
            flags = {n: det.is_ood(scores, n) for n in names}
            for i, p in enumerate(inputs.paths):
                w.writerow([p, *[f"{scores[n][i]:.6g}" for n in names], *[int(flags[n][i]) for n in names]])
        click.echo(f"scores: {out}", err=True)
    if as_json:
        rows = [
            {
                "path": p,
                **{n: float(scores[n][i]) for n in names},
                "ood": {n: bool(scores[n][i] < det.thresholds[n]) for n in names},
            }
            for i, p in enumerate(inputs.paths)
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{len(inputs)} images; flagged OOD (score below the 95%-TPR threshold of the fit data):")
    for n in names:
        flagged = int(det.is_ood(scores, n).sum())
        click.echo(
            f"  {n:<14} {flagged:>6}  ({flagged / max(len(inputs), 1):.1%})   threshold {det.thresholds[n]:.4g}"
        )


@ood.command()
@click.argument(
    "detector_dir", metavar="DETECTOR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("id_data", metavar="ID_DATA", type=click.Path(exists=True, path_type=Path))
@click.argument("ood_data", metavar="OOD_DATA", type=click.Path(exists=True, path_type=Path))
@json_option("Print JSON instead of a table.")
@run_options
def evaluate(
    detector_dir: Path,
    id_data: Path,
    ood_data: Path,
    as_json: bool,
    run: RunSettings,
) -> None:
    """AUROC, AUPR-In, AUPR-Out and FPR@95TPR of every score, with ID_DATA as in- and OOD_DATA as out-of-distribution.

    ID_DATA should be held-out images (not the ones the detector was fitted on: kNN would see itself).
    """
    from frugalvision.ood import ood_metrics

    det, backbone = _load(detector_dir)
    a = _inputs(backbone, id_data, None, run)
    b = _inputs(backbone, ood_data, None, run)
    sa = det.score(features=a.features, logits=a.logits, block_norms=a.block_norms)
    sb = det.score(features=b.features, logits=b.logits, block_norms=b.block_norms)
    result = {n: ood_metrics(sa[n], sb[n]) for n in sa}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": str(id_data),
                    "ood": str(ood_data),
                    "count_id": len(a),
                    "count_ood": len(b),
                    "scores": result,
                },
                indent=2,
            )
        )
        return
    click.echo(f"ID {len(a)} images, OOD {len(b)} images")
    click.echo(f"  {'score':<14} {'AUROC':>7} {'AUPR-In':>8} {'AUPR-Out':>9} {'FPR95':>7}")
    for n, m in result.items():
        click.echo(
            f"  {n:<14} {m['auroc']:>7.4f} {m['aupr_in']:>8.4f} {m['aupr_out']:>9.4f} {m['fpr95']:>7.4f}"
        )
