"""Approximate near duplicates (PCA + IVF candidates, exact check) against the exact all-pairs search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.curation import duplicates as module
from frugalvision.curation import near_duplicates


def planted(n: int, dim: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Clustered rows (distinct rows of a cluster at cosine about 0.5) plus planted copies: 150 single copies
    and 10 groups of 4 (copies of one row, noise 0.05-0.5 of its norm); returns the rows and the planted pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim))
    x = centres[rng.integers(0, 30, n)] + rng.standard_normal((n, dim))
    free = rng.permutation(n)
    sources, spare = free[:190], free[190:]
    planted_pairs = set()
    slot = 0
    for g, src in enumerate(sources):
        copies = 1 if g < 150 else 3
        for _ in range(copies):
            dst = spare[slot]
            slot += 1
            noise = rng.standard_normal(dim)
            x[dst] = x[src] + rng.uniform(0.05, 0.5) * np.linalg.norm(x[src]) * noise / np.linalg.norm(noise)
            planted_pairs.add((min(src, dst), max(src, dst)))
    return x.astype(np.float32), planted_pairs


def pair_set(pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.first.tolist(), pairs.second.tolist(), strict=True))


def test_approximate_pairs_equal_the_exact_ones_on_a_planted_set() -> None:
    x, _ = planted(4000, 96, 0)
    exact = near_duplicates(x, 0.81, method="exact")
    approx = near_duplicates(x, 0.81, method="approximate", pca_dim=24, recall_sample=4000)
    assert len(exact) > 200, "the planted copies (and the copies of one row among themselves) are pairs"
    assert pair_set(approx) == pair_set(exact)
    np.testing.assert_allclose(approx.similarity, exact.similarity, atol=1e-5)  # same order, exact cosines
    assert (approx.method, exact.method, exact.recall) == ("approximate", "exact", None)
    # every row sampled: the recall covers all pairs
    assert approx.recall is not None and approx.recall["recall"] == 1.0
    assert approx.recall["exact_pairs"] == len(exact) and approx.recall["sample_rows"] == 4000


def test_recall_reports_the_pairs_a_narrow_search_misses() -> None:
    x, _ = planted(4000, 96, 1)
    exact = pair_set(near_duplicates(x, 0.81, method="exact"))
    # PCA to 2 dimensions, 1 of ~100 lists scanned and 2 candidates per row: pairs are lost
    approx = near_duplicates(
        x, 0.81, method="approximate", pca_dim=2, nprobe=1, candidates=2, recall_sample=4000
    )
    found = pair_set(approx)
    assert found < exact, "what is found is a subset of the exact pairs (checked exactly) and misses some"
    assert approx.recall is not None
    assert approx.recall["recall"] == pytest.approx(len(found) / len(exact))
    assert approx.recall["dense_rows"] > 0


def test_auto_switches_at_the_threshold_and_reads_a_memory_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, _ = planted(3000, 64, 2)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    monkeypatch.setattr(module, "APPROXIMATE_FROM", 3000)
    approx = near_duplicates(mapped, 0.81, pca_dim=16, recall_sample=300)
    assert approx.method == "approximate"
    assert pair_set(approx) == pair_set(near_duplicates(x, 0.81, method="exact"))
    assert near_duplicates(torch.from_numpy(x[:2999]), 0.81).method == "exact"


def test_bad_rows_are_named() -> None:
    x, _ = planted(3000, 32, 3)
    x[1234, 5] = np.inf
    with pytest.raises(ValueError, match="embeddings row 1234 contains NaN or infinite values"):
        near_duplicates(x, 0.81, method="approximate")
    with pytest.raises(ValueError, match="method must be 'auto', 'exact' or 'approximate'"):
        near_duplicates(x, 0.81, method="fast")  # type: ignore[arg-type]


def test_cli_approximate_search_prints_its_recall(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from frugalvision.cli.main import cli
    from frugalvision.embeddings import EmbeddingStore

    x, _ = planted(3000, 64, 4)
    EmbeddingStore(
        vectors=x, paths=[str(tmp_path / f"{i}.jpg") for i in range(3000)], labels=[()] * 3000, info={}
    ).save(tmp_path / "store")
    exact = near_duplicates(x, 0.81, method="exact")
    result = CliRunner().invoke(
        cli, ["curate", "duplicates", str(tmp_path / "store"), "--search", "approximate"]
    )
    assert result.exit_code == 0, result.output
    assert f"{len(exact)} near-duplicate pair(s) at cosine >= 0.81" in result.output
    assert "approximate search: pair recall 1.000 (" in result.output
