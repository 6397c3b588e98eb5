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


def test_ivfpq_reads_the_store_memory_mapped_and_equals_the_in_memory_build(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store larger than memory: `index --kind ivfpq` hands build_on_disk a memory-mapped store (read shard by
    shard), and the index equals the one built in memory from the same vectors."""
    import frugalvision.index as index_package

    real, handed = index_package.build_on_disk, []

    def spy(vectors: np.ndarray, directory: Path, **options: object) -> EmbeddingIndex:
        handed.append(type(vectors))
        return real(vectors, directory, **options)

    monkeypatch.setattr(index_package, "build_on_disk", spy)
    out = tmp_path / "idx"
    args = ["index", str(store), "--out", str(out), "--kind", "ivfpq", "--nlist", "8", "--pq-m", "4"]
    result = CliRunner().invoke(cli, [*args, "--recall-queries", "100"])
    assert result.exit_code == 0, result.output
    assert handed == [np.memmap]
    x = EmbeddingStore.load(store).vectors
    in_memory = EmbeddingIndex.build(x, kind="ivfpq", nlist=8, pq_m=4, recall_queries=100)
    built = EmbeddingIndex.load(out)
    assert built.recall == in_memory.recall
    a, b = built.search(x[:100], 10), in_memory.search(x[:100], 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    hnsw_only = CliRunner().invoke(cli, [*args, "--hnsw-m", "8"])
    assert hnsw_only.exit_code == 2 and "hnsw_m applies to kind='hnsw' only" in hnsw_only.output


def test_search_settings_default_or_given(store: Path, tmp_path: Path) -> None:
    """Left out, the search settings are the library's defaults for each k (null in meta.json) and the command says
    which were used; given, they are kept."""
    out = tmp_path / "ivf"
    args = ["index", str(store), "--out", str(out), "--kind", "ivf", "--nlist", "20", "--rerank"]
    result = CliRunner().invoke(cli, [*args, "--recall-queries", "100"])
    assert result.exit_code == 0, result.output
    assert "on 100 queries (nprobe 16, rerank_factor 20)" in result.output
    loaded = EmbeddingIndex.load(out)
    assert (loaded.nprobe, loaded.rerank_factor) == (None, None)
    result = CliRunner().invoke(cli, [*args, "--nprobe", "3", "--rerank-factor", "2"])
    assert result.exit_code == 0 and "(nprobe 3, rerank_factor 2)" in result.output, result.output
    loaded = EmbeddingIndex.load(out)
    assert (loaded.nprobe, loaded.rerank_factor) == (3, 2) and loaded.recall["nprobe"] == 3
    out = tmp_path / "hnsw"
    hnsw = [
        "index",
        str(store),
        "--out",
        str(out),
        "--kind",
        "hnsw",
        "--hnsw-m",
        "8",
        "--ef-construction",
        "24",
    ]
    result = CliRunner().invoke(cli, hnsw)
    assert result.exit_code == 0 and "(ef_search 100)" in result.output, result.output
    assert EmbeddingIndex.load(out).params == {"hnsw_m": 8, "ef_construction": 24}
    lone = CliRunner().invoke(
        cli, ["index", str(store), "--out", str(tmp_path / "x"), "--rerank-factor", "3"]
    )
    assert lone.exit_code == 2 and "--rerank-factor applies with --rerank" in lone.output
