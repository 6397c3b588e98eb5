"""IVF-PQ (in memory and built on disk shard by shard) and HNSW indexes: save/load/search, recorded recall,
exact re-ranking, and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from frugalvision.errors import StoreError
from frugalvision.index import EmbeddingIndex, build_on_disk, default_pq_m


def unit_clusters(n: int, dim: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_neighbours(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest rows of x[rows] by float64 inner product, each row itself left out: the reference."""
    sims = x[rows].astype(np.float64) @ x.astype(np.float64).T
    sims[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return (
        float(np.mean([len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True)]))
        / (exact.shape[1])
    )


PQ = {"kind": "ivfpq", "nlist": 8, "pq_m": 4, "pq_nbits": 6}  # small enough to train in well under a second


@pytest.mark.parametrize(("kind", "options"), [("ivfpq", PQ), ("hnsw", {"kind": "hnsw", "hnsw_m": 8})])
def test_save_load_search_round_trip(tmp_path: Path, kind: str, options: dict) -> None:
    x = unit_clusters(1500, 16, 6, 0)
    paths = [f"img/{i}.jpg" for i in range(len(x))]
    index = EmbeddingIndex.build(x, paths=paths, labels=[str(i % 6) for i in range(len(x))], **options)
    assert index.kind == kind and len(index) == 1500 and index.recall is not None
    before = index.search(x[:40], 5, exclude_ids=np.arange(40))
    saved = index.save(tmp_path / "idx")
    files = sorted(os.listdir(saved))
    assert files == (
        ["index.faiss", "index.ivfdata", "meta.json"] if kind == "ivfpq" else ["index.faiss", "meta.json"]
    )
    assert sorted(os.listdir(tmp_path)) == ["idx"], "no temporary folder may be left behind"
    loaded = EmbeddingIndex.load(saved)
    assert (loaded.kind, loaded.params, loaded.recall, loaded.paths) == (
        kind,
        index.params,
        index.recall,
        paths,
    )
    after = loaded.search(x[:40], 5, exclude_ids=np.arange(40))
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    # the saved index moved to another folder still finds its lists (looked up beside index.faiss)
    os.replace(saved, tmp_path / "moved")
    np.testing.assert_array_equal(
        EmbeddingIndex.load(tmp_path / "moved").search(x[:40], 5).ids, index.search(x[:40], 5).ids
    )


def test_loaded_ivfpq_index_is_saved_again(tmp_path: Path) -> None:
    x = unit_clusters(1000, 16, 6, 1)
    EmbeddingIndex.build(x, **PQ).save(tmp_path / "a")
    loaded = EmbeddingIndex.load(tmp_path / "a")  # its lists are memory-mapped from a/index.ivfdata
    loaded.save(tmp_path / "a")  # over its own folder
    loaded.save(tmp_path / "b")
    for name in ("a", "b"):
        np.testing.assert_array_equal(
            EmbeddingIndex.load(tmp_path / name).search(x[:20], 4).ids, loaded.search(x[:20], 4).ids
        )


def test_recorded_recall_is_recall_at_10_against_float64_brute_force() -> None:
    x = unit_clusters(600, 16, 4, 2)
    # as many queries as vectors: every row is a query, so the reference needs no knowledge of the draw
    index = EmbeddingIndex.build(x, recall_queries=600, **PQ)
    found = index.search(x, 10, exclude_ids=np.arange(600)).ids
    expected = recall(found, exact_neighbours(x, np.arange(600), 10))
    assert index.recall is not None and index.recall["queries"] == 600
    assert index.recall["recall_at_10"] == pytest.approx(expected, abs=2e-3)  # ties of equal scores aside
    assert 0.2 < expected < 0.95, "a 4-byte code must lose some neighbours, else the test shows nothing"
    # HNSW with a wide search finds them all; a flat index records nothing
    hnsw = EmbeddingIndex.build(x, kind="hnsw", ef_search=600, recall_queries=600)
    assert hnsw.recall is not None and hnsw.recall["recall_at_10"] == pytest.approx(1.0, abs=2e-3)
    assert EmbeddingIndex.build(x, kind="flat").recall is None
    assert EmbeddingIndex.build(x, recall_queries=0, **PQ).recall is None


