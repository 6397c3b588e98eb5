"""``frugalvision export``: a model bundle or a plain backbone to an ONNX deploy bundle (+ int8, bf16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from frugalvision.cli._app import cli
from frugalvision.cli._options import (
    input_option,
    json_option,
    pretrained_option,
    threads_option,
    weights_option,
)


def _default_out(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path.with_name(f"{path.name}-onnx")
    return Path(f"{source.replace('/', '_')}-onnx")


def _table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k != "precision"]
    lines = ["precision     " + "  ".join(f"{k:>14}" for k in keys)]
    for row in rows:
        cells = [
            f"{row[k]:>14.4f}" if isinstance(row.get(k), float) else f"{row.get(k, ''):>14}" for k in keys
        ]
        lines.append(f"{row['precision']:<12}  " + "  ".join(cells))
    return "\n".join(lines)


@cli.command("export")
@click.argument("source")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx"]),
    default="onnx",
    help="Export format (ONNX, run by `frugalvision serve` and frugalvision.runtime.Predictor).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Deploy bundle folder to write [default: SOURCE-onnx beside a bundle, ./NAME-onnx for a backbone name].",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write an int8 model (ONNX Runtime static quantisation, QDQ, per-channel); needs --calibrate.",
)
@input_option(
    "--calibrate",
    kind="folder",
    help="Folder of images like those the model will see (searched recursively) to calibrate int8 ranges.",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=200,
    help="Calibration images drawn at random from --calibrate.",
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    help="Activation range estimate for int8.",
)
@click.option(
    "--bf16",
    is_flag=True,
    help="Add a bf16 entry (ONNX Runtime's bfloat16 fast-math GEMMs). Runs on ARM64 CPUs only: ONNX Runtime has no bf16 kernels on x86.",
)
@input_option(
    "--validate",
    help="Labelled data (class folders, manifest...) to report accuracy (Recall@1 / MAP@R, accuracy or mAP) and speed per precision.",
)
@click.option(
    "--max-validate",
    type=click.IntRange(min=2),
    default=2000,
    help="Most images of --validate used.",
)
@threads_option("ONNX Runtime threads for the speed measurement [default: one per core].")
@click.option(
    "--speed-seconds",
    type=click.FloatRange(min=0),
    default=2.0,
    help="Time spent measuring speed per precision and batch size (0: no speed report).",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    help="torch.onnx exporter: dynamo (torch.export, needs onnxscript), torchscript (legacy), auto = dynamo with fallback.",
)
@click.option("--opset", type=click.IntRange(min=17), default=18, help="ONNX opset.")
@pretrained_option("For a backbone name: load its pretrained weights (--no-pretrained: random, for tests).")
@weights_option("For a backbone name: local .safetensors/.pth weights.")
@click.option(
    "--normalize/--no-normalize",
    default=True,
    help="For a backbone name: L2-normalise the embeddings inside the model.",
)
@click.option(
    "--optimize",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    help="Add ONNX Runtime's transformer-fused fp32 model and a dynamic int8 model, measure every model here and "
    "record the fastest within the accuracy budget as the one `serve` and Predictor run (auto: for transformer "
    "graphs, e.g. ViTs; on: for any model).",
)
@click.option(
    "--tome-r",
    type=click.IntRange(min=0),
    default=None,
    help="ViTs, with --optimize: also add Token Merging models (fp32 and dynamic int8) merging R tokens per block "
    "as candidates, chosen only within the accuracy budget [default: about half the patches merged by the last "
    "block; 0: no ToMe models].",
)
@click.option(
    "--score-threshold",
    type=click.FloatRange(0, 1),
    default=0.25,
    help="Detection models: the score threshold of the NMS inside the graph (0.001 for mAP evaluation).",
)
@json_option("Print the report as JSON.")
def export_cmd(
    source: str,
    fmt: str,
    out: Path | None,
    int8: bool,
    calibrate: Path | None,
    calibration_images: int,
    calibration_method: str,
    bf16: bool,
    validate: Path | None,
    max_validate: int,
    threads: int | None,
    speed_seconds: float,
    exporter: str,
    opset: int,
    pretrained: bool,
    weights: Path | None,
    normalize: bool,
    optimize: str,
    tome_r: int | None,
    score_threshold: float,
    as_json: bool,
) -> None:
    """Export SOURCE (a trained model bundle folder, or a backbone name such as
    tf_efficientnet_lite0.in1k_offline) to an ONNX deploy bundle: model.onnx + deploy.json.

    The export is checked against PyTorch (per-row cosine >= 0.9999). With --int8 --calibrate DIR an int8 model is
    added and compared with fp32; with --validate DATA the accuracy and speed of each precision are reported, so
    you can choose. Serve the result with `frugalvision serve OUT`.

    A detection bundle (`frugalvision train --task detection`) is fused (RepConv, auxiliary head dropped) and
    exported with the class-aware NMS inside the ONNX graph; `frugalvision predict OUT IMAGES` and `serve` run it.
    --int8 --calibrate DIR quantises its body on letterboxed images (the NMS stays float).
    """
    from frugalvision.deploy import (
        add_bf16_fastmath,
        add_dynamic_int8,
        add_fused,
        add_tome,
        choose_model,
        compare_precisions,
        export_backbone,
        export_bundle,
        is_model_bundle,
        is_transformer_graph,
        list_images,
        quantize_int8,
        throughput,
    )
    from frugalvision.runtime import Predictor, bf16_fastmath_available

    if int8 != (calibrate is not None):
        raise click.UsageError(
            "--int8 and --calibrate DIR go together: int8 ranges are calibrated on your images"
        )
    out = out or _default_out(source)
    from frugalvision.cli.detection import is_detection_bundle

    if Path(source).is_dir() and is_detection_bundle(source):
        if bf16 or validate is not None:
            raise click.UsageError("--bf16 and --validate are not available for detection bundles yet")
        from frugalvision.cli.detection import export_detection

        det = export_detection(
            Path(source), out, exporter=exporter, opset=opset, score_threshold=score_threshold
        )
        det_report: dict[str, Any] = {
            "out": str(det.folder),
            "exporter": det.exporter,
            "parity_fp32": det.parity,
        }
        # int8: calibrated on letterboxed images, the NMS kept float; agreement = detections matched at IoU >= 0.5
        if int8:
            assert calibrate is not None
            q = quantize_int8(out, calibrate, max_images=calibration_images, method=calibration_method)
            det_report["int8"] = q.record
            click.echo(f"int8 model {q.model_path.name}: calibrated on {q.record['calibration_images']} images; vs "
                       f"fp32: recall {q.agreement.get('recall', float('nan')):.3f}, precision "
                       f"{q.agreement.get('precision', float('nan')):.3f}", err=True)  # fmt: skip
        if as_json:
            click.echo(json.dumps(det_report, indent=2, default=str))
        else:
            click.echo(f"exported {det.model_path} with NMS inside the graph ({det.exporter} exporter, opset {opset})",
                       err=True)  # fmt: skip
            click.echo(f"deploy bundle: {out}  (serve it: frugalvision serve {out})")
        return
    if Path(source).is_dir():
        if not is_model_bundle(source):
            raise click.UsageError(f"{source} is not a model bundle (config.json + model.safetensors)")
        result = export_bundle(source, out, exporter=exporter, opset=opset)
    elif Path(source).exists():
        raise click.UsageError(f"{source} is a file; SOURCE is a model bundle folder or a backbone name")
    else:
        result = export_backbone(source, out, pretrained=pretrained, weights=weights, normalize=normalize,
                                 exporter=exporter, opset=opset)  # fmt: skip
    report: dict[str, Any] = {
        "out": str(result.folder),
        "exporter": result.exporter,
        "parity_fp32": result.parity,
    }
    click.echo(f"exported {result.model_path} ({result.exporter} exporter, opset {opset}); "
               f"ONNX Runtime vs PyTorch: min cosine {result.parity['min_cosine']:.7f}", err=True)  # fmt: skip
    if int8:
        assert calibrate is not None
        q = quantize_int8(out, calibrate, max_images=calibration_images, method=calibration_method)
        report["int8"] = q.record
        if q.agreement:
            which = "held-out" if q.record["check_held_out"] else "calibration"
            click.echo(f"int8 model {q.model_path.name}: calibrated on {q.record['calibration_images']} images; vs fp32 "
                       f"on {q.agreement['rows']} {which} images: min cosine {q.agreement['min_cosine']:.4f}, "
                       f"mean {q.agreement['mean_cosine']:.4f}", err=True)  # fmt: skip
    if bf16:
        add_bf16_fastmath(out)
        here = (
            "" if bf16_fastmath_available() else " (not on this CPU: ONNX Runtime has no bf16 kernels on x86)"
        )
        click.echo(
            f"bf16 entry added: runs with ONNX Runtime's bf16 fast-math GEMMs on ARM64{here}", err=True
        )
    if optimize == "on" or (optimize == "auto" and is_transformer_graph(result.model_path)):
        check = calibrate if calibrate is not None else validate
        images = list_images(check)[:32] if check is not None else None
        add_fused(out, check_images=images)
        add_dynamic_int8(out, check_images=images)
        if tome_r != 0 and result.model is not None:
            from frugalvision.errors import UnsupportedModelError

            try:
                add_tome(out, result.model, r=tome_r, check_images=images)
            except UnsupportedModelError as e:
                click.echo(f"no Token Merging models: {e}", err=True)
        choice = choose_model(
            out, check_images=images, validate=validate, threads=threads, seconds=max(speed_seconds / 2, 0.2),
            max_validate=max_validate,
        )  # fmt: skip
        report["engine"] = choice.record
        if not as_json:
            click.echo(_table(choice.rows))
        click.echo(f"chosen: {choice.precision} (fastest here within the accuracy budget; recorded in deploy.json)",
                   err=True)  # fmt: skip
    if validate is not None:
        rows = compare_precisions(
            out, validate, threads=threads, max_images=max_validate, speed_seconds=speed_seconds
        )
        report["comparison"] = rows
        if not as_json:
            click.echo(_table(rows))
    elif int8 and speed_seconds > 0:
        rows = []
        for precision in ("fp32", "int8"):
            predictor = Predictor(out, precision=precision, threads=threads)
            rows.append(
                {
                    "precision": precision,
                    **{f"images/s@b{b}": throughput(predictor, b, speed_seconds) for b in (1, 32)},
                }
            )
        report["speed"] = rows
        if not as_json:
            click.echo(_table(rows) + "\n(pass --validate DATA for the accuracy of each precision)")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(f"deploy bundle: {out}  (serve it: frugalvision serve {out})")
