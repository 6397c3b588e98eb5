"""The HTTP service: a FastAPI app over the torch-free :class:`~frugalvision.runtime.Predictor`.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /embed``   one or more images (multipart field ``file``, repeatable) -> embeddings
* ``POST /predict`` images -> class labels and probabilities (classification / multilabel models)
* ``POST /search``  images -> the ``k`` nearest items of a saved :class:`~frugalvision.index.EmbeddingIndex`
* ``POST /detect``  images -> boxes (xyxy, in each image's own pixels), scores and classes (detection models)
* ``GET /health``, ``GET /info``

Untrusted input is bounded before work is spent on it, and every refusal is a JSON ``{"detail": ...}``. The
checks run cheapest first: nothing is read before the ``Host`` and the token are checked, nothing is decoded
before the request is admitted.

* **400** a ``Host`` header outside ``allowed_hosts`` (so DNS rebinding cannot reach a local service), or an
  endpoint this model cannot serve (``/predict`` on an embedding model, ``/search`` without index);
* **401** ``token`` is set and the request has no ``Authorization: Bearer <token>`` (compared in constant time;
  ``/health`` and the docs pages need none);
* **503** (with ``Retry-After``) the service is busy: checked before the body is read (no room for even one
  image), then for the request's images before any is decoded -- more than ``max_pending`` images in progress,
  or the images ahead would take more than ``max_queue_wait_s`` to compute
  (:meth:`~frugalvision.serve._batching.MicroBatcher.admit`);
* **413** request body over ``max_upload_mb`` (checked on ``Content-Length`` before reading, and while reading
  a body without it), more than ``max_files`` images, an image over ``max_pixels`` pixels, or images of more
  than ``max_request_pixels`` pixels in all (both read from the headers, before decoding: decompression bombs
  are refused without being allocated);
* **408** the body did not arrive within ``read_timeout_s`` (a slow client holds no slot for long);
* **415** not an image, or a format outside the accepted list (checked on the content, not the declared type);
* **422** a recognised image that cannot be decoded (truncated, damaged), an empty file, a missing field;
* **500** a bug: a JSON answer, and the keep-alive connection stays usable.

Concurrent requests are micro-batched (:class:`~frugalvision.serve._batching.MicroBatcher`): one ONNX Runtime call
per batch, in a worker thread; decoding and resizing run in a few threads (one per core, at most 8, first come
first served), so the event loop stays free. When a client disconnects, its images still waiting for the model
are dropped and its decoding stops after the current image.

``/search`` answers ids, labels and paths *as this service shows them* (``paths``): by default relative to the
folder that holds every indexed image, so server paths are not disclosed (see :func:`display_paths`). The
service serves no file at all: it returns strings recorded in the index, never the content of a path.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import ntpath
import os
import posixpath
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frugalvision._version import __version__
from frugalvision.errors import (
    CorruptImageError,
    FrugalVisionError,
    ImageTooLargeError,
    StoreError,
    UnsupportedImageError,
)
from frugalvision.runtime import DEFAULT_FORMATS, Predictor, decode_image
from frugalvision.runtime.detection import unpack_detections
from frugalvision.serve._batching import Admission, BatcherFullError, MicroBatcher

__all__ = [
    "LOCAL_HOSTS",
    "PATH_MODES",
    "BodyLimitMiddleware",
    "GuardMiddleware",
    "InternalErrorMiddleware",
    "ServeLimits",
    "check_index_matches",
    "create_app",
    "display_paths",
]

log = logging.getLogger("frugalvision.serve")

#: How ``/search`` shows the indexed paths (see :func:`display_paths`).
PATH_MODES: tuple[str, ...] = ("relative", "name", "full", "none")
#: Host names a local service answers to when no list is given to the CLI.
LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
_IMAGE_ENDPOINTS = frozenset({"/embed", "/predict", "/search", "/detect"})
_OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class ServeLimits(BaseModel):
    """Request limits of the service."""

    max_upload_mb: float = Field(default=10.0, gt=0, description="Largest request body, in MiB.")
    max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest image, in pixels (width x height)."
    )
    max_request_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Most pixels of all the images of one request together (read from the headers).",
    )
    max_files: int = Field(default=64, gt=0, description="Most images per request.")
    max_pending: int = Field(
        default=256, gt=0, description="Most images decoding, waiting or running at once (503 above)."
    )
    max_queue_wait_s: float | None = Field(
        default=2.0,
        gt=0,
        description="Refuse (503) when the images ahead would keep the model busy longer than this; None: no limit.",
    )
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="Time for the whole request body to arrive (408 above)."
    )
    formats: list[str] = Field(
        default_factory=lambda: sorted(DEFAULT_FORMATS), description="Accepted formats."
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# ------------------------------------------------------------------------------------------------ responses
class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="One vector per image, in upload order.")
    dim: int
    normalization: str = Field(description="'l2' (unit rows: inner product = cosine), 'poincare' or 'none'.")


class PredictionItem(BaseModel):
    labels: list[str] = Field(
        description="Top classes (classification) or classes over threshold (multilabel)."
    )
    scores: list[float] = Field(description="Their probabilities.")


class PredictResponse(BaseModel):
    task: str
    predictions: list[PredictionItem]


class DetectionItem(BaseModel):
    boxes: list[list[float]] = Field(description="[x1, y1, x2, y2] per object, in the image's own pixels.")
    scores: list[float] = Field(description="Class probabilities, best first.")
    labels: list[int] = Field(description="Class ids.")
    names: list[str] = Field(description="Class names.")


class DetectResponse(BaseModel):
    task: str
    detections: list[DetectionItem] = Field(description="One entry per image, in upload order.")


class Hit(BaseModel):
    rank: int
    id: int = Field(description="Row of the item in the index.")
    score: float = Field(
        description="Inner product (higher is closer) or squared L2 distance (lower is closer)."
    )
    path: str | None = Field(
        default=None, description="The item's path as the service shows it (relative by default; --paths)."
    )
    label: str | None = None


class SearchResponse(BaseModel):
    metric: str
    results: list[list[Hit]] = Field(description="One list of hits per image.")


class HealthResponse(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Endpoint not available for this model / service, or a Host that is not allowed."),
        (401, "A token is required: Authorization: Bearer <token>."),
        (408, "The request body did not arrive in time."),
        (413, "Request body, number of images or image pixels over the limit."),
        (415, "Not an image, or an image format that is not accepted."),
        (422, "Image cannot be decoded (truncated or damaged), empty, or a field is missing."),
        (503, "Busy: too many images in progress; retry after Retry-After seconds."),
    )
}


FileField = Annotated[
    list[UploadFile],
    File(description="Image file(s) (JPEG, PNG, WebP, BMP, GIF, TIFF); repeat the field for several."),
]
TopK = Annotated[int, Query(ge=1, le=1000, description="Classes per image (classification).")]
ScoreThreshold = Annotated[
    float | None,
    Query(
        ge=0,
        le=1,
        description="Keep detections scoring at least this (above the model's exported threshold).",
    ),
]
SearchK = Annotated[int | None, Query(ge=1, le=1000, description="Hits per image (default: the service's).")]


# ---------------------------------------------------------------------------------------------- middleware
class _BodyTooLarge(HTTPException):
    """Raised from inside the request body stream; an HTTPException so FastAPI's form parsing re-raises it."""


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _host_name(header: str) -> str | None:
    """The host name of a ``Host`` header (``"[::1]:8000"`` -> ``"::1"``), lower case; ``None`` if malformed."""
    if not header or any(c in header for c in "/?#@ \t"):
        return None
    try:
        parts = urlsplit("//" + header)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return parts.hostname or None