def test_reranking_improves_recall_and_gives_exact_scores(tmp_path: Path) -> None:
    x = unit_clusters(2000, 16, 6, 3)
    rows = np.arange(0, 2000, 7)
    exact = exact_neighbours(x, rows, 10)
    plain = EmbeddingIndex.build(x, recall_queries=0, **PQ)
    reranked = EmbeddingIndex.build(x, recall_queries=0, rerank=True, rerank_factor=8, **PQ)
    r_plain = recall(plain.search(x[rows], 10, exclude_ids=rows).ids, exact)
    hits = reranked.search(x[rows], 10, exclude_ids=rows)
    r_rerank = recall(hits.ids, exact)
    assert r_rerank > r_plain + 0.2, (r_plain, r_rerank)
    reference = np.einsum("qd,qkd->qk", x[rows].astype(np.float64), x[hits.ids].astype(np.float64))
    np.testing.assert_allclose(hits.scores, reference, rtol=0, atol=1e-5)
    assert np.all(np.diff(hits.scores, axis=1) <= 0)
    # saved: the exact vectors go to vectors.npy, memory-mapped at load
    loaded = EmbeddingIndex.load(reranked.save(tmp_path / "idx"))
    assert "vectors.npy" in os.listdir(tmp_path / "idx") and isinstance(loaded._vectors, np.memmap)
    np.testing.assert_array_equal(loaded.search(x[rows], 10, exclude_ids=rows).ids, hits.ids)
    loaded.rerank_factor = 1  # switched off: the codes' own order
    np.testing.assert_array_equal(loaded.search(x[rows], 10).ids, plain.search(x[rows], 10).ids)


def test_build_on_disk_shard_by_shard_equals_the_in_memory_build(tmp_path: Path) -> None:
    x = unit_clusters(3000, 16, 6, 4)
    np.save(tmp_path / "vectors.npy", x)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    paths = [f"{i}.jpg" for i in range(3000)]
    on_disk = build_on_disk(mapped, tmp_path / "idx", paths=paths, shard_rows=700, rerank=True, recall_queries=200,
                            nlist=8, pq_m=4, pq_nbits=6, train_size=1000)  # fmt: skip
    in_memory = EmbeddingIndex.build(x, paths=paths, rerank=True, recall_queries=200, train_size=1000, **PQ)
    assert sorted(os.listdir(tmp_path / "idx")) == [
        "index.faiss",
        "index.ivfdata",
        "meta.json",
        "vectors.npy",
    ]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path)), "the shard files are removed"
    assert on_disk.recall == in_memory.recall and on_disk.recall is not None and on_disk.recall["held_out"]
    for a, b in ((on_disk.search(x[:50], 10), in_memory.search(x[:50], 10)),):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["format_version"] == 4 and meta["recall"] == on_disk.recall
    assert meta["params"] == {"nlist": 8, "pq_m": 4, "pq_nbits": 6}


def test_build_on_disk_errors(tmp_path: Path) -> None:
    x = unit_clusters(500, 16, 4, 5)
    x[321, 3] = np.nan
    with pytest.raises(ValueError, match="row 321 contains NaN"):
        build_on_disk(x, tmp_path / "idx", nlist=4, pq_m=4, pq_nbits=4, shard_rows=100, train_size=50)
    assert not (tmp_path / "idx").exists() and os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="pq_m must divide the dimension 16, got 5"):
        build_on_disk(x[:300], tmp_path / "idx", nlist=4, pq_m=5, pq_nbits=4)
    with pytest.raises(ValueError, match="100 training vectors cannot train 4 lists and 256-centroid"):
        build_on_disk(x[:300], tmp_path / "idx", nlist=4, train_size=100)


def test_options_that_do_not_apply_are_refused() -> None:
    x = unit_clusters(400, 16, 4, 6)
    with pytest.raises(ValueError, match="pq_m applies to kind='ivfpq' only"):
        EmbeddingIndex.build(x, kind="hnsw", pq_m=4)
    with pytest.raises(ValueError, match="rerank applies to approximate kinds"):
        EmbeddingIndex.build(x, kind="flat", rerank=True)
    with pytest.raises(ValueError, match="ef_search must be a positive int"):
        EmbeddingIndex.build(x, kind="hnsw", ef_search=0)
    assert default_pq_m(128) == 32 and default_pq_m(1280) == 320 and default_pq_m(18) == 3


def _edit_meta(directory: Path, **changes: object) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(changes)
    (directory / "meta.json").write_text(json.dumps(meta))


