"""The explorer's web app (FastAPI): the page, its data as compact binary arrays, images, search and review.

Routes (``N`` rows; ids are row numbers of the store or index):

* ``GET /``: the page (``static/index.html``, our own WebGL map in ``static/explore.js``: no CDN, works offline);
* ``GET /api/meta``: count, layout method, colourings and their class names, review state;
* ``GET /api/points``: ``2N`` float32 (little-endian) map positions ``x0, y0, x1, ...`` in ``[-1, 1]``;
* ``GET /api/color/{name}``: ``N`` float32 per colouring (a class code, ``-1`` none; or a score, ``NaN`` none);
* ``POST /api/items``: a gallery page of a selection / view, filtered by label, score range and path text;
* ``GET /api/scatter``: the classes whose images scatter most on the map (:meth:`ExploreState.scatter`);
* ``GET /api/neighbours/{id}?k=``: the ``k`` nearest rows (itself left out), as ``frugalvision search`` lists them;
* ``POST /api/search``: an uploaded photo's neighbours (embedded by :class:`~frugalvision.bundle.QueryEmbedder`,
  the code of ``frugalvision search``);
* ``POST /api/review`` / ``POST /api/undo``: decisions on the label manifest (:mod:`frugalvision.explore.review`);
* ``GET /thumb/{id}``, ``GET /image/{id}``: a row's thumbnail / file.

Security: images are addressed by row id only, so nothing outside the store's files can be named (``../``,
absolute or ``%2e%2e`` paths are not ids: 404); the ``Host`` header must be a local name (DNS rebinding gets 400,
Starlette's ``TrustedHostMiddleware``); every ``POST`` needs the page's token in ``X-Explore-Token`` and, when the
browser sends an ``Origin``, one equal to the page's own (403 otherwise), so another site cannot write through the
user's browser; the only file written is the manifest given (and its change log) plus the caches.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from frugalvision.errors import FrugalVisionError
from frugalvision.explore.collection import Collection
from frugalvision.explore.review import LabelManifest

__all__ = ["LOCAL_HOSTS", "MAX_UPLOAD_BYTES", "ExploreState", "create_app"]

#: Host names the explorer answers to (plus the one it is bound to).
LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1", "[::1]")
MAX_UPLOAD_BYTES = 32 << 20
_STATIC = {"explore.js": "text/javascript", "explore.css": "text/css"}
_ROW = re.compile(r"[0-9]{1,12}")
_PAGE_MAX = 500


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Class codes (float32, ``-1`` for ``""``) and the sorted class names."""
    names = sorted({v for v in values if v})
    where = {n: i for i, n in enumerate(names)}
    return np.array([where.get(v, -1) for v in values], dtype=np.float32), names


