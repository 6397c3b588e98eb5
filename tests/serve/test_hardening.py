"""The service under hostile or heavy use: admission before decoding, pixel budget, token, Host, paths, 500s.

Tests that need a real HTTP server (keep-alive, disconnects, slow bodies) run uvicorn on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import frugalvision.serve.app as app_module
from frugalvision.runtime import Predictor
from frugalvision.serve import ServeLimits, create_app, display_paths
from helpers import live_server, make_bundle


def _encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def _files(*names: str, data: bytes) -> list:
    return [("file", (name, data, "image/jpeg")) for name in names]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class _Gate:
    """Wraps ``Predictor.run``: records each call's batch size and holds it until :meth:`open`."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray]) -> None:
        self.run, self.calls, self.event = run, [], threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(int(x.shape[0]))
        self.event.wait(20)
        return self.run(x)

    def open(self) -> None:
        self.event.set()


@pytest.fixture
def predictor(tmp_path: Path) -> Predictor:
    make_bundle(tmp_path / "m")
    return Predictor(tmp_path / "m", threads=1)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the images the service decoded."""
    names: list[str] = []
    real = app_module.decode_image

    def counting(data, **kwargs):  # type: ignore[no-untyped-def]
        names.append(kwargs.get("name"))
        return real(data, **kwargs)

    monkeypatch.setattr(app_module, "decode_image", counting)
    return names


# ------------------------------------------------------------------------------------------------ overload
def test_busy_service_refuses_before_decoding(predictor: Predictor, photos: list, decoded: list[str]) -> None:
    gate = _Gate(predictor.run)
    predictor.run = gate  # type: ignore[method-assign]
    app = create_app(predictor, max_wait_ms=0, limits=ServeLimits(max_pending=3))
    jpeg = _encode(photos[0])

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/embed", files=_files("a.jpg", "b.jpg", data=jpeg)))
            while not gate.calls:  # a and b are in the model: 2 of 3 images in progress
                await asyncio.sleep(0.01)
            assert decoded == ["a.jpg", "b.jpg"]
            r = await client.post("/embed", files=_files("c.jpg", "d.jpg", data=jpeg))  # 2 + 2 > 3
            assert (
                r.status_code == 503 and "busy" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
            )
            assert decoded == ["a.jpg", "b.jpg"]  # c and d were never decoded
            third = asyncio.create_task(client.post("/embed", files=_files("e.jpg", data=jpeg)))
            while app.state.batcher.pending < 3 or "e.jpg" not in decoded:
                await asyncio.sleep(0.01)
            r = await client.post("/embed", files=_files("f.jpg", data=jpeg))  # full: refused before the body
            assert r.status_code == 503 and r.headers["retry-after"]
            assert decoded == ["a.jpg", "b.jpg", "e.jpg"]  # c, d and f were never decoded
            gate.open()
            assert (await first).status_code == 200 and (await third).status_code == 200
            r = await client.post("/embed", files=_files("g.jpg", data=jpeg))
            assert r.status_code == 200 and decoded[-1] == "g.jpg" and app.state.batcher.pending == 0
        await app.state.batcher.close()

    asyncio.run(main())


def test_pixels_per_request_budget(predictor: Predictor, photos: list, decoded: list[str]) -> None:
    png = _encode(photos[0], "PNG")  # 512 x 512 = 262,144 pixels
    limits = ServeLimits(max_request_pixels=500_000, max_pixels=1_000_000)
    with TestClient(create_app(predictor, limits=limits)) as client:
        r = client.post("/embed", files=_files("a.png", "b.png", data=png))
        assert r.status_code == 413 and "524,288 pixels" in r.json()["detail"], r.text
        assert decoded == []  # refused from the headers, before decoding
        assert client.post("/embed", files=_files("a.png", data=png)).status_code == 200


def test_disconnected_client_work_is_cancelled(
    predictor: Predictor, photos: list, decoded: list[str]
) -> None:
    gate = _Gate(predictor.run)
    predictor.run = gate  # type: ignore[method-assign]
    app = create_app(predictor, max_batch=1, max_wait_ms=0)
    jpeg = _encode(photos[0])
    with live_server(app) as base:
        answers: list[int] = []
        first = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{base}/embed", files=_files("a.jpg", data=jpeg)).status_code
            )
        )
        first.start()
        assert _wait_for(lambda: gate.calls == [1])  # a is in the model
        body = httpx.Request("POST", f"{base}/embed", files=_files("b.jpg", "c.jpg", data=jpeg))
        payload = body.read()
        head = (f"POST /embed HTTP/1.1\r\nHost: {base[7:]}\r\nContent-Type: {body.headers['content-type']}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
            sock.sendall(head + payload)
            assert _wait_for(lambda: "c.jpg" in decoded)
            time.sleep(0.5)  # b and c decoded and queued behind a
        time.sleep(0.5)  # the client is gone
        gate.open()
        first.join(timeout=20)
        assert answers == [200]
        time.sleep(0.5)
        assert gate.calls == [1]  # b and c were never computed
        assert app.state.batcher.pending == 0  # and their room was given back


def test_slow_body_gets_408(predictor: Predictor) -> None:
    app = create_app(predictor, limits=ServeLimits(read_timeout_s=0.5))
    with (
        live_server(app) as base,
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock,
    ):
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 1000\r\n\r\n--x\r\n")  # fmt: skip
        sock.settimeout(5)
        start = time.monotonic()
        answer = b""
        while chunk := sock.recv(
            4096
        ):  # the answer (headers and body may come apart), then the server closes
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within 0.5 s" in answer and time.monotonic() - start < 4


def test_keep_alive_connection_survives_a_500(predictor: Predictor, photos: list) -> None:
    def broken(_: np.ndarray) -> np.ndarray:
        raise RuntimeError("a bug")

    predictor.run = broken  # type: ignore[method-assign]
    app = create_app(predictor)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=20) as client:
        r = client.post("/embed", files=_files("a.jpg", data=_encode(photos[0])))
        assert r.status_code == 500 and r.json() == {"detail": "internal error: RuntimeError"}
        assert "close" not in r.headers.get("connection", "")
        local = r.extensions["network_stream"].get_extra_info("client_addr")
        again = client.get("/health")
        assert again.status_code == 200
        assert again.extensions["network_stream"].get_extra_info("client_addr") == local  # same connection


# ------------------------------------------------------------------------------------------ token and Host
def test_bearer_token(predictor: Predictor, photos: list) -> None:
    with TestClient(create_app(predictor, token="s3cret-token")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            r = client.get("/info", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert "Bearer" in r.json()["detail"]
        ok = {"Authorization": "Bearer s3cret-token"}
        assert client.get("/info", headers=ok).status_code == 200
        assert client.get("/info", headers={"Authorization": "bearer s3cret-token"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/openapi.json").status_code == 200
        jpeg = _encode(photos[0])
        assert client.post("/embed", files=_files("a.jpg", data=jpeg)).status_code == 401
        assert client.post("/embed", files=_files("a.jpg", data=jpeg), headers=ok).status_code == 200
        # refused before the body is looked at: an oversized body without the token is a 401, not a 413
        r = client.post("/embed", content=b"x" * 100, headers={"Content-Length": str(10**12)})
        assert r.status_code == 401
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())
    with pytest.raises(ValueError, match="token"):
        create_app(predictor, token="")


def test_host_allow_list(predictor: Predictor) -> None:
    app = create_app(predictor, allowed_hosts=["localhost", "127.0.0.1", "[::1]"])
    with TestClient(app, base_url="http://localhost:8000") as client:
        for host in ("localhost:8000", "LOCALHOST", "127.0.0.1:8000", "[::1]:8000", "[::1]"):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.2", "local host",
                     "localhost:notaport", "user@localhost"):  # fmt: skip
            r = client.get("/health", headers={"Host": host})
            assert r.status_code == 400 and "Host" in r.json()["detail"], host
    with TestClient(create_app(predictor, allowed_hosts=["*"])) as client:
        assert client.get("/health", headers={"Host": "anything.example"}).status_code == 200


# --------------------------------------------------------------------------------------------------- paths
def test_search_shows_relative_paths_and_ids(tmp_path: Path, predictor: Predictor, photos: list) -> None:
    from frugalvision.index import EmbeddingIndex

    root = tmp_path / "srv" / "photos"
    recorded = [str(root / cls / f"{i}.jpg") for i, cls in enumerate(["cat", "cat", "dog", "owl"])]
    assert all(os.path.isabs(p) for p in recorded)
    spec = {"name": "tiny", "pretrained": False, "weights": None, "num_classes": 0}
    index = EmbeddingIndex.build(predictor.embed(photos), paths=recorded, labels=["a", "b", "c", "d"],
                                 info={"backbone": spec, "normalized": True})  # fmt: skip
    query = {"file": ("q.png", _encode(photos[2], "PNG"), "image/png")}
    expected = {"relative": ["cat/0.jpg", "cat/1.jpg", "dog/2.jpg", "owl/3.jpg"],
                "name": ["0.jpg", "1.jpg", "2.jpg", "3.jpg"], "full": recorded, "none": [None] * 4}  # fmt: skip
    for mode, shown in expected.items():
        kwargs = {} if mode == "relative" else {"paths": mode}
        with TestClient(create_app(predictor, index=index, **kwargs)) as client:
            hits = client.post("/search?k=4", files=query).json()["results"][0]
        assert sorted(h["id"] for h in hits) == [0, 1, 2, 3] and hits[0]["id"] == 2, mode
        assert [h["path"] for h in hits] == [shown[h["id"]] for h in hits], mode
        if mode != "full":
            assert not any(str(tmp_path) in (h["path"] or "") for h in hits), mode
    with pytest.raises(ValueError, match="paths mode"):
        create_app(predictor, index=index, paths="absolute")


@pytest.mark.parametrize(
    ("paths", "shown"),
    [
        (["/srv/data/a/1.jpg", "/srv/data/b/2.jpg"], ["a/1.jpg", "b/2.jpg"]),
        (["/srv/data/a/1.jpg", "/srv/data/a/2.jpg"], ["1.jpg", "2.jpg"]),
        (["/srv/data/x/../a/1.jpg", "/srv/data/b/2.jpg"], ["a/1.jpg", "b/2.jpg"]),
        (["/home/u/1.jpg", "/mnt/2.jpg"], ["1.jpg", "2.jpg"]),  # only "/" in common: file names
        (["/srv/data/1.jpg"], ["1.jpg"]),  # a lone image
        (["/srv/a/1.jpg", "rel/2.jpg"], ["1.jpg", "2.jpg"]),  # absolute and relative mixed
        (["cat/1.jpg", "dog/2.jpg"], ["cat/1.jpg", "dog/2.jpg"]),  # relative, no common folder: as recorded
        (["../../etc/1.jpg", "../x/2.jpg"], ["1.jpg", "2.jpg"]),
        (["photos/cat/1.jpg", "photos/dog/2.jpg"], ["cat/1.jpg", "dog/2.jpg"]),
        (["C:\\data\\cat\\1.jpg", "C:\\data\\dog\\2.jpg"], ["cat/1.jpg", "dog/2.jpg"]),
    ],
)
def test_display_paths(paths: list[str], shown: list[str]) -> None:
    assert display_paths(paths) == shown
    assert display_paths(paths, "full") == paths and display_paths(paths, "none") is None
    assert all(".." not in s.split("/") and not os.path.isabs(s) for s in display_paths(paths) or [])


def test_no_route_serves_files(predictor: Predictor, tmp_path: Path) -> None:
    """The service returns strings recorded in the index, never a file: any route that would must be reviewed."""
    from fastapi.routing import APIRoute

    app = create_app(predictor)
    docs = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    api = {r.path for r in app.routes if isinstance(r, APIRoute)}
    assert api == {"/health", "/info", "/embed", "/predict", "/search", "/detect"}
    assert {
        getattr(r, "path", None) for r in app.routes
    } == api | docs  # no Mount (StaticFiles), no file route
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    with TestClient(app) as client:
        for path in (f"/{secret}", "/../../../../etc/passwd", "/static/secret.txt", "/files" + str(secret)):
            r = client.get(path)
            assert r.status_code == 404 and "do not serve" not in r.text, path