def test_load_errors_of_the_new_files(tmp_path: Path) -> None:
    x = unit_clusters(800, 16, 4, 7)
    saved = EmbeddingIndex.build(x, rerank=True, recall_queries=0, **PQ).save(tmp_path / "idx")
    (saved / "index.ivfdata").rename(tmp_path / "lists")
    with pytest.raises(StoreError, match=r"index\.ivfdata is missing"):
        EmbeddingIndex.load(saved)
    (tmp_path / "lists").rename(saved / "index.ivfdata")
    np.save(saved / "vectors.npy", x[::-1].copy())  # the rows of another order
    with pytest.raises(StoreError, match=r"vectors\.npy differs from the one the index was saved with"):
        EmbeddingIndex.load(saved)
    np.save(saved / "vectors.npy", x[:, :8].copy())
    with pytest.raises(
        StoreError, match=r"must hold \(800, 16\) float32 vectors like the index, got \(800, 8\)"
    ):
        EmbeddingIndex.load(saved)
    # a format-2 description cannot describe the new kinds
    _edit_meta(saved, format_version=2)
    with pytest.raises(StoreError, match="field 'kind' must be one of flat, ivf, got 'ivfpq'"):
        EmbeddingIndex.load(saved)


def test_format_2_indexes_still_load(tmp_path: Path) -> None:
    x = unit_clusters(300, 16, 4, 8)
    saved = EmbeddingIndex.build(x, paths=[str(i) for i in range(300)]).save(tmp_path / "idx")
    meta = json.loads((saved / "meta.json").read_text())
    for field in ("ef_search", "params", "rerank_factor", "recall", "vectors_checksum"):
        del meta[field]
    meta["format_version"], meta["nprobe"] = 2, 16  # format 2 always wrote an nprobe
    (saved / "meta.json").write_text(json.dumps(meta))
    loaded = EmbeddingIndex.load(saved)
    assert (loaded.kind, len(loaded), loaded.recall, loaded.reranks) == ("flat", 300, None, False)
    assert (loaded.nprobe, loaded.ef_search, loaded.rerank_factor) == (16, 64, 4)  # kept as given
    meta["nprobe"] = None  # "the default" is new in format 4
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="field 'nprobe' is null, which format_version 2 does not allow"):
        EmbeddingIndex.load(saved)


def test_query_of_another_dimension_is_refused(tmp_path: Path) -> None:
    x = unit_clusters(800, 16, 4, 9)
    loaded = EmbeddingIndex.load(EmbeddingIndex.build(x, **PQ).save(tmp_path / "idx"))
    with pytest.raises(ValueError, match=r"dimension 16 like the indexed vectors, got shape \(2, 12\)"):
        loaded.search(np.zeros((2, 12), np.float32), 3)


def test_loading_an_on_disk_index_prints_nothing(tmp_path: Path) -> None:
    """faiss prints the lists' new path to standard output when it loads them: that would corrupt `search --json`."""
    import subprocess
    import sys

    x = unit_clusters(800, 16, 4, 10)
    saved = EmbeddingIndex.build(x, recall_queries=0, **PQ).save(tmp_path / "a")
    os.replace(
        saved, tmp_path / "b"
    )  # the recorded path of the lists is now wrong: faiss reports the new one
    code = "import sys; from frugalvision.index import EmbeddingIndex; EmbeddingIndex.load(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "IO_FLAG" not in done.stderr


def test_build_on_disk_takes_the_options_of_build_and_refuses_others(tmp_path: Path) -> None:
    x = unit_clusters(600, 16, 4, 11)
    with pytest.raises(ValueError, match="ef_search applies to kind='hnsw' only"):
        build_on_disk(x, tmp_path / "a", ef_search=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'npobe'; use paths, labels, metric"):
        build_on_disk(x, tmp_path / "a", npobe=3)
    # shard_rows left out: one shard of SHARD_BYTES; same index as many small shards and as build
    one = build_on_disk(x, tmp_path / "one", nlist=4, pq_m=4, pq_nbits=6, recall_queries=50)
    many = build_on_disk(x, tmp_path / "many", shard_rows=64, nlist=4, pq_m=4, pq_nbits=6, recall_queries=50)
    ref = EmbeddingIndex.build(x, kind="ivfpq", nlist=4, pq_m=4, pq_nbits=6, recall_queries=50)
    assert one.recall == many.recall == ref.recall and one.nprobe == ref.nprobe
    for built in (one, many):
        np.testing.assert_array_equal(built.search(x[:40], 5).ids, ref.search(x[:40], 5).ids)
