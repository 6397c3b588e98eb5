"""``frugalvision serve``: the HTTP service on the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

import click

from frugalvision.cli.main import cli


@cli.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--index",
    "index_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Saved EmbeddingIndex (frugalvision index) built with this model; enables POST /search.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface; put a reverse proxy in front).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8", "bf16"]),
    default="fp32",
    show_default=True,
    help="Which model of the deploy bundle to run.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="ONNX Runtime threads [default: one per physical core].",
)
@click.option(
    "--spin/--no-spin",
    default=True,
    show_default=True,
    help="Let idle ONNX Runtime threads spin (lower latency; --no-spin frees the CPU for other processes).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most images per model call (concurrent requests are batched together).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long a lone request waits for others to share its model call.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Largest request body (413 above).",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=40_000_000,
    show_default=True,
    help="Largest image in pixels, read from the header before decoding (413 above).",
)
@click.option(
    "--max-files",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most images per request (413 above).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most images waiting for the model; more answer 503 (retry later), so memory stays bounded.",
)
@click.option(
    "-k",
    "default_k",
    type=click.IntRange(min=1, max=1000),
    default=5,
    show_default=True,
    help="Hits per image of /search when the request gives no k.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="uvicorn log level.",
)
def serve(
    model: Path,
    index_dir: Path | None,
    host: str,
    port: int,
    precision: str,
    threads: int | None,
    spin: bool,
    max_batch: int,
    max_wait_ms: float,
    max_upload_mb: float,
    max_pixels: int,
    max_files: int,
    max_queue: int,
    default_k: int,
    log_level: str,
) -> None:
    """Serve MODEL over HTTP: POST /embed, /predict, /search; GET /health, /info; docs at /docs.

    MODEL is a deploy bundle written by `frugalvision export` (or an exported .onnx file). A trained model bundle
    must be exported first (that step needs torch; the service itself runs on numpy, Pillow and ONNX Runtime).
    """
    import uvicorn

    from frugalvision.runtime import Predictor
    from frugalvision.serve import ServeLimits, create_app, load_index

    predictor = Predictor(model, precision=precision, threads=threads, spin=spin, max_pixels=max_pixels)
    index = load_index(str(index_dir)) if index_dir is not None else None
    limits = ServeLimits(
        max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_files=max_files, max_pending=max_queue
    )
    app = create_app(
        predictor,
        index=index,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        limits=limits,
        default_k=default_k,
    )
    click.echo(f"serving {predictor!r} on http://{host}:{port} (docs: /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
