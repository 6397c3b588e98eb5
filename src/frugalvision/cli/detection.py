"""The detection side of ``frugalvision export``, ``predict`` and ``evaluate`` (issue 14): what those commands do
when their model is a detection bundle (``frugalvision train --task detection``) or its deploy bundle.

* export: :func:`~frugalvision.bundle.load_detector`, ``Detector.fuse()`` (RepConv and conv-BN folded, auxiliary
  head dropped), then :func:`~frugalvision.deploy.export_detector` -- ONNX with the class-aware NMS inside the graph,
  checked against PyTorch.
* predict: boxes in each image's ORIGINAL pixels. On torch (a training bundle) the image is letterboxed to the
  model's side ``S`` exactly as in validation (:func:`~frugalvision.data.detection.letterbox`, normalised with the
  backbone's mean / std), the detector's eval outputs go through
  :func:`~frugalvision.models.detection.postprocess` and back by ``(box - [pad_x, pad_y, pad_x, pad_y]) / scale``
  (clipped); on ONNX Runtime (a deploy bundle) :meth:`~frugalvision.runtime.Predictor.detect` does the same.
* evaluate: COCO metrics (:func:`~frugalvision.metrics.coco_evaluate`) of the torch model on labelled data in
  original pixels, with a report folder: ``report.md`` (summary and per-class AP), ``pr_curves.png`` (IoU 0.5),
  ``confusion_matrix.png`` (score >= 0.25, IoU >= 0.5) and ``metrics.json``.

A helper module of the CLI (not a command module): :mod:`~frugalvision.cli.deploy`, ``tagging`` and ``retrieval``
call it when the model is a detector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from frugalvision.cli._app import data_warnings
from frugalvision.errors import DataError, FrugalVisionError

__all__ = [
    "PREDICT_SCORE_THRESHOLD",
    "evaluate_detection",
    "export_detection",
    "is_detection_bundle",
    "is_detection_deploy_bundle",
    "predict_detection",
    "torch_detect",
]

#: Score threshold of ``predict`` / the exported graph (the contract: predict and serve use 0.25).
PREDICT_SCORE_THRESHOLD = 0.25
#: NMS IoU threshold and most detections per image (the contract's ``postprocess`` defaults).
IOU_THRESHOLD = 0.65
MAX_DETECTIONS = 300


def is_detection_bundle(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a model bundle whose ``config.json`` says ``task: detection``."""
    from frugalvision.bundle import is_bundle, read_bundle_config

    return is_bundle(path) and read_bundle_config(path).get("task") == "detection"