def _normalise_host(name: str) -> str:
    name = name.strip().lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


class GuardMiddleware:
    """The checks that need no body: ``Host`` allow-list (400), bearer token (401), busy service (503).

    Args:
        app: the ASGI app.
        allowed_hosts: host names (no port) the ``Host`` header may name; ``"*"`` or ``None`` allows any.
            IPv6 addresses with or without brackets.
        token: the bearer token every request except ``/health`` and the docs pages must carry; ``None``: no
            authentication.
        busy: raises :class:`BatcherFullError` when the service cannot take even one more image; called for
            POSTs to the image endpoints before their body is read.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str] | None = None,
        token: str | None = None,
        busy: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        hosts = None if allowed_hosts is None else {_normalise_host(h) for h in allowed_hosts}
        self.allowed_hosts = None if hosts is None or "*" in hosts else frozenset(hosts)
        self._expected = None if token is None else token.strip().encode()
        self.busy = busy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key.lower(), value)
        if self.allowed_hosts is not None:
            name = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed_hosts:
                return _refuse(400, "invalid Host header: this service does not answer to that name "
                                    "(frugalvision serve --allowed-host NAME adds one)")  # fmt: skip
        path = scope.get("path", "")
        if self._expected is not None and path not in _OPEN_PATHS:
            scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._expected):
                return _refuse(
                    401,
                    "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if self.busy is not None and scope.get("method") == "POST" and path in _IMAGE_ENDPOINTS:
            try:
                self.busy()
            except BatcherFullError as e:
                return _refuse(503, str(e), headers={"Retry-After": str(e.retry_after)})
        return None


class InternalErrorMiddleware:
    """Answer an unhandled exception with a JSON 500 *and end the request normally*.

    Starlette's own 500 handler re-raises the exception after answering, and the server then closes the
    connection; here it is logged and swallowed, so a keep-alive connection survives a bug in one request. If
    the response had already started, the exception is re-raised (the connection cannot be reused then).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error on %s", scope.get("path"))
            await _refuse(500, f"internal error: {type(exc).__name__}")(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by ``Content-Length`` up front, else while streaming.

    With ``read_timeout_s``, a body that has not fully arrived that many seconds after the request started is
    refused with 408 (and the connection closed), so a slow client cannot hold a connection slot for long.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await JSONResponse({"detail": "invalid Content-Length header"}, status_code=400)(
                    scope, receive, send
                )
                return
            if int(length) > self.max_bytes:
                await self._too_large(int(length))(scope, receive, send)
                return
        seen, complete = 0, False
        deadline = None if self.read_timeout_s is None else time.monotonic() + self.read_timeout_s

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if complete or deadline is None:  # after the body: waiting for a disconnect has no deadline
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    raise _BodyTooLarge(
                        408,
                        f"the request body did not arrive within {self.read_timeout_s:g} s",
                        headers={"Connection": "close"},
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise _BodyTooLarge(413, self._message(seen, streamed=True))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int, streamed: bool = False) -> str:
        got = f"more than {self.max_bytes:,}" if streamed else f"{size:,}"
        return f"request body of {got} bytes is over the limit of {self.max_bytes:,} bytes (--max-upload-mb)"

    def _too_large(self, size: int) -> JSONResponse:
        return JSONResponse({"detail": self._message(size)}, status_code=413)


# --------------------------------------------------------------------------------------------------- paths
def _pathmod(paths: Sequence[str]) -> Any:
    """``ntpath`` for Windows-style recorded paths (``C:\\...``, backslashes only), else ``posixpath``."""
    windows = any("\\" in p or ntpath.splitdrive(p)[0] for p in paths) and not any("/" in p for p in paths)
    return ntpath if windows else posixpath


def display_paths(paths: Sequence[str] | None, mode: str = "relative") -> list[str] | None:
    """How ``/search`` shows the paths recorded in an index, without disclosing the server's folders.

    Args:
        paths: the index's paths (as the embedding store recorded them: absolute when embedded from an absolute
            folder).
        mode:

            * ``"relative"`` (default): relative to the deepest folder holding every image, e.g.
              ``/srv/photos/cats/1.jpg`` and ``/srv/photos/dogs/2.jpg`` -> ``cats/1.jpg``, ``dogs/2.jpg``;
              a lone image, or images whose only common folder is the file-system root (or that mix absolute
              and relative paths), show their file name only; relative paths with no common folder (and no
              leading ``..``) are shown as recorded;
            * ``"name"``: the file name only (``1.jpg``);
            * ``"full"``: as recorded (may disclose server paths: opt-in);
            * ``"none"``: no paths (ids and labels only).

    Returns:
        One string per path (``None`` for ``"none"`` or an index without paths). Never contains ``..``: the
        folders shown are below the common folder.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in PATH_MODES:
        raise ValueError(f"paths mode must be one of {', '.join(PATH_MODES)}, got {mode!r}")
    if paths is None or mode == "none":
        return None
    if mode == "full":
        return list(paths)
    pm = _pathmod(paths)
    normal = [pm.normpath(p) for p in paths]
    names = [pm.basename(p) for p in normal]
    if mode == "name" or len(normal) < 2:
        return names
    try:
        root = pm.commonpath([pm.dirname(p) for p in normal])
    except ValueError:  # absolute and relative mixed, or several drives
        return names
    parts = [x for x in pm.splitdrive(root)[1].split(pm.sep) if x]
    if not parts and not pm.isabs(normal[0]) and not any(p.startswith(pm.pardir) for p in normal):
        return [
            p.replace(pm.sep, "/") for p in normal
        ]  # relative paths with no common folder: harmless as is
    if not parts or all(x == pm.pardir for x in parts):  # "/" or "../..": no common folder
        return names
    return [pm.relpath(p, root).replace(pm.sep, "/") for p in normal]


# --------------------------------------------------------------------------------------------------- index
def check_index_matches(predictor: Predictor, index: Any) -> None:
    """Raise :class:`StoreError` if ``index`` was not built with the model of ``predictor``.

    Compares the vector size, and the model recorded in the index (``info["backbone"]``: a bundle id or a
    backbone spec) with the deploy bundle's ``source``. An index that records no model only gets a warning.
    """
    if predictor.task != "embedding":
        raise StoreError(f"--index needs an embedding model; this one is a {predictor.task} model")
    if int(index.dim) != predictor.output_size:
        raise StoreError(
            f"the index holds {index.dim}-d vectors but the model outputs {predictor.output_size}-d embeddings; "
            "build the index with this model"
        )
    recorded = (index.info or {}).get("backbone")
    source = predictor.config.source
    if not recorded or not source:
        warnings.warn("cannot tell whether the index was built with this model (no record); results may be wrong",
                      stacklevel=2)  # fmt: skip
        return
    if source.get("kind") == "bundle":
        same = recorded.get("id") is not None and recorded.get("id") == source.get("id")
        theirs, ours = recorded.get("id") or recorded.get("name"), source.get("id")
    else:
        spec = source.get("backbone") or {}
        keys = ("name", "pretrained", "weights")
        same = all(recorded.get(k) == spec.get(k) for k in keys)
        theirs, ours = {k: recorded.get(k) for k in keys}, {k: spec.get(k) for k in keys}
    if not same:
        raise StoreError(f"the index was built with another model ({theirs}) than the one served ({ours})")


# ------------------------------------------------------------------------------------------------------ app
def _header_pixels(data: bytes) -> int:
    """``width * height`` from the image header (Pillow opens lazily: nothing is decoded); 0 if unreadable.

    An unreadable or refused header counts 0 here: :func:`decode_image` then names the problem (415 / 413 / 422).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width) * int(img.height)
    except Exception:  # any failure is reported by decode_image, with its proper status
        return 0


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (after the body was read, ``receive`` only reports that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(
    predictor: Predictor,
    *,
    index: Any | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: ServeLimits | None = None,
    default_k: int = 5,
    paths: str = "relative",
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    decode_threads: int | None = None,
) -> FastAPI:
    """Build the FastAPI app serving ``predictor`` (and ``index`` for ``/search``).

    Args:
        predictor: a :class:`~frugalvision.runtime.Predictor`.
        index: an :class:`~frugalvision.index.EmbeddingIndex` or a database table
            (:class:`~frugalvision.vectordb.PgVectorIndex`, whose hits bring their own path and label; several
            services may share it) built with the same model (checked with :func:`check_index_matches`), or
            ``None``.
        max_batch: most images per model call.
        max_wait_ms: how long a lone request waits for others to share its model call.
        limits: request limits (:class:`ServeLimits`).
        default_k: hits per image of ``/search`` when ``k`` is not given.
        paths: how ``/search`` shows the indexed paths: ``"relative"`` (default), ``"name"``, ``"full"`` or
            ``"none"`` (:func:`display_paths`). Hits always carry their ``id`` (row of the index).
        token: require ``Authorization: Bearer <token>`` on every endpoint but ``/health`` and the docs
            (401 otherwise; compared in constant time). ``None``: no authentication.
        allowed_hosts: host names the ``Host`` header may carry (400 otherwise), e.g. :data:`LOCAL_HOSTS`;
            ``None`` or ``["*"]``: any (``frugalvision serve`` passes the local names and the bound host).
        decode_threads: images decoded at once (default: one per core, at most 8).

    Raises:
        ValueError: an unknown ``paths`` mode, or an empty ``token``.
        StoreError: ``index`` was not built with this model.
    """
    limits = limits or ServeLimits()
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None")
    shown_paths = display_paths(index.paths if index is not None else None, paths)
    if index is not None:
        check_index_matches(predictor, index)
    batcher = MicroBatcher(
        predictor.run,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_pending=limits.max_pending,
        max_delay_s=limits.max_queue_wait_s,
    )
    threads = decode_threads or max(1, min(8, os.cpu_count() or 1))
    decode_limiter = anyio.CapacityLimiter(threads)
    formats = frozenset(limits.formats)
    pre = predictor.preprocessor

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(
        title="frugalvision",
        version=__version__,
        description=f"{predictor.task} model `{predictor.model_path.name}` ({predictor.precision}) on ONNX Runtime.",
        lifespan=lifespan,
        # documents the bearer scheme (the "Authorize" button of /docs); the check itself is GuardMiddleware's
        dependencies=[Depends(HTTPBearer(auto_error=False))] if token else None,
    )
    app.state.batcher = batcher
    # the last added runs first: errors -> Host, token, busy -> body size and read timeout -> routes
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=limits.max_body_bytes, read_timeout_s=limits.read_timeout_s
    )
    app.add_middleware(
        GuardMiddleware, allowed_hosts=allowed_hosts, token=token, busy=lambda: batcher.check(1)
    )
    app.add_middleware(InternalErrorMiddleware)

    letterbox = predictor.letterbox  # detectors: letterboxed, and each image's meta kept to map boxes back

    def decode_all(
        blobs: Sequence[tuple[str, bytes]], cancelled: threading.Event, metas: list[Any] | None = None
    ) -> np.ndarray | None:
        pixels = np.empty((len(blobs), pre.height, pre.width, 3), dtype=np.uint8)
        for i, (name, data) in enumerate(blobs):
            if cancelled.is_set():  # the client left: stop after the current image
                return None
            try:
                image = decode_image(
                    data, max_pixels=limits.max_pixels, formats=formats, name=name, resize=pre.resize_rule
                )
            except ImageTooLargeError as e:
                raise HTTPException(413, str(e)) from e
            except UnsupportedImageError as e:
                raise HTTPException(415, str(e)) from e
            except CorruptImageError as e:
                raise HTTPException(422, str(e)) from e
            if letterbox is not None and metas is not None:
                pixels[i], meta = letterbox.letterbox(image)
                metas.append(meta)
            else:
                pixels[i] = pre.resize_crop(image)
        return letterbox.normalize(pixels) if letterbox is not None else pre.normalize(pixels)

    async def compute(
        blobs: list[tuple[str, bytes]],
        admission: Admission,
        cancelled: threading.Event,
        metas: list[Any] | None = None,
    ) -> np.ndarray:
        batch = await anyio.to_thread.run_sync(decode_all, blobs, cancelled, metas, limiter=decode_limiter)
        if batch is None:
            raise asyncio.CancelledError
        return await batcher.submit(batch, admission)

    async def unless_disconnected(
        request: Request, work: Awaitable[np.ndarray], cancelled: threading.Event
    ) -> np.ndarray:
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():  # the client left (or the server is stopping): drop the work
                cancelled.set()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # the decoding thread ends its image
        if task.cancelled():
            log.info("client disconnected from %s; its work was cancelled", request.url.path)
            raise HTTPException(503, "the client disconnected; its work was cancelled")
        return task.result()

    async def run_images(
        request: Request, files: list[UploadFile], metas: list[Any] | None = None
    ) -> np.ndarray:
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} images in one request; the limit is {limits.max_files}")
        blobs = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]
        for name, data in blobs:
            if not data:
                raise HTTPException(422, f"{name}: empty file")
        total = sum(await run_in_threadpool(lambda: [_header_pixels(d) for _, d in blobs]))
        if total > limits.max_request_pixels:
            raise HTTPException(
                413,
                f"the {len(blobs)} images hold {total:,} pixels in all; the limit per request is "
                f"{limits.max_request_pixels:,} (--max-request-pixels): send fewer or smaller images",
            )
        try:
            admission = batcher.admit(len(blobs))  # before decoding: a refusal costs no decoding
        except BatcherFullError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from e
        with admission:
            cancelled = threading.Event()
            return await unless_disconnected(request, compute(blobs, admission, cancelled, metas), cancelled)

    @app.get("/health", response_model=HealthResponse, summary="Liveness check")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/info", summary="Model, preprocessing, limits and batching statistics")
    async def info() -> dict[str, Any]:
        out: dict[str, Any] = {"frugalvision_version": __version__, "model": predictor.info()}
        out["limits"] = limits.model_dump()
        out["batching"] = {
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            **batcher.stats.to_dict(),
            "pending": batcher.pending,
            "seconds_per_image": batcher.seconds_per_image,
        }
        if index is not None:
            out["index"] = {"count": len(index), "dim": index.dim, "metric": index.metric, "kind": index.kind,
                            "paths": paths}  # fmt: skip
        return out

    @app.post("/embed", response_model=EmbedResponse, responses=_ERRORS, summary="Embed images")
    async def embed(request: Request, file: FileField) -> EmbedResponse:
        if predictor.task != "embedding":
            use = "/detect" if predictor.task == "detection" else "/predict"
            raise HTTPException(400, f"this is a {predictor.task} model; use {use}")
        vectors = await run_images(request, file)
        return EmbedResponse(
            embeddings=vectors.tolist(),
            dim=int(vectors.shape[1]),
            normalization=predictor.config.normalization,
        )

    @app.post("/predict", response_model=PredictResponse, responses=_ERRORS, summary="Classify / tag images")
    async def predict(request: Request, file: FileField, top_k: TopK = 5) -> PredictResponse:
        if predictor.task == "embedding":
            raise HTTPException(400, "this is an embedding model: it has no classes; use /embed or /search")
        if predictor.task == "detection":
            raise HTTPException(400, "this is a detection model; use /detect")
        logits = await run_images(request, file)
        items = [PredictionItem(**p.to_dict()) for p in predictor.decide(logits, top_k=top_k)]
        return PredictResponse(task=predictor.task, predictions=items)

    @app.post("/detect", response_model=DetectResponse, responses=_ERRORS, summary="Detect objects (boxes)")
    async def detect(
        request: Request, file: FileField, score_threshold: ScoreThreshold = None
    ) -> DetectResponse:
        if predictor.task != "detection":
            raise HTTPException(
                400, f"this is a {predictor.task} model: it finds no boxes; use /predict or /embed"
            )
        metas: list[Any] = []
        packed = await run_images(request, file, metas)
        found = unpack_detections(packed, metas, predictor.classes, score_threshold or 0.0)
        return DetectResponse(task="detection", detections=[DetectionItem(**d.to_dict()) for d in found])

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS, summary="Nearest indexed images")
    async def search(request: Request, file: FileField, k: SearchK = None) -> SearchResponse:
        if index is None:
            raise HTTPException(400, "no index loaded; start the service with --index INDEX")
        vectors = await run_images(request, file)
        if bool((index.info or {}).get("normalized")) and predictor.config.normalization == "none":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        found = await run_in_threadpool(index.search, vectors, k or default_k)
        if getattr(
            index, "hits_carry_metadata", False
        ):  # a database table: each hit brings its path and label
            return SearchResponse(metric=index.metric, results=_database_hits(found, paths))
        results = [
            [
                Hit(
                    rank=r + 1,
                    id=int(i),
                    score=float(s),
                    path=shown_paths[i] if shown_paths else None,
                    label=index.labels[i] if index.labels else None,
                )
                for r, (i, s) in enumerate(zip(ids, scores, strict=True))
                if i >= 0
            ]
            for ids, scores in zip(found.ids.tolist(), found.scores.tolist(), strict=True)
        ]
        return SearchResponse(metric=index.metric, results=results)

    return app


