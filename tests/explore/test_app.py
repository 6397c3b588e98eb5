"""The explorer's HTTP surface without a browser: data arrays, neighbours against a float64 reference, gallery
filters, and the security rules (traversal -> 404, foreign Host -> 400, writes without the token or from another
origin -> 403)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from frugalvision.explore import Collection, ExploreState, LabelManifest, create_app


@pytest.fixture
def client(explore_data, manifest):
    state = ExploreState.build(
        Collection.open(explore_data["index"]), manifest=LabelManifest(manifest), layout="pca"
    )
    with TestClient(create_app(state), base_url="http://127.0.0.1:8765") as c:
        c.state = state  # type: ignore[attr-defined]
        yield c


def test_points_and_colours_have_one_value_per_row(client):
    n = len(client.state.collection)
    xy = np.frombuffer(client.get("/api/points").content, dtype="<f4")
    assert n == 40 and xy.shape == (2 * n,) and np.abs(xy).max() <= 1.0
    codes = np.frombuffer(client.get("/api/color/label").content, dtype="<f4")
    names = client.get("/api/meta").json()["colorings"]["label"]["names"]
    shown = [names[int(c)] if c >= 0 else "" for c in codes]
    assert shown == client.state.labels
    assert client.get("/api/color/nothing").status_code == 404


def test_neighbours_match_a_float64_reference(client, explore_data):
    from frugalvision.embeddings import EmbeddingStore

    store = EmbeddingStore.load(explore_data["store"])
    v = store.vectors.astype(np.float64)
    sims = v @ v.T
    for row in (0, 17, 39):
        hits = client.get(f"/api/neighbours/{row}?k=5").json()["results"]
        ref = [j for j in np.argsort(-sims[row], kind="stable") if j != row][:5]
        assert [h["id"] for h in hits] == ref
        np.testing.assert_allclose([h["score"] for h in hits], sims[row, ref], rtol=0, atol=1e-5)
        assert [h["path"] for h in hits] == [store.paths[j] for j in ref]


def test_gallery_selection_and_filters(client):
    paths = client.state.collection.paths
    res = client.post("/api/items", json={"ids": [3, 1, 2, 30], "limit": 2},
                      headers={"X-Explore-Token": client.state.token}).json()  # fmt: skip
    assert res["total"] == 4 and [it["id"] for it in res["items"]] == [1, 2]
    res = client.post("/api/items", json={"text": "class03", "limit": 100},
                      headers={"X-Explore-Token": client.state.token}).json()  # fmt: skip
    assert sorted(it["id"] for it in res["items"]) == [i for i, p in enumerate(paths) if "class03" in p]
    queue = client.post("/api/items", json={"view": "queue", "limit": 100},
                        headers={"X-Explore-Token": client.state.token}).json()  # fmt: skip
    margins = [
        float(client.state.manifest.get(int(client.state.manifest_rows[it["id"]]), "margin"))
        for it in queue["items"]
    ]
    assert queue["total"] == 40 and margins == sorted(margins)


@pytest.mark.parametrize(
    "url",
    [
        "/image/../../etc/passwd", "/image/%2e%2e/%2e%2e/etc/passwd", "/image/..%2f..%2fetc%2fpasswd",
        "/image//etc/passwd", "/image/%2fetc%2fpasswd", "/thumb/..%2F..%2Finfo.json", "/image/40", "/image/-1",
        "/image/0x1", "/thumb/1e3", "/static/..%2f..%2fapp.py", "/static/../app.py", "/static/index.html",
        "/image/%252e%252e%252fetc", "/api/neighbours/..%2f1",
    ],
)  # fmt: skip
def test_traversal_gets_404(client, url):
    assert client.get(url).status_code == 404


def test_only_referenced_images_are_served(client):
    r = client.get("/image/5")
    assert r.status_code == 200
    with open(client.state.collection.paths[5], "rb") as f:
        assert r.content == f.read()
    assert client.get("/thumb/5").headers["content-type"] == "image/jpeg"


def test_foreign_host_and_cross_origin_writes_are_refused(client, manifest):
    before = manifest.read_bytes()
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    body = {"action": "correct", "ids": [1], "label": "class00"}
    assert client.post("/api/review", json=body).status_code == 403  # no token
    token = {"X-Explore-Token": client.state.token}
    assert (
        client.post("/api/review", json=body, headers={**token, "Origin": "http://evil.example"}).status_code
        == 403
    )
    assert (
        client.post(
            "/api/review", json=body, headers={**token, "Origin": "http://127.0.0.1:9999"}
        ).status_code
        == 403
    )
    assert manifest.read_bytes() == before
    assert (
        client.post(
            "/api/review", json=body, headers={**token, "Origin": "http://127.0.0.1:8765"}
        ).status_code
        == 200
    )
    assert manifest.read_bytes() != before


def test_page_embeds_the_token_and_no_external_resource(client):
    html = client.get("/").text
    assert client.state.token in html
    assert "http://" not in html and "https://" not in html
    js = client.get("/static/explore.js").text
    assert "http://" not in js and "https://" not in js


def test_scattered_classes_against_a_float64_reference(client):
    xy = np.frombuffer(client.get("/api/points").content, dtype="<f4").reshape(-1, 2).astype(np.float64)
    labels = np.array(client.state.labels)
    ref = {}
    for name in set(labels) - {""}:
        pts = xy[labels == name]
        ref[name] = np.sqrt(((pts - pts.mean(0)) ** 2).sum(1)).mean()
    got = client.get("/api/scatter").json()
    assert [r["label"] for r in got] == sorted(ref, key=lambda k: (-ref[k], k))
    np.testing.assert_allclose([r["spread"] for r in got], [ref[r["label"]] for r in got], rtol=1e-6)
    assert [r["count"] for r in got] == [int((labels == r["label"]).sum()) for r in got]