@dataclass
class ExploreState:
    """Everything the routes read, computed once at start (the map layout is cached on disk)."""

    collection: Collection
    xy: np.ndarray  # (N, 2) float32
    layout: str
    labels: list[str]  # shown label of each row (the manifest's where it lists the row)
    predictions: list[str] | None
    ood: np.ndarray | None  # (N,) float64, higher = more out-of-distribution
    groups: np.ndarray | None  # (N,) int64 duplicate group, -1 none
    manifest: LabelManifest | None
    manifest_rows: np.ndarray | None  # (N,) int64 manifest row of each row, -1 unlisted
    token: str

    @classmethod
    def build(
        cls,
        collection: Collection,
        *,
        manifest: LabelManifest | None = None,
        ood: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        layout: str = "auto",
    ) -> ExploreState:
        xy, used = collection.layout(layout)
        n = len(collection)
        for name, arr in (("ood", ood), ("groups", groups)):
            if arr is not None and arr.shape != (n,):
                raise ValueError(f"{name} must have one value per row ({n}), got shape {arr.shape}")
        rows = None
        predictions = None
        if manifest is not None:
            rows = np.array([manifest.row_of(p) for p in collection.paths], dtype=np.int64)
            if not (rows >= 0).any():
                raise FrugalVisionError(
                    f"no image of {collection.source} is listed in {manifest.path} (paths are compared as files, "
                    "relative ones against the manifest's folder)"
                )
            if "prediction" in manifest.columns:
                predictions = [manifest.get(r, "prediction") if r >= 0 else "" for r in rows.tolist()]
        state = cls(collection, xy, used, list(collection.labels), predictions, ood, groups, manifest, rows,
                    secrets.token_urlsafe(24))  # fmt: skip
        state.refresh_labels()
        return state

    def refresh_labels(self) -> None:
        if self.manifest is None or self.manifest_rows is None:
            return
        for i, r in enumerate(self.manifest_rows.tolist()):
            if r >= 0:
                self.labels[i] = self.manifest.get(r, "label")

    # -------------------------------------------------------------------------------------- colourings
    def colorings(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"label": {"kind": "category", "names": _codes(self.labels)[1]}}
        if self.predictions is not None:
            out["prediction"] = {"kind": "category", "names": _codes(self.predictions)[1]}
        if self.ood is not None:
            out["ood"] = {"kind": "score", "min": float(self.ood.min()), "max": float(self.ood.max())}
        if self.groups is not None:
            out["duplicates"] = {
                "kind": "category",
                "names": [str(g) for g in range(int(self.groups.max()) + 1)],
            }
        return out

    def color(self, name: str) -> np.ndarray | None:
        if name == "label":
            return _codes(self.labels)[0]
        if name == "prediction" and self.predictions is not None:
            return _codes(self.predictions)[0]
        if name == "ood" and self.ood is not None:
            return self.ood.astype(np.float32)
        if name == "duplicates" and self.groups is not None:
            return self.groups.astype(np.float32)
        return None

    def scatter(self) -> list[dict[str, Any]]:
        """Classes whose images scatter on the map, most scattered first: for each label with 2+ rows, the mean
        map distance of its rows to their centroid, ``spread_c = mean_{i in c} ||xy_i - mean_{j in c} xy_j||_2``
        (map units: the map spans ``[-1, 1]``)."""
        codes, names = _codes(self.labels)
        out = []
        for c, name in enumerate(names):
            pts = self.xy[codes == c].astype(np.float64)
            if len(pts) >= 2:
                spread = float(np.linalg.norm(pts - pts.mean(0), axis=1).mean())
                out.append({"label": name, "count": len(pts), "spread": spread})
        return sorted(out, key=lambda r: (-r["spread"], r["label"]))

    # ----------------------------------------------------------------------------------------- gallery
    def item(self, i: int) -> dict[str, Any]:
        r = int(self.manifest_rows[i]) if self.manifest_rows is not None else -1
        return {
            "id": i,
            "path": self.collection.paths[i],
            "label": self.labels[i],
            "prediction": self.predictions[i] if self.predictions is not None else None,
            "ood": None if self.ood is None else float(self.ood[i]),
            "group": None if self.groups is None else int(self.groups[i]),
            "review": self.manifest.get(r, "review") if self.manifest is not None and r >= 0 else None,
            "reviewable": r >= 0,
        }

    def view_rows(self, view: str) -> np.ndarray:
        n = len(self.collection)
        if view == "queue":
            if self.manifest is None or self.manifest_rows is None:
                raise ValueError("the review queue needs --labels MANIFEST")
            where = {int(r): i for i, r in enumerate(self.manifest_rows.tolist()) if r >= 0}
            return np.array([where[r] for r in self.manifest.queue() if r in where], dtype=np.int64)
        if view == "ood":
            if self.ood is None:
                raise ValueError("the OOD view needs --ood DETECTOR")
            return np.argsort(-self.ood, kind="stable")
        if view == "duplicates":
            if self.groups is None:
                raise ValueError("the duplicates view needs --duplicates")
            inside = np.flatnonzero(self.groups >= 0)
            return inside[np.argsort(self.groups[inside], kind="stable")]
        if view != "all":
            raise ValueError(f"unknown view {view!r}; expected all, queue, ood or duplicates")
        return np.arange(n)

    def select(self, body: dict[str, Any]) -> dict[str, Any]:
        rows = self.view_rows(str(body.get("view") or "all"))
        ids = body.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise ValueError("ids must be a list of row numbers")
            chosen = np.zeros(len(self.collection), dtype=bool)
            chosen[[i for i in ids if 0 <= i < len(self.collection)]] = True
            rows = rows[chosen[rows]]
        label = body.get("label")
        if label:
            rows = rows[[self.labels[i] == label for i in rows.tolist()]] if len(rows) else rows
        if self.ood is not None:
            for key, keep in (("min_score", np.greater_equal), ("max_score", np.less_equal)):
                value = body.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    rows = rows[keep(self.ood[rows], value)]
        text = str(body.get("text") or "").lower()
        if text:
            rows = (
                rows[[text in self.collection.paths[i].lower() for i in rows.tolist()]] if len(rows) else rows
            )
        offset = max(0, int(body.get("offset") or 0))
        limit = min(_PAGE_MAX, max(1, int(body.get("limit") or 60)))
        page = rows[offset : offset + limit].tolist()
        return {"total": len(rows), "offset": offset, "items": [self.item(i) for i in page]}


def _row(text: str, count: int) -> int | None:
    if not _ROW.fullmatch(text):
        return None
    row = int(text)
    return row if row < count else None


