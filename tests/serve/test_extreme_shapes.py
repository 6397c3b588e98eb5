"""The service refuses tiny, very long images with a 413 before resizing them (issue 12, item 1).

Before the fix ``frugalvision serve`` resized the shorter side of a 1 x N PNG to the model's scale size, so a
138-byte 1 x 30000 PNG grew the process by gigabytes. ``bounded_resize`` turns any resize over 4 million pixels
into an error (a 500 before the fix) instead of allocating it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from frugalvision.runtime import Predictor
from frugalvision.serve import ServeLimits, create_app
from helpers import make_bundle


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def client(tmp_path: Path, bounded_resize):
    make_bundle(tmp_path / "m")  # input 24 x 32, crop_pct 0.875: a 1 x N image is resized to 36 x 36 N
    limits = ServeLimits(max_pixels=50_000)
    with TestClient(create_app(Predictor(tmp_path / "m", threads=1), limits=limits, max_wait_ms=2)) as c:
        yield c


def _normal(photos: list) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photos[1][:150, :200]).save(buf, "JPEG")  # 30,000 pixels: under max_pixels
    return buf.getvalue()


@pytest.mark.parametrize(("width", "height"), [(1, 30000), (30000, 1), (1, 2000), (3, 200)])
def test_extreme_aspect_ratio_is_413(client, photos: list, width: int, height: int) -> None:
    data = _png(width, height)
    assert len(data) < 200  # a tiny upload
    r = client.post("/embed", files=[("file", ("long.png", data, "image/png"))])
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    ratio = f"{max(width, height) / min(width, height):.2f}".rstrip("0").rstrip(".")
    assert detail == (
        f"long.png: {width}x{height} pixels has an aspect ratio of {ratio}:1, over the limit of 50:1 "
        "(preprocessing would scale its shorter side up to the model's input size)"
    )
    # with a normal photo in the same request, the whole request is refused; the service keeps serving
    r = client.post("/embed", files=[("file", ("ok.jpg", _normal(photos), "image/jpeg")),
                                     ("file", ("long.png", data, "image/png"))])  # fmt: skip
    assert r.status_code == 413 and r.json()["detail"].startswith("long.png: ")
    r = client.post("/embed", files=[("file", ("ok.jpg", _normal(photos), "image/jpeg"))])
    assert r.status_code == 200 and np.isfinite(r.json()["embeddings"]).all()


def test_resized_size_over_max_pixels_is_413(client) -> None:
    """A 10 x 500 PNG (50:1, allowed) has 5,000 pixels, but the resize would give 36 x 1800 = 64,800: over the
    service's max_pixels (50,000), which holds for the resized image too."""
    r = client.post("/embed", files=[("file", ("thin.png", _png(10, 500), "image/png"))])
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == (
        "thin.png: 10x500 pixels would be resized to 36x1800 = 64,800 pixels, over the limit of 50,000"
    )
    r = client.post("/embed", files=[("file", ("thin.png", _png(12, 500), "image/png"))])  # 43 x 1800
    assert r.status_code == 413 and "over the limit of 50,000" in r.json()["detail"]
    r = client.post("/embed", files=[("file", ("square.png", _png(200, 200), "image/png"))])
    assert r.status_code == 200
