"""``frugalvision serve``: the HTTP service on the torch-free runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from frugalvision.cli._app import cli
from frugalvision.cli._backend import backend_options, check_backend, pgvector_ef_search_option
from frugalvision.cli._listen import ANY_ADDRESS, allowed_host_option, allowed_hosts_for, host_option
from frugalvision.cli._options import input_option, threads_option

#: Largest request line + headers uvicorn buffers (h11's own default, set explicitly).
MAX_HEADER_BYTES = 16 * 1024
F = TypeVar("F", bound=Callable[..., Any])


def uvicorn_options(
    host: str, port: int, log_level: str, keep_alive: int, max_connections: int
) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run``: one process, idle keep-alive closed, a connection cap."""
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "workers": 1,
        "timeout_keep_alive": keep_alive,  # an idle connection is closed after this many seconds
        "limit_concurrency": max_connections,  # more connections or requests at once: 503 from uvicorn
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_graceful_shutdown": 10,
    }


#: The service's numeric limits: (flag, type, default, help), declared as one block of options.
_LIMIT_OPTIONS: tuple[tuple[str, click.ParamType, float, str], ...] = (
    (
        "--max-batch",
        click.IntRange(min=1),
        32,
        "Most images per model call (concurrent requests are batched together).",
    ),
    (
        "--max-wait-ms",
        click.FloatRange(min=0),
        5.0,
        "How long a lone request waits for others to share its model call.",
    ),
    ("--max-upload-mb", click.FloatRange(min=0, min_open=True), 10.0, "Largest request body (413 above)."),
    (
        "--max-pixels",
        click.IntRange(min=1),
        40_000_000,
        "Largest image in pixels, read from the header before decoding (413 above).",
    ),
    ("--max-files", click.IntRange(min=1), 64, "Most images per request (413 above)."),
    (
        "--max-queue",
        click.IntRange(min=1),
        256,
        "Most images decoding, waiting or running; more answer 503 (retry later), so memory stays bounded.",
    ),
    (
        "--max-queue-wait",
        click.FloatRange(min=0, min_open=True),
        2.0,
        "Seconds of model work a request may find ahead of it (estimated from recent batches); more answer "
        "503, so admitted requests stay fast under overload.",
    ),
    (
        "--max-request-pixels",
        click.IntRange(min=1),
        100_000_000,
        "Most pixels of all the images of one request together, read from the headers before decoding (413).",
    ),
    (
        "--read-timeout",
        click.FloatRange(min=0, min_open=True),
        60.0,
        "Seconds for a request body to arrive (408 above).",
    ),
    ("--keep-alive", click.IntRange(min=1), 5, "Seconds an idle keep-alive connection stays open."),
    (
        "--max-connections",
        click.IntRange(min=1),
        100,
        "Most open connections / requests at once; more get 503 at once.",
    ),
)


def _limit_options(f: F) -> F:
    """The options of :data:`_LIMIT_OPTIONS`, in that order."""
    for name, kind, default, text in reversed(_LIMIT_OPTIONS):
        f = click.option(name, type=kind, default=default, help=text)(f)
    return f


@cli.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@input_option(
    "--index",
    "index_dir",
    kind="folder",
    help="Saved EmbeddingIndex (frugalvision index) built with this model; enables POST /search.",
)
@backend_options
@pgvector_ef_search_option
@host_option
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="TCP port.")
@click.option(
    "--precision",
    type=click.Choice(
        ["auto", "fp32", "fp32-fused", "int8", "int8-dynamic", "bf16", "tome", "tome-int8-dynamic"]
    ),
    default="auto",
    help="Which model of the deploy bundle to run; auto = the fastest within the accuracy budget, as measured by "
    "`frugalvision export` (deploy.json's engine record), else fp32.",
)
@threads_option()
@click.option(
    "--spin/--no-spin",
    default=True,
    help="Let idle ONNX Runtime threads spin (lower latency; --no-spin frees the CPU for other processes).",
)
@_limit_options
@click.option(
    "--paths",
    "path_mode",
    type=click.Choice(["relative", "name", "full", "none"]),
    default="relative",
    help="How /search shows indexed paths: relative to the folder holding all images, the file name only, "
    "as recorded (may disclose server paths), or not at all. Hits always carry their id.",
)
@click.option(
    "--token",
    envvar="FRUGALVISION_TOKEN",
    show_envvar=True,
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every endpoint but /health and the docs (401 without). "
    "Prefer the environment variable: a flag is visible in the process list.",
)
@allowed_host_option
@click.option(
    "-k",
    "default_k",
    type=click.IntRange(min=1, max=1000),
    default=5,
    help="Hits per image of /search when the request gives no k.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    help="uvicorn log level.",
)
def serve(
    model: Path,
    index_dir: Path | None,
    backend: str,
    dsn: str | None,
    table: str,
    ef_search: int | None,
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
    max_queue_wait: float,
    max_request_pixels: int,
    read_timeout: float,
    keep_alive: int,
    max_connections: int,
    path_mode: str,
    token: str | None,
    allowed_host: tuple[str, ...],
    default_k: int,
    log_level: str,
) -> None:
    """Serve MODEL over HTTP: POST /embed, /predict, /search; GET /health, /info; docs at /docs.

    MODEL is a deploy bundle written by `frugalvision export` (or an exported .onnx file). A trained model bundle
    must be exported first (that step needs torch; the service itself runs on numpy, Pillow and ONNX Runtime).
    It listens on 127.0.0.1 unless --host says otherwise; beyond this machine, set --token and --allowed-host
    (or put a reverse proxy in front).
    """
    import uvicorn

    from frugalvision.runtime import Predictor
    from frugalvision.serve import LOCAL_HOSTS, ServeLimits, create_app, load_index

    check_backend(backend, dsn)
    if backend == "pgvector" and index_dir is not None:
        raise click.UsageError(
            "--index is a faiss folder; with --backend pgvector the table is --dsn/--table"
        )
    predictor = Predictor(model, precision=precision, threads=threads, spin=spin, max_pixels=max_pixels)
    index: Any = load_index(str(index_dir)) if index_dir is not None else None
    if backend == "pgvector":
        from frugalvision.vectordb import PgVectorIndex

        assert dsn is not None  # check_backend
        index = PgVectorIndex.open(dsn, table, ef_search=ef_search)
    if token is not None and not token.strip():
        raise click.BadParameter("the token is empty", param_hint="--token / FRUGALVISION_TOKEN")
    limits = ServeLimits(
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        max_files=max_files,
        max_pending=max_queue,
        max_queue_wait_s=max_queue_wait,
        read_timeout_s=read_timeout,
    )
    hosts = allowed_hosts_for(host, allowed_host, LOCAL_HOSTS)
    app = create_app(
        predictor,
        index=index,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        limits=limits,
        default_k=default_k,
        paths=path_mode,
        token=token,
        allowed_hosts=hosts,
    )
    if host in ANY_ADDRESS and not allowed_host:
        click.echo(f"listening on every interface, but answering only to Host {', '.join(hosts)}: add "
                   "--allowed-host NAME for the names clients use", err=True)  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        click.echo("warning: no --token: anyone who can reach this address can use the service", err=True)
    click.echo(f"serving {predictor!r} on http://{host}:{port} (docs: /docs)", err=True)
    uvicorn.run(app, **uvicorn_options(host, port, log_level, keep_alive, max_connections))
