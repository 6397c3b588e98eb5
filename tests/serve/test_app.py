"""The HTTP service: each endpoint against the Predictor, and every kind of bad upload answered with a 4xx JSON."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from frugalvision.errors import StoreError
from frugalvision.runtime import Predictor
from frugalvision.serve import ServeLimits, create_app
from helpers import make_bundle


def _encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def embed_service(tmp_path: Path, photos: list):
    from frugalvision.index import EmbeddingIndex

    make_bundle(tmp_path / "m")
    predictor = Predictor(tmp_path / "m", threads=1)
    vectors = predictor.embed(photos)
    spec = {"name": "tiny", "pretrained": False, "weights": None, "num_classes": 0}
    index = EmbeddingIndex.build(vectors, paths=[f"p{i}.jpg" for i in range(len(photos))],
                                 labels=["a", "b", "c", "d"], info={"backbone": spec, "normalized": True})  # fmt: skip
    limits = ServeLimits(max_upload_mb=0.5, max_pixels=2_000_000, max_files=3)
    app = create_app(predictor, index=index, max_batch=4, max_wait_ms=2, limits=limits)
    with TestClient(app) as client:
        yield client, predictor, vectors


def test_embed_search_health_info(embed_service, photos: list) -> None:
    client, predictor, _vectors = embed_service
    assert client.get("/health").json() == {"status": "ok"}
    jpegs = [_encode(p) for p in photos[:3]]
    r = client.post("/embed", files=[("file", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(jpegs)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 5 and body["normalization"] == "l2"
    np.testing.assert_allclose(np.array(body["embeddings"]), predictor.embed([io.BytesIO(b).getvalue() for b in jpegs]),
                               rtol=1e-5, atol=1e-6)  # fmt: skip

    r = client.post("/search?k=2", files={"file": ("q.png", _encode(photos[2], "PNG"), "image/png")})
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["path"] == "p2.jpg" and hits[0]["label"] == "c"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and r.json()["metric"] == "ip"

    r = client.post("/predict", files={"file": ("q.jpg", jpegs[0], "image/jpeg")})
    assert r.status_code == 400 and "embedding model" in r.json()["detail"]

    info = client.get("/info").json()
    assert info["model"]["task"] == "embedding" and info["index"]["count"] == 4
    assert info["limits"]["max_files"] == 3 and info["batching"]["images"] >= 4
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/embed", "/predict", "/search", "/health", "/info"} <= set(paths)
    assert "413" in paths["/embed"]["post"]["responses"]


def test_bad_uploads_get_json_4xx(embed_service, photos: list) -> None:
    client, _, _ = embed_service
    jpeg = _encode(photos[0])
    cases = {
        "oversized body": (413, [("file", ("big.png", os.urandom(600_000), "image/png"))]),
        "too many files": (413, [("file", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(4)]),
        "too many pixels": (
            413,
            [("file", ("wide.png", _encode(np.zeros((1000, 2100, 3), np.uint8), "PNG"), "image/png"))],
        ),
        "decompression bomb": (413, [("file", ("bomb.png", _bomb_png(50_000, 50_000), "image/png"))]),
        "not an image": (415, [("file", ("a.jpg", b"GIF89a? no, plain text", "image/jpeg"))]),
        "format not accepted": (
            415,
            [("file", ("a.ico", _encode(photos[0][:64, :64], "ICO"), "image/x-icon"))],
        ),
        "truncated jpeg": (422, [("file", ("half.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]),
        "empty file": (422, [("file", ("empty.jpg", b"", "image/jpeg"))]),
    }
    for name, (status, files) in cases.items():
        r = client.post("/embed", files=files)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and isinstance(r.json()["detail"], str), name
    r = client.post("/embed")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    r = client.post("/search?k=0", files={"file": ("a.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 422
    assert client.get("/health").status_code == 200  # still serving


def test_streamed_body_over_the_limit(embed_service) -> None:
    client, _, _ = embed_service

    def chunks():
        for _ in range(10):
            yield b"x" * 100_000

    r = client.post("/embed", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_classifier_service(tmp_path: Path, photos: list) -> None:
    make_bundle(tmp_path / "c", task="classification", dim=3, classes=("x", "y", "z"))
    predictor = Predictor(tmp_path / "c")
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict?top_k=2", files={"file": ("a.png", _encode(photos[1], "PNG"), "image/png")})
        assert r.status_code == 200, r.text
        pred = r.json()["predictions"][0]
        expected = predictor.predict(_encode(photos[1], "PNG"), top_k=2)[0]
        assert pred["labels"] == list(expected.labels) and np.allclose(
            pred["scores"], expected.scores, atol=1e-6
        )
        assert (
            client.post(
                "/embed", files={"file": ("a.png", _encode(photos[1], "PNG"), "image/png")}
            ).status_code
            == 400
        )
        assert (
            client.post(
                "/search", files={"file": ("a.png", _encode(photos[1], "PNG"), "image/png")}
            ).status_code
            == 400
        )


def test_index_must_match_the_model(tmp_path: Path) -> None:
    from frugalvision.index import EmbeddingIndex

    make_bundle(tmp_path / "m")
    predictor = Predictor(tmp_path / "m")
    vectors = np.eye(5, dtype=np.float32)
    wrong_dim = EmbeddingIndex.build(np.eye(6, dtype=np.float32), info={"backbone": {"name": "tiny"}})
    with pytest.raises(StoreError, match="6-d vectors"):
        create_app(predictor, index=wrong_dim)
    other = EmbeddingIndex.build(
        vectors, info={"backbone": {"name": "resnet50", "pretrained": True, "weights": None}}
    )
    with pytest.raises(StoreError, match="another model"):
        create_app(predictor, index=other)
    with pytest.warns(UserWarning, match="cannot tell"):
        create_app(predictor, index=EmbeddingIndex.build(vectors))


def test_service_imports_no_torch(tmp_path: Path, photos: list) -> None:
    make_bundle(tmp_path / "m")
    jpeg_path = tmp_path / "q.jpg"
    jpeg_path.write_bytes(_encode(photos[0]))
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        import frugalvision.cli.serve
        from frugalvision.runtime import Predictor
        from frugalvision.serve import create_app
        with TestClient(create_app(Predictor({str(tmp_path / "m")!r}))) as client:
            r = client.post("/embed", files={{"file": ("q.jpg", open({str(jpeg_path)!r}, "rb").read(), "image/jpeg")}})
            assert r.status_code == 200, r.text
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_overload_answers_503(tmp_path: Path, photos: list) -> None:
    make_bundle(tmp_path / "m")
    app = create_app(Predictor(tmp_path / "m"), limits=ServeLimits(max_pending=1))
    jpeg = _encode(photos[0])
    with TestClient(app) as client:
        r = client.post(
            "/embed", files=[("file", ("a.jpg", jpeg, "image/jpeg")), ("file", ("b.jpg", jpeg, "image/jpeg"))]
        )
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        assert client.post("/embed", files={"file": ("a.jpg", jpeg, "image/jpeg")}).status_code == 200