def _database_hits(found: Any, mode: str) -> list[list[Hit]]:
    """Hits of a database backend (:class:`~frugalvision.vectordb.PgSearchResult`); ``"relative"`` paths are
    relative to the folder holding each query's hits (the table's whole listing is not read)."""
    out = []
    for ids, scores, hit_paths, hit_labels in zip(
        found.ids.tolist(), found.scores.tolist(), found.paths, found.labels, strict=True
    ):
        n = sum(i >= 0 for i in ids)
        shown = display_paths([str(p) for p in hit_paths[:n]], mode) if n else []
        out.append(
            [
                Hit(
                    rank=r + 1,
                    id=int(ids[r]),
                    score=float(scores[r]),
                    path=shown[r] if shown else None,
                    label=hit_labels[r],
                )
                for r in range(n)
            ]
        )
    return out


def load_index(path: str) -> Any:
    """Load an :class:`~frugalvision.index.EmbeddingIndex` for ``/search``.

    Raises:
        FrugalVisionError: the index module cannot be imported (it needs faiss, and currently torch too).
    """
    try:
        from frugalvision.index import EmbeddingIndex
    except ModuleNotFoundError as e:
        raise FrugalVisionError(
            f"--index needs the {e.name} package to read the index (frugalvision.index imports it); "
            "install it, or serve without --index"
        ) from e
    return EmbeddingIndex.load(path)
