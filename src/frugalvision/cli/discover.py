"""``frugalvision discover``: unsupervised object discovery (MaskCut) over a folder, written as COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from frugalvision.cli._app import cli
from frugalvision.cli._options import (
    ModelSettings,
    device_option,
    json_option,
    model_options,
    on_corrupt_option,
    out_option,
    progress_option,
)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@out_option(
    "COCO JSON file to write: images, boxes, scores and RLE masks of one 'object' category.", kind="file"
)
@model_options(
    model_help="timm model name or offline backbone. ViTs use last-block attention keys (best: vit_small_patch16_224.dino or vit_small_patch8_224.dino, downloaded once from the Hugging Face hub); CNNs their stride-16 map.",
    pretrained_help="Load pretrained weights; --no-pretrained gives random weights (for tests only: they find nothing meaningful).",
)
@click.option(
    "--objects",
    "-n",
    "num_objects",
    default=3,
    type=click.IntRange(min=1),
    help="Most objects to find per image (MaskCut's N).",
)
@click.option(
    "--tau",
    default=0.15,
    type=click.FloatRange(-1.0, 1.0),
    help="Cosine-similarity threshold of the patch graph (CutLER paper: 0.15).",
)
@click.option(
    "--image-size",
    default=None,
    type=click.IntRange(min=16),
    help="Images are squashed to this square size (pixels) before feature extraction; ViTs built for another size get resampled position embeddings [default: 480, as CutLER].",
)
@click.option(
    "--upsample",
    type=click.Choice(["bilinear", "nearest"]),
    default="bilinear",
    help="How patch masks are brought to image size: bilinear then threshold at 0.5 (smooth) or nearest (blocky).",
)
@click.option(
    "--split",
    default=None,
    help="For a PASCAL-VOC folder: the ImageSets/Main list to use (e.g. test) [default: every annotation].",
)
@click.option(
    "--max-images", default=None, type=click.IntRange(min=1), help="Only the first N images (sorted by path)."
)
@click.option(
    "--overlay-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write PNG overlays (masks tinted, boxes drawn) of the first --overlays images here.",
)
@click.option(
    "--overlays",
    default=8,
    type=click.IntRange(min=0),
    help="How many overlays to write with --overlay-dir.",
)
@on_corrupt_option(
    "Unreadable or too-small images: skip them with a warning listing the files, or stop with an error."
)
@device_option("cpu, cuda, cuda:1, or auto (the eigen-solve always runs on the CPU).")
@json_option("Print the evaluation (when DATA has boxes) as JSON instead of a table.")
@progress_option()
def discover(
    data: Path,
    out: Path,
    model: ModelSettings,
    num_objects: int,
    tau: float,
    image_size: int | None,
    upsample: str,
    split: str | None,
    max_images: int | None,
    overlay_dir: Path | None,
    overlays: int,
    on_corrupt: str,
    device: str,
    as_json: bool,
    progress: bool,
) -> None:
    """Find objects in the images of DATA without any labels (MaskCut, CutLER 2023) and write COCO JSON.

    DATA is a folder of images (searched recursively), or a detection data set whose boxes are then used to
    report CorLoc and class-agnostic AP50 / AP beside those of a fixed box centred in each image and covering
    half its area (the bar the features must clear to be finding objects): a YOLO folder (images/ + labels/), a PASCAL-VOC folder
    (JPEGImages/ + Annotations/) or a COCO .json file. No CRF refinement is applied to the masks.
    """
    from frugalvision.data import load_image
    from frugalvision.discover import (
        Discovery,
        create_discovery_backbone,
        discover_images,
        evaluate_discoveries,
        open_discovery_set,
        save_coco_json,
        save_overlay,
        to_coco,
    )
    from frugalvision.embeddings import resolve_device

    dataset = open_discovery_set(data, split=split).head(max_images)
    click.echo(f"data: {len(dataset.paths)} images ({dataset.format}) from {data}", err=True)
    backbone = create_discovery_backbone(
        model.name, pretrained=model.pretrained, weights=model.weights, image_size=image_size or 480
    )
    backbone.to(resolve_device(device))
    gt_by_path = dict(zip(dataset.paths, dataset.boxes, strict=True)) if dataset.boxes is not None else {}

    def draw(i: int, path: Path, found: Discovery) -> None:
        if overlay_dir is not None and i < overlays:
            name = dataset.file_name(path).replace("/", "__")
            save_overlay(
                load_image(path),
                found,
                overlay_dir / f"{Path(name).stem}.png",
                ground_truth=gt_by_path.get(path),
            )

    results, skipped = discover_images(
        dataset.paths,
        backbone,
        on_corrupt=on_corrupt,
        progress=progress,
        callback=draw,
        num_objects=num_objects,
        tau=tau,
        image_size=image_size,
        upsample=upsample,
    )
    for path, reason in skipped:
        click.secho(f"Warning: skipped {path}: {reason}", fg="yellow", err=True)
    settings = {
        "model": model.name,
        "objects": num_objects,
        "tau": tau,
        "image_size": image_size,
        "upsample": upsample,
    }
    coco = to_coco([(dataset.file_name(p), found) for p, found in results], extra={"settings": settings})
    save_coco_json(coco, out)
    n_boxes = sum(len(found) for _, found in results)
    click.echo(f"wrote {n_boxes} objects in {len(results)} images to {out}")
    if overlay_dir is not None:
        click.echo(f"overlays: {overlay_dir}", err=True)
    if dataset.boxes is None:
        return
    metrics = evaluate_discoveries([found for _, found in results], [gt_by_path[p] for p, _ in results])
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    base = metrics["centre_box"]
    click.echo(f"against {metrics['gt_boxes']} ground-truth boxes in {metrics['images']} images:")
    click.echo(f"  {'':<20} {'MaskCut':>8} {'centre box (half the area)':>28}")
    for key, label in (
        ("corloc", "CorLoc (first box)"),
        ("corloc_any", "CorLoc (any box)"),
        ("ap50", "AP50"),
        ("ap", "AP@[.5:.95]"),
    ):
        click.echo(f"  {label:<20} {metrics[key]:>8.4f} {base[key]:>28.4f}")
    if metrics["corloc"] <= base["corloc"]:
        click.secho(
            f"Warning: MaskCut's first box (CorLoc {metrics['corloc']:.4f}) does no better than a fixed centred "
            f"box ({base['corloc']:.4f}): the features of {model.name} do not find the objects of these images.",
            fg="yellow",
            err=True,
        )