def is_detection_deploy_bundle(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a deploy bundle (``deploy.json``) of a detector."""
    from frugalvision.runtime.config import is_deploy_bundle, read_deploy_config

    return is_deploy_bundle(path) and read_deploy_config(path).task == "detection"


# --------------------------------------------------------------------------------------------------- export
def export_detection(
    source: Path,
    out: Path,
    *,
    exporter: str = "auto",
    opset: int = 18,
    score_threshold: float = PREDICT_SCORE_THRESHOLD,
) -> Any:
    """Export the detection bundle ``source`` to the deploy bundle ``out`` (NMS inside the graph).

    Returns:
        The :class:`~frugalvision.deploy.DetectionExportResult` of
        :func:`~frugalvision.deploy.export_detector_bundle`.
    """
    from frugalvision.deploy import export_detector_bundle

    return export_detector_bundle(
        source, out, score_threshold=score_threshold, iou_threshold=IOU_THRESHOLD,
        max_detections=MAX_DETECTIONS, exporter=exporter, opset=opset,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- predict
def _letterboxed(
    path: Path, size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Any, dict[str, Any]]:
    """``(image (3, S, S) float normalised, meta {scale, pad, orig_size})`` of one file, as validation builds it."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from frugalvision.data import load_image
    from frugalvision.data.detection import letterbox

    image = F.pil_to_tensor(load_image(path))
    _, h, w = image.shape
    canvas, scale, pad = letterbox(image, size)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return (canvas.float() - m) / s, {"scale": float(scale), "pad": pad, "orig_size": (int(h), int(w))}


def torch_detect(
    model: Any,
    files: Sequence[Path],
    *,
    score_threshold: float = PREDICT_SCORE_THRESHOLD,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Detections of a :class:`~frugalvision.models.detection.Detector` (eval mode) on image ``files``: one dict
    per file, ``boxes (n, 4)`` float32 xyxy in the file's original pixels, ``scores (n,)``, ``labels (n,)`` int64,
    best score first (class-aware NMS at IoU 0.65, at most 300)."""
    import numpy as np
    import torch

    from frugalvision.data.detection import boxes_to_original
    from frugalvision.models.detection import postprocess

    mean, std = model.data_config["mean"], model.data_config["std"]
    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            items = [_letterboxed(f, model.image_size, mean, std) for f in files[start : start + batch_size]]
            boxes, scores = model(torch.stack([x for x, _ in items]))
            dets = postprocess(
                boxes.float(),
                scores.float(),
                score_threshold=score_threshold,
                iou_threshold=IOU_THRESHOLD,
                max_detections=MAX_DETECTIONS,
            )
            for det, (_, meta) in zip(dets, items, strict=True):
                original = boxes_to_original(
                    det["boxes"].float(), meta["scale"], meta["pad"], meta["orig_size"]
                ).numpy()
                # as the runtime: a box empty once clipped to the image lay in the letterbox border only
                inside = (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])
                out.append(
                    {
                        "boxes": original[inside].astype(np.float32),
                        "scores": det["scores"].float().numpy()[inside],
                        "labels": det["labels"].numpy().astype(np.int64)[inside],
                    }
                )
    return out


def predict_detection(
    model: Path,
    files: Sequence[Path],
    *,
    as_json: bool,
    draw: Path | None,
    threshold: float | None,
    batch_size: int,
) -> None:
    """``frugalvision predict`` with a detector: print each image's boxes (original pixels) and draw them."""
    import numpy as np

    threshold = PREDICT_SCORE_THRESHOLD if threshold is None else threshold
    if is_detection_deploy_bundle(model):
        from frugalvision.runtime import Predictor

        predictor = Predictor(model, batch_size=batch_size)
        classes = list(predictor.classes)
        dets = []
        for start in range(0, len(files), batch_size):
            chunk = [str(f) for f in files[start : start + batch_size]]
            for d in predictor.detect(chunk, score_threshold=threshold):
                dets.append({"boxes": d.boxes, "scores": d.scores, "labels": d.labels})
    else:
        from frugalvision.bundle import load_detector

        detector = load_detector(model)
        classes = list(detector.bundle_config["classes"])  # type: ignore[index]
        dets = torch_detect(detector, files, score_threshold=threshold, batch_size=batch_size)
    if draw is not None:
        from frugalvision.plots import draw_detections

        draw.mkdir(parents=True, exist_ok=True)
    for i, (path, det) in enumerate(zip(files, dets, strict=True)):
        names = [classes[int(c)] for c in det["labels"]]
        if as_json:
            record = {
                "path": str(path),
                "boxes": det["boxes"].astype(np.float64).tolist(),
                "scores": [float(s) for s in det["scores"]],
                "labels": [int(c) for c in det["labels"]],
                "names": names,
            }
            click.echo(json.dumps(record))
        else:
            shown = "; ".join(
                f"{n} {float(s):.2f} [{', '.join(f'{v:.0f}' for v in b)}]"
                for n, s, b in zip(names, det["scores"], det["boxes"], strict=True)
            )
            click.echo(f"{path}: {shown or '(no object over the score threshold)'}")
        if draw is not None:
            draw_detections(path, det["boxes"], det["labels"], classes, scores=det["scores"],
                            out=draw / f"{i:05d}_{Path(path).stem}.png")  # fmt: skip
    if draw is not None:
        click.echo(f"drawn: {draw}", err=True)


# --------------------------------------------------------------------------------------------------- evaluate
def _open_detection_data(data: Path, split: str | None) -> Any:
    """COCO JSON / YOLO folder (``open_dataset``), or a PASCAL-VOC folder (``ImageSets/Main/<split>.txt`` when
    ``split`` names one, every image otherwise)."""
    from frugalvision.data import open_dataset

    if data.is_dir() and (data / "Annotations").is_dir() and (data / "JPEGImages").is_dir():
        from frugalvision.discover import read_voc

        if split is not None and not (data / "ImageSets" / "Main" / f"{split}.txt").is_file():
            raise DataError(f"{data}: no split list ImageSets/Main/{split}.txt")
        dataset = read_voc(data, split)
    else:
        if split is not None:
            raise DataError(
                f"{data}: --split names a list of a PASCAL-VOC folder (ImageSets/Main/<split>.txt)"
            )
        dataset = open_dataset(data)
    if not dataset.has_boxes:
        raise DataError(f"{data} has no boxes: a detector is evaluated on COCO JSON, YOLO or PASCAL-VOC data")
    return dataset


def evaluate_detection(
    bundle: Path,
    data: Path,
    *,
    as_json: bool,
    report: Path | None,
    split: str | None = None,
    backend: str = "pycocotools",
    batch_size: int = 16,
) -> dict[str, Any]:
    """``frugalvision evaluate BUNDLE --data DATA`` for a detection bundle: COCO mAP, AP50/75, AP S/M/L, AR and
    per-class AP on ``data`` (original pixels, score >= 0.001 as in COCO evaluation), with report.md, PR curves
    and a confusion matrix written to ``report`` (default: ``BUNDLE-eval`` beside the bundle)."""
    import numpy as np

    from frugalvision._fs import write_text_atomic
    from frugalvision.bundle import load_detector
    from frugalvision.data.detection import check_class_names
    from frugalvision.metrics import coco_evaluate
    from frugalvision.metrics.detection import detection_confusion_matrix
    from frugalvision.plots import save_detection_confusion_matrix, save_pr_curves

    detector = load_detector(bundle)
    classes = list(detector.bundle_config["classes"])  # type: ignore[index]
    with data_warnings():
        dataset = _open_detection_data(data, split)
    check_class_names(dataset.classes, classes, str(data))
    files = [Path(s.path) for s in dataset.samples]
    if not files:
        raise FrugalVisionError(f"{data}: no images to evaluate on")
    preds = torch_detect(detector, files, score_threshold=0.001, batch_size=batch_size)
    targets = []
    for s in dataset.samples:
        boxes = np.zeros((0, 4), np.float32) if s.boxes is None else np.asarray(s.boxes, np.float32)
        labels = np.zeros(0, np.int64) if s.box_labels is None else np.asarray(s.box_labels, np.int64)
        targets.append({"boxes": boxes.reshape(-1, 4), "labels": labels})
    result = coco_evaluate(preds, targets, classes, backend=backend)  # type: ignore[arg-type]
    matrix = detection_confusion_matrix(preds, targets, len(classes), score_threshold=PREDICT_SCORE_THRESHOLD)
    out = report or Path(bundle).with_name(Path(bundle).name + "-eval")
    out.mkdir(parents=True, exist_ok=True)
    save_pr_curves(result.recall_thresholds.tolist(), result.pr_curve(0.5), classes, out / "pr_curves.png")
    save_detection_confusion_matrix(matrix, classes, out / "confusion_matrix.png")
    summary = {k: (None if np.isnan(v) else v) for k, v in result.summary().items()}
    per_class = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                 for row in result.per_class()]  # fmt: skip
    record = {
        "bundle": str(bundle),
        "data": str(data),
        "split": split,
        "images": len(files),
        "backend": result.backend,
        "metrics": summary,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "report": str(out),
    }
    write_text_atomic(out / "metrics.json", json.dumps(record, indent=2))
    lines = [
        f"# Detection evaluation of {Path(bundle).name}",
        "",
        f"Data: `{data}`{f' (split {split})' if split else ''}, {len(files)} images; COCO metrics ({result.backend}), "
        "boxes in original pixels, detections scoring >= 0.001 (NMS IoU 0.65, at most 300 per image).",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in summary.items()],
        "",
        "## Per-class AP",
        "",
        result.to_markdown(),
        "",
        "![precision-recall at IoU 0.5](pr_curves.png)",
        "",
        "Confusion matrix (detections scoring >= 0.25, matched at IoU >= 0.5; last row / column: background):",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(f"{len(files)} images, {len(classes)} classes ({result.backend})")
        for k, v in summary.items():
            click.echo(f"  {k:<10} {'n/a' if v is None else f'{v:.4f}'}")
        click.echo(f"\n  {'class':<24} {'boxes':>6} {'AP':>6} {'AP50':>6}")
        for row in per_class:
            ap, ap50 = row["ap"], row["ap50"]
            click.echo(f"  {str(row['class'])[:24]:<24} {row['targets']:>6d} "
                       f"{'n/a' if ap is None else f'{ap:.3f}':>6} {'n/a' if ap50 is None else f'{ap50:.3f}':>6}")  # fmt: skip
        click.echo(f"report: {out / 'report.md'}", err=True)
    return record
