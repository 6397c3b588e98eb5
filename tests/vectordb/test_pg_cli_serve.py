"""``index | search | serve --backend pgvector`` against a real PostgreSQL + pgvector server."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from frugalvision.cli.main import cli
from frugalvision.errors import StoreError
from helpers import make_bundle

# the offline pretrained backbone: search rebuilds the model from the index's record, so it must be deterministic
MODEL = ["-m", "tf_efficientnet_lite0.in1k_offline"]


def _ok(args: list[str]) -> str:
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_index_and_search_cli(tiny_folder: Path, tmp_path: Path, pg_dsn: str, table: str) -> None:
    store = tmp_path / "photos"
    _ok(["embed", str(tiny_folder), "-o", str(store), *MODEL, "-j", "0", "--no-progress"])
    out = _ok(["index", str(store), "--backend", "pgvector", "--dsn", pg_dsn, "--table", table])
    assert f"indexed 12 vectors (ip, pgvector hnsw) as store 'photos' in table '{table}'" in out
    out = _ok(
        ["index", str(store), "--backend", "pgvector", "--dsn", pg_dsn, "--table", table, "--store-id", "b"]
    )
    assert "(24 rows in all)" in out
    _ok(["index", str(store), "-o", str(tmp_path / "faiss")])

    query = tiny_folder / "red" / "red_0.png"
    pg_args = ["--backend", "pgvector", "--dsn", pg_dsn, "--table", table]
    pg = json.loads(
        _ok(
            [
                "search",
                str(query),
                "-k",
                "4",
                "--json",
                *pg_args,
                "--where",
                "store=photos",
                "--ef-search",
                "64",
            ]
        )
    )
    pg = pg[0]["results"]
    ref = json.loads(_ok(["search", str(tmp_path / "faiss"), str(query), "-k", "4", "--json"]))[0]["results"]
    assert [h["path"] for h in pg] == [h["path"] for h in ref]  # the same neighbours as exact faiss search
    np.testing.assert_allclose([h["score"] for h in pg], [h["score"] for h in ref], atol=1e-5)
    assert str(query.resolve()) not in [h["path"] for h in pg]  # the query itself is left out

    where = ["--where", "label=green", "--where", "store=b"]
    green = json.loads(_ok(["search", str(query), "-k", "5", "--json", *pg_args, *where]))[0]["results"]
    assert len(green) == 4 and all(h["label"] == "green" and "/green/" in h["path"] for h in green)
    assert all(h["label"] == "red" for h in pg[:3])  # real features: the other red images come first

    r = CliRunner().invoke(cli, ["search", str(query), "--backend", "pgvector", "--dsn", pg_dsn, "--table", table,
                                 "--where", "colour=red"])  # fmt: skip
    assert r.exit_code == 2 and "unknown filter key 'colour'" in r.output
    r = CliRunner().invoke(cli, ["search", str(query), "--backend", "pgvector"])
    assert r.exit_code == 2 and "needs --dsn" in r.output


def test_cli_errors_are_one_line(tiny_folder: Path, tmp_path: Path, pg_dsn: str, table: str) -> None:
    store = tmp_path / "s"
    _ok(["embed", str(tiny_folder), "-o", str(store), *MODEL, "-j", "0", "--no-progress"])
    _ok(["index", str(store), "--backend", "pgvector", "--dsn", pg_dsn, "--table", table])
    other = tmp_path / "vit"
    _ok(
        [
            "embed",
            str(tiny_folder),
            "-o",
            str(other),
            "-m",
            "test_vit",
            "--no-pretrained",
            "-j",
            "0",
            "--no-progress",
        ]
    )
    r = CliRunner().invoke(
        cli, ["index", str(other), "--backend", "pgvector", "--dsn", pg_dsn, "--table", table]
    )
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert f"Error: table '{table}' holds 1280-d vectors but the store has" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(cli, ["index", str(store), "--backend", "pgvector", "--dsn",
                                 f"postgresql://me:hunter2@127.0.0.1:{port}/db"])  # fmt: skip
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith(
        f"Error: cannot connect to PostgreSQL at postgresql://me:***@127.0.0.1:{port}/db"
    )
    assert "hunter2" not in r.output


def test_serve_searches_a_shared_table(tmp_path: Path, photos: list, pg_dsn: str, table: str) -> None:
    from fastapi.testclient import TestClient

    from frugalvision.index import EmbeddingIndex
    from frugalvision.runtime import Predictor
    from frugalvision.serve import create_app
    from frugalvision.vectordb import PgVectorIndex

    make_bundle(tmp_path / "m")
    predictor = Predictor(tmp_path / "m", threads=1)
    vectors = predictor.embed(photos)
    spec = {"name": "tiny", "pretrained": False, "weights": None, "num_classes": 0}
    info = {"backbone": spec, "normalized": True}
    paths = [f"/srv/photos/{c}/p{i}.jpg" for i, c in enumerate("abcd")]
    PgVectorIndex.add(
        pg_dsn, vectors, paths, [(c,) for c in "abcd"], store_id="s", table=table, info=info
    ).close()
    faiss_index = EmbeddingIndex.build(vectors, paths=paths, labels=list("abcd"), info=info)
    buf = io.BytesIO()
    Image.fromarray(photos[2]).save(buf, "PNG")
    results = []
    for index in (PgVectorIndex.open(pg_dsn, table), PgVectorIndex.open(pg_dsn, table), faiss_index):
        with TestClient(create_app(predictor, index=index, max_batch=4, max_wait_ms=2)) as client:
            r = client.post("/search?k=3", files={"file": ("q.png", buf.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
            results.append(r.json())
            assert client.get("/info").json()["index"]["count"] == 4
    pg_a, pg_b, ref = results
    assert pg_a == pg_b  # two services on one table
    hits, ref_hits = pg_a["results"][0], ref["results"][0]
    assert [(h["label"], h["rank"]) for h in hits] == [(h["label"], h["rank"]) for h in ref_hits]
    assert hits[0]["label"] == "c" and hits[0]["path"] == "c/p2.jpg" and pg_a["metric"] == "ip"
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in ref_hits], atol=1e-5)
    with pytest.raises(StoreError, match="4-d vectors but the model outputs 5-d"):
        PgVectorIndex.add(
            pg_dsn, vectors[:, :4], paths, [("x",)] * 4, store_id="t", table=table + "_4", info=info
        )
        create_app(predictor, index=PgVectorIndex.open(pg_dsn, table + "_4"))
