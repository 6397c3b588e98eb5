"""``POST /detect``: boxes equal ``Predictor.detect`` on the same files, and the admission, limit and token rules of
``/embed`` and ``/predict`` hold for it too."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from det_standin import export_tiny
from frugalvision.runtime import Predictor
from frugalvision.serve import ServeLimits, create_app
from helpers import make_bundle


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "det-onnx"
    export_tiny(folder, score_threshold=0.3, iou_threshold=0.6, max_detections=40)
    return folder


@pytest.fixture
def detect_service(detector_folder: Path):
    predictor = Predictor(detector_folder, threads=1)
    limits = ServeLimits(max_upload_mb=0.5, max_pixels=2_000_000, max_files=3)
    app = create_app(predictor, max_batch=4, max_wait_ms=2, limits=limits, token="s3cret")
    with TestClient(app) as client:
        client.headers["Authorization"] = "Bearer s3cret"
        yield client, predictor


def test_detect_returns_the_predictor_boxes_in_original_pixels(detect_service, photos: list) -> None:
    client, predictor = detect_service
    jpegs = [_jpeg(p) for p in photos[:3]]  # 512x512, 400x600, 300x451: one request, three letterboxes
    r = client.post("/detect", files=[("file", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(jpegs)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "detection" and len(body["detections"]) == 3
    expected = predictor.detect(jpegs)
    for got, want, photo in zip(body["detections"], expected, photos[:3], strict=True):
        assert got["names"] == list(want.names) and got["labels"] == want.labels.tolist()
        np.testing.assert_allclose(np.array(got["boxes"]).reshape(-1, 4), want.boxes, atol=1e-3)
        np.testing.assert_allclose(got["scores"], want.scores, atol=1e-6)
        if got["boxes"]:
            boxes = np.array(got["boxes"])
            assert boxes[:, 2].max() <= photo.shape[1] and boxes[:, 3].max() <= photo.shape[0]
    assert sum(len(d["scores"]) for d in body["detections"]) > 0

    r = client.post("/detect?score_threshold=0.7", files={"file": ("a.jpg", jpegs[0], "image/jpeg")})
    assert r.status_code == 200 and all(s >= 0.7 for s in r.json()["detections"][0]["scores"])
    assert client.get("/info").json()["model"]["task"] == "detection"


def test_detect_follows_the_same_rules(detect_service, photos: list) -> None:
    client, _ = detect_service
    jpeg = _jpeg(photos[0])
    assert client.post("/detect", files={"file": ("a.jpg", jpeg, "image/jpeg")},
                       headers={"Authorization": "Bearer wrong"}).status_code == 401  # fmt: skip
    r = client.post("/detect", files=[("file", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(4)])
    assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
    r = client.post("/detect", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 415 and "x.jpg" in r.json()["detail"]
    r = client.post(
        "/detect", files={"file": ("big.jpg", _jpeg(np.zeros((1500, 1500, 3), np.uint8)), "image/jpeg")}
    )
    assert r.status_code == 413
    r = client.post("/detect", files={"file": ("e.jpg", b"", "image/jpeg")})
    assert r.status_code == 422
    r = client.post("/detect?score_threshold=2", files={"file": ("a.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 422
    for endpoint in ("/predict", "/embed"):
        r = client.post(endpoint, files={"file": ("a.jpg", jpeg, "image/jpeg")})
        assert r.status_code == 400 and "/detect" in r.json()["detail"]


def test_detect_on_a_model_without_boxes_is_400(tmp_path: Path, photos: list) -> None:
    make_bundle(tmp_path / "m")
    with TestClient(create_app(Predictor(tmp_path / "m", threads=1))) as client:
        r = client.post("/detect", files={"file": ("a.jpg", _jpeg(photos[0]), "image/jpeg")})
    assert r.status_code == 400 and "finds no boxes" in r.json()["detail"]
