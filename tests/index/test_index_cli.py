"""`frugalvision index --kind ivfpq|hnsw` on a store: the index is built, records its recall, and loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli
from frugalvision.embeddings import EmbeddingStore
from frugalvision.index import EmbeddingIndex


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16))[rng.integers(0, 6, 1200)] + 0.5 * rng.standard_normal((1200, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    root = tmp_path_factory.mktemp("store") / "store"
    EmbeddingStore(
        vectors=x,
        paths=[f"img/{i}.jpg" for i in range(1200)],
        labels=[(str(i % 3),) for i in range(1200)],
        classes=["0", "1", "2"],
        info={"normalized": True},
    ).save(root)
    return root


@pytest.mark.parametrize(
    ("args", "kind", "files"),
    [
        (["--kind", "hnsw", "--hnsw-m", "8", "--ef-search", "32"], "hnsw", {"index.faiss", "meta.json"}),
        (
            ["--kind", "ivfpq", "--nlist", "8", "--pq-m", "4", "--rerank", "--recall-queries", "100"],
            "ivfpq",
            {"index.faiss", "index.ivfdata", "meta.json", "vectors.npy"},
        ),
    ],
)
def test_index_kinds(store: Path, tmp_path: Path, args: list[str], kind: str, files: set[str]) -> None:
    out = tmp_path / "idx"
    result = CliRunner().invoke(cli, ["index", str(store), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert f"indexed 1200 vectors (ip, {kind}) in {out}; recall@10 " in result.output
    assert {p.name for p in out.iterdir()} == files
    loaded = EmbeddingIndex.load(out)
    assert loaded.kind == kind and loaded.recall is not None
    assert f"{loaded.recall['recall_at_10']:.3f}" in result.output
    assert loaded.search(EmbeddingStore.load(store).vectors[:3], 2).labels[0][0] == "0"


def test_option_of_another_kind_is_one_usage_error(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["index", str(store), "--out", str(tmp_path / "i"), "--kind", "hnsw", "--pq-m", "4"]
    )
    assert result.exit_code == 2 and "pq_m applies to kind='ivfpq' only" in result.output
    assert not (tmp_path / "i").exists()