def _not_found() -> JSONResponse:
    return JSONResponse({"error": "not found"}, status_code=404)


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    state: ExploreState, *, allowed_hosts: Sequence[str] = LOCAL_HOSTS, device: str = "cpu"
) -> FastAPI:
    """The explorer app over ``state``; ``allowed_hosts``: the ``Host`` names it answers to."""
    app = FastAPI(title="frugalvision explore", docs_url=None, redoc_url=None, openapi_url=None)
    collection = state.collection
    n = len(collection)
    page = (
        resources.files("frugalvision.explore")
        .joinpath("static")
        .joinpath("index.html")
        .read_text(encoding="utf-8")
    )
    embedder: list[
        Any
    ] = []  # the query embedder, built on the first upload (it loads torch and the backbone)

    @app.middleware("http")
    async def guard_writes(request: Request, call_next: Any) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not secrets.compare_digest(request.headers.get("x-explore-token", ""), state.token):
                return _bad("missing or wrong X-Explore-Token: writes come from the explorer's own page", 403)
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
                return _bad(f"cross-origin request from {origin} refused", 403)
        return await call_next(request)

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(FrugalVisionError)
    @app.exception_handler(ValueError)
    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        return _bad(str(exc))

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        title = f"{collection.source.name} ({n} images)"
        html = page.replace("{{TOKEN}}", state.token).replace("{{TITLE}}", _escape(title))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            return _not_found()
        text = (
            resources.files("frugalvision.explore")
            .joinpath("static")
            .joinpath(name)
            .read_text(encoding="utf-8")
        )
        return Response(text, media_type=_STATIC[name])

    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        return {
            "count": n,
            "source": str(collection.source),
            "layout": state.layout,
            "metric": collection.index.metric,
            "colorings": state.colorings(),
            "review": state.manifest is not None,
            "manifest": str(state.manifest.path) if state.manifest is not None else None,
            "can_undo": state.manifest is not None and state.manifest.can_undo(),
        }

    @app.get("/api/scatter")
    def scatter() -> list[dict[str, Any]]:
        return state.scatter()

    @app.get("/api/points")
    def points() -> Response:
        return Response(state.xy.astype("<f4").tobytes(), media_type="application/octet-stream")

    @app.get("/api/color/{name}")
    def color(name: str) -> Response:
        values = state.color(name)
        if values is None:
            return _not_found()
        return Response(values.astype("<f4").tobytes(), media_type="application/octet-stream")

    @app.post("/api/items")
    async def items(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return state.select(body)

    @app.get("/api/neighbours/{row}")
    def neighbours(row: str, k: int = 10) -> Any:
        i = _row(row, n)
        if i is None:
            return _not_found()
        return {"query": state.item(i), "results": collection.neighbours(i, max(1, min(k, 100)))}

    @app.post("/api/search")
    async def search(file: UploadFile, k: int = 10) -> Any:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return _bad(f"the photo is larger than {MAX_UPLOAD_BYTES >> 20} MiB", 413)
        if not embedder:
            from frugalvision.bundle import QueryEmbedder

            embedder.append(QueryEmbedder(collection.info, device))
        fd, tmp = tempfile.mkstemp(prefix="frugalvision-explore-", suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            vectors = embedder[0]([tmp])
        finally:
            os.unlink(tmp)
        found = collection.index.search(vectors, k=max(1, min(k, 100)))
        return {"query": file.filename, "results": collection.hits(found.ids[0], found.scores[0])}

    @app.post("/api/review")
    async def review(request: Request) -> Any:
        if state.manifest is None or state.manifest_rows is None:
            return _bad("start the explorer with --labels MANIFEST to review labels")
        body = await request.json()
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < n for i in ids):
            raise ValueError(f"ids must be a list of row numbers in [0, {n})")
        rows = [int(state.manifest_rows[i]) for i in ids]
        listed = [r for r in rows if r >= 0]
        entry = state.manifest.apply(str(body.get("action")), listed, body.get("label"))
        state.refresh_labels()
        return {"changed": len(entry["rows"]), "skipped": len(rows) - len(listed), "id": entry["id"],
                "can_undo": state.manifest.can_undo()}  # fmt: skip

    @app.post("/api/undo")
    def undo() -> Any:
        if state.manifest is None:
            return _bad("start the explorer with --labels MANIFEST to review labels")
        entry = state.manifest.undo()
        state.refresh_labels()
        return {"undone": None if entry is None else entry["undoes"], "can_undo": state.manifest.can_undo()}

    def row_file(row: str, find: Callable[[int], Path | None], **kwargs: Any) -> Response:
        """The file ``find`` gives for row ``row`` (404 for a bad row or a missing file): never a path from the URL."""
        i = _row(row, n)
        path = find(i) if i is not None else None
        return _not_found() if path is None else FileResponse(path, **kwargs)

    @app.get("/thumb/{row}")
    def thumb(row: str) -> Response:
        return row_file(
            row, collection.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/image/{row}")
    def image(row: str) -> Response:
        return row_file(row, collection.image_file)

    return app


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
