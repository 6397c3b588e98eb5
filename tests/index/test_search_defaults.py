"""The approximate kinds' search settings: defaults as functions of k and the list count, explicit values honoured,
re-ranking that reads only the candidates' rows, and recall against exact search at the defaults."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from frugalvision.index import (
    EmbeddingIndex,
    build_on_disk,
    default_ef_search,
    default_nprobe,
    default_rerank_factor,
)


def unit_clusters(n: int, dim: int, centres: np.ndarray, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The reference: float64 inner products of every pair, fully sorted."""
    return np.argsort(-(q.astype(np.float64) @ x.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return (
        float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]))
        / exact.shape[1]
    )


def test_default_search_settings_are_functions_of_k_and_the_lists() -> None:
    # nprobe: a 32nd of the lists, at least 16, scaled by k / 10 above k = 10, at most every list
    assert [default_nprobe(nlist, 10) for nlist in (1, 8, 100, 512, 1024, 1789, 4000, 12649)] == [
        1, 8, 16, 16, 32, 56, 125, 396
    ]  # fmt: skip
    assert [default_nprobe(4000, k) for k in (1, 10, 20, 100)] == [125, 125, 250, 1250]
    assert default_nprobe(1024, 10_000) == 1024
    for nlist in (20, 333, 4000):
        for k in (1, 7, 10, 33, 100):
            expected = min(nlist, max(16, math.ceil(nlist / 32 * max(1, k / 10))))
            assert default_nprobe(nlist, k) == expected
    # ef_search: clip(10 k, 64, 1024) and never below k
    assert [default_ef_search(k) for k in (1, 5, 10, 50, 100, 200, 5000)] == [
        64,
        64,
        100,
        500,
        1000,
        1024,
        5000,
    ]
    assert default_rerank_factor(10) == 20


def test_indexes_use_the_defaults_for_each_k_and_record_them(tmp_path: Path) -> None:
    centres = np.random.default_rng(0).standard_normal((40, 16))
    x = unit_clusters(4000, 16, centres, 1)
    ivf = EmbeddingIndex.build(x, kind="ivf", nlist=60, rerank=True)
    assert (ivf.nprobe, ivf.rerank_factor) == (None, None)
    assert ivf.effective(10) == {"nprobe": 16, "rerank_factor": 20}
    assert ivf.effective(50) == {"nprobe": default_nprobe(60, 50), "rerank_factor": 20}
    assert ivf.recall is not None
    assert (ivf.recall["nprobe"], ivf.recall["rerank_factor"]) == (16, 20)
    assert ivf.recall["defaults"] == ["nprobe", "rerank_factor"]
    hnsw = EmbeddingIndex.build(x, kind="hnsw", hnsw_m=8)
    assert hnsw.ef_search is None and hnsw.effective(10) == {"ef_search": 100, "rerank_factor": 1}
    assert hnsw.effective(30)["ef_search"] == 300
    assert hnsw.params == {"hnsw_m": 8, "ef_construction": 128}
    # saved as "the default" (null), so a later search of another k still gets its own default
    saved = hnsw.save(tmp_path / "h")
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["ef_search"] is None and meta["format_version"] == 4
    assert meta["recall"]["ef_search"] == 100 and meta["recall"]["defaults"] == ["ef_search"]
    loaded = EmbeddingIndex.load(saved)
    assert loaded.ef_search is None and loaded.effective(30)["ef_search"] == 300
    assert loaded.params["ef_construction"] == 128


def test_the_default_nprobe_is_the_one_searched_with() -> None:
    """What effective() reports is what faiss scans: equal to the raw faiss index set by hand."""
    centres = np.random.default_rng(2).standard_normal((30, 8))
    x, q = unit_clusters(6000, 8, centres, 3), unit_clusters(50, 8, centres, 4)
    index = EmbeddingIndex.build(x, kind="ivf", nlist=150, recall_queries=0)
    raw = faiss.extract_index_ivf(index._index)
    for k in (10, 40):
        raw.nprobe = default_nprobe(150, k)
        np.testing.assert_array_equal(index.search(q, k).ids, raw.search(q, k)[1])
    raw.nprobe = 1  # and the index's own attribute does not leak into searches
    np.testing.assert_array_equal(index.search(q, 10).ids, EmbeddingIndex.search(index, q, 10).ids)


