"""The HTTP service: a FastAPI app over the torch-free :class:`~frugalvision.runtime.Predictor`.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /embed``   one or more images (multipart field ``file``, repeatable) -> embeddings
* ``POST /predict`` images -> class labels and probabilities (classification / multilabel models)
* ``POST /search``  images -> the ``k`` nearest items of a saved :class:`~frugalvision.index.EmbeddingIndex`
* ``GET /health``, ``GET /info``

Untrusted input is bounded before work is spent on it, and every refusal is a JSON ``{"detail": ...}``:

* **413** request body over ``max_upload_mb`` (checked on ``Content-Length`` before reading, and while reading
  a body without it), more than ``max_files`` images, or an image over ``max_pixels`` pixels (read from the
  header, before decoding: decompression bombs are refused without being allocated);
* **415** not an image, or a format outside the accepted list (checked on the content, not the declared type);
* **422** a recognised image that cannot be decoded (truncated, damaged), an empty file, a missing field;
* **400** an endpoint this model cannot serve (``/predict`` on an embedding model, ``/search`` without index);
* **503** more than ``max_pending`` images already waiting (with ``Retry-After``): memory stays bounded.

Concurrent requests are micro-batched (:class:`~frugalvision.serve._batching.MicroBatcher`): one ONNX Runtime call
per batch, in a worker thread; decoding and resizing run in Starlette's thread pool, so the event loop stays free.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frugalvision import __version__
from frugalvision.errors import CorruptImageError, FrugalVisionError, StoreError
from frugalvision.runtime._image import (
    DEFAULT_FORMATS,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
)
from frugalvision.runtime.predictor import Predictor
from frugalvision.serve._batching import BatcherFullError, MicroBatcher

__all__ = ["ServeLimits", "check_index_matches", "create_app"]

log = logging.getLogger("frugalvision.serve")


class ServeLimits(BaseModel):
    """Request limits of the service."""

    max_upload_mb: float = Field(default=10.0, gt=0, description="Largest request body, in MiB.")
    max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest image, in pixels (width x height)."
    )
    max_files: int = Field(default=64, gt=0, description="Most images per request.")
    max_pending: int = Field(default=256, gt=0, description="Most images waiting for the model (503 above).")
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


class Hit(BaseModel):
    rank: int
    id: int
    score: float = Field(
        description="Inner product (higher is closer) or squared L2 distance (lower is closer)."
    )
    path: str | None = None
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
        (400, "Endpoint not available for this model / service."),
        (413, "Request body, number of images or image pixels over the limit."),
        (415, "Not an image, or an image format that is not accepted."),
        (422, "Image cannot be decoded (truncated or damaged), empty, or a field is missing."),
        (503, "Too many images waiting; retry later."),
    )
}


FileField = Annotated[
    list[UploadFile],
    File(description="Image file(s) (JPEG, PNG, WebP, BMP, GIF, TIFF); repeat the field for several."),
]
TopK = Annotated[int, Query(ge=1, le=1000, description="Classes per image (classification).")]
SearchK = Annotated[int | None, Query(ge=1, le=1000, description="Hits per image (default: the service's).")]


# ---------------------------------------------------------------------------------------------- middleware
class _BodyTooLarge(HTTPException):
    """Raised from inside the request body stream; an HTTPException so FastAPI's form parsing re-raises it."""


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: by ``Content-Length`` up front, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(413, self._message(seen, streamed=True))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int, streamed: bool = False) -> str:
        got = f"more than {self.max_bytes:,}" if streamed else f"{size:,}"
        return f"request body of {got} bytes is over the limit of {self.max_bytes:,} bytes (--max-upload-mb)"

    def _too_large(self, size: int) -> JSONResponse:
        return JSONResponse({"detail": self._message(size)}, status_code=413)


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
def create_app(
    predictor: Predictor,
    *,
    index: Any | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: ServeLimits | None = None,
    default_k: int = 5,
) -> FastAPI:
    """Build the FastAPI app serving ``predictor`` (and ``index`` for ``/search``).

    Args:
        predictor: a :class:`~frugalvision.runtime.Predictor`.
        index: an :class:`~frugalvision.index.EmbeddingIndex` built with the same model (checked with
            :func:`check_index_matches`), or ``None``.
        max_batch: most images per model call.
        max_wait_ms: how long a lone request waits for others to share its model call.
        limits: request limits (:class:`ServeLimits`).
        default_k: hits per image of ``/search`` when ``k`` is not given.
    """
    limits = limits or ServeLimits()
    if index is not None:
        check_index_matches(predictor, index)
    batcher = MicroBatcher(
        predictor.run, max_batch=max_batch, max_wait_ms=max_wait_ms, max_pending=limits.max_pending
    )
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
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def decode_all(blobs: Sequence[tuple[str, bytes]]) -> np.ndarray:
        pixels = np.empty((len(blobs), pre.height, pre.width, 3), dtype=np.uint8)
        for i, (name, data) in enumerate(blobs):
            if not data:
                raise HTTPException(422, f"{name}: empty file")
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
            pixels[i] = pre.resize_crop(image)
        return pre.normalize(pixels)

    async def run_images(files: list[UploadFile]) -> np.ndarray:
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} images in one request; the limit is {limits.max_files}")
        blobs = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]
        batch = await run_in_threadpool(decode_all, blobs)
        try:
            return await batcher.submit(batch)
        except BatcherFullError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from e

    @app.get("/health", response_model=HealthResponse, summary="Liveness check")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/info", summary="Model, preprocessing, limits and batching statistics")
    async def info() -> dict[str, Any]:
        out: dict[str, Any] = {"frugalvision_version": __version__, "model": predictor.info()}
        out["limits"] = limits.model_dump()
        out["batching"] = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, **batcher.stats.to_dict()}
        if index is not None:
            out["index"] = {"count": len(index), "dim": index.dim, "metric": index.metric, "kind": index.kind}
        return out

    @app.post("/embed", response_model=EmbedResponse, responses=_ERRORS, summary="Embed images")
    async def embed(file: FileField) -> EmbedResponse:
        if predictor.task != "embedding":
            raise HTTPException(400, f"this is a {predictor.task} model; use /predict")
        vectors = await run_images(file)
        return EmbedResponse(
            embeddings=vectors.tolist(),
            dim=int(vectors.shape[1]),
            normalization=predictor.config.normalization,
        )

    @app.post("/predict", response_model=PredictResponse, responses=_ERRORS, summary="Classify / tag images")
    async def predict(file: FileField, top_k: TopK = 5) -> PredictResponse:
        if predictor.task == "embedding":
            raise HTTPException(400, "this is an embedding model: it has no classes; use /embed or /search")
        logits = await run_images(file)
        items = [PredictionItem(**p.to_dict()) for p in predictor.decide(logits, top_k=top_k)]
        return PredictResponse(task=predictor.task, predictions=items)

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS, summary="Nearest indexed images")
    async def search(file: FileField, k: SearchK = None) -> SearchResponse:
        if index is None:
            raise HTTPException(400, "no index loaded; start the service with --index INDEX")
        vectors = await run_images(file)
        if bool((index.info or {}).get("normalized")) and predictor.config.normalization == "none":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        found = await run_in_threadpool(index.search, vectors, k or default_k)
        results = [
            [
                Hit(
                    rank=r + 1,
                    id=int(i),
                    score=float(s),
                    path=index.paths[i] if index.paths else None,
                    label=index.labels[i] if index.labels else None,
                )
                for r, (i, s) in enumerate(zip(ids, scores, strict=True))
                if i >= 0
            ]
            for ids, scores in zip(found.ids.tolist(), found.scores.tolist(), strict=True)
        ]
        return SearchResponse(metric=index.metric, results=results)

    return app


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