def test_explicit_values_are_honoured(tmp_path: Path) -> None:
    centres = np.random.default_rng(5).standard_normal((30, 8))
    x, q = unit_clusters(6000, 8, centres, 6), unit_clusters(50, 8, centres, 7)
    ivf = EmbeddingIndex.build(x, kind="ivf", nlist=150, nprobe=3, recall_queries=50)
    assert ivf.effective(10) == ivf.effective(100) == {"nprobe": 3, "rerank_factor": 1}
    assert ivf.recall is not None and ivf.recall["nprobe"] == 3 and ivf.recall["defaults"] == []
    raw = faiss.extract_index_ivf(ivf._index)
    raw.nprobe = 3
    np.testing.assert_array_equal(ivf.search(q, 10).ids, raw.search(q, 10)[1])
    loaded = EmbeddingIndex.load(ivf.save(tmp_path / "ivf"))
    assert loaded.nprobe == 3
    np.testing.assert_array_equal(loaded.search(q, 10).ids, raw.search(q, 10)[1])
    loaded.nprobe = None  # back to the default
    assert loaded.effective(10)["nprobe"] == 16
    hnsw = EmbeddingIndex.build(x, kind="hnsw", hnsw_m=8, ef_construction=20, ef_search=12, recall_queries=0)
    assert hnsw.params == {"hnsw_m": 8, "ef_construction": 20} and hnsw._index.hnsw.efConstruction == 20
    assert hnsw.effective(10)["ef_search"] == 12 and hnsw.effective(20)["ef_search"] == 20  # at least k
    pq = build_on_disk(
        x, tmp_path / "pq", nlist=40, pq_m=2, pq_nbits=6, rerank=True, rerank_factor=3, nprobe=5
    )
    assert pq.effective(10) == {"nprobe": 5, "rerank_factor": 3}
    with pytest.raises(ValueError, match="ef_construction applies to kind='hnsw' only"):
        build_on_disk(x, tmp_path / "pq", ef_construction=40)


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: addresses ... path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux's /proc/self/smaps")
def test_reranking_reads_only_the_candidates_and_equals_the_in_memory_rerank(tmp_path: Path) -> None:
    """Re-ranking from a memory-mapped vectors.npy must not fault the file into this process (its pages would count
    in the resident memory: 5.7 GB at 10M vectors), and must give what re-ranking in memory gives."""
    centres = np.random.default_rng(8).standard_normal((64, 64))
    x, q = unit_clusters(40_000, 64, centres, 9), unit_clusters(300, 64, centres, 10)
    built = build_on_disk(x, tmp_path / "idx", nlist=64, pq_m=8, pq_nbits=6, rerank=True, recall_queries=0)
    in_memory = EmbeddingIndex(
        built._index, metric="ip", kind="ivfpq", nprobe=None, paths=None, labels=None, info={}, vectors=x
    )
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert isinstance(loaded._vectors, np.memmap)
    vectors_file = tmp_path / "idx" / "vectors.npy"
    before = _mapped_kib(vectors_file)
    hits = loaded.search(q, 10)
    again = loaded.search_by_id(np.arange(0, 40_000, 97), 10)
    grown = _mapped_kib(vectors_file) - before
    assert grown < 256, f"{grown} KiB of the 10 MB vectors.npy became resident through its memory map"
    expected = in_memory.search(q, 10)
    np.testing.assert_array_equal(hits.ids, expected.ids)
    np.testing.assert_array_equal(hits.scores, expected.scores)
    np.testing.assert_array_equal(again.ids, in_memory.search_by_id(np.arange(0, 40_000, 97), 10).ids)
    # the reference: the index's own 200 candidates (20 per hit), ordered by float64 inner products
    loaded.rerank_factor = 1
    raw = faiss.extract_index_ivf(loaded._index)
    raw.nprobe = 16
    _, cand = raw.search(q, 200)
    exact = np.einsum("qd,qkd->qk", q.astype(np.float64), x[cand].astype(np.float64))
    top = np.take_along_axis(cand, np.argsort(-exact, axis=1, kind="stable")[:, :10], 1)
    assert np.mean(hits.ids == top) > 0.999  # float32 vs float64 ties aside
    np.testing.assert_allclose(hits.scores, np.sort(exact, axis=1)[:, ::-1][:, :10], atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("ivf", {"nlist": 400}),
        ("ivfpq", {"nlist": 400, "pq_m": 6, "pq_nbits": 6, "train_size": 4000, "rerank": True}),
        ("hnsw", {"hnsw_m": 16}),
    ],
)
def test_recall_at_the_defaults_against_exact_search(kind: str, options: dict) -> None:
    """At the defaults, recall@k >= 0.92 for k = 10 and 50 on a clustered set with wide clusters (0.94-0.98). The fixed
    settings before (nprobe 16, 4 x k re-ranked candidates) found 0.87 of the 50 nearest here."""
    centres = np.random.default_rng(11).standard_normal((100, 24))
    x, q = unit_clusters(16_000, 24, centres, 12, spread=1.0), unit_clusters(200, 24, centres, 13, spread=1.0)
    if kind == "hnsw":
        x = x[:8000]  # a graph takes longer to build
    index = EmbeddingIndex.build(x, kind=kind, recall_queries=0, **options)  # type: ignore[arg-type]
    exact = exact_top(x, q, 50)
    for k in (10, 50):
        found = recall(index.search(q, k).ids, exact[:, :k])
        assert found >= 0.92, (kind, k, index.effective(k), found)


def test_search_with_settings_works_once_faiss_torch_utils_is_imported() -> None:
    """pytorch-metric-learning imports ``faiss.contrib.torch_utils``, which replaces ``Index.search`` by a version
    without ``params``: the per-call settings must still reach faiss (the CLI's demo and search failed)."""
    import faiss.contrib.torch_utils  # noqa: F401  (patches faiss's classes for the rest of the process)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind, options in (("ivf", {"nlist": 32}), ("hnsw", {}), ("flat", {})):
        index = EmbeddingIndex.build(x, kind=kind, recall_queries=0, **options)
        found = index.search(x[:5], k=3)  # each query is indexed: its own row comes first
        assert (found.ids[:, 0] == np.arange(5)).all(), kind
