"""Reading the rows of a memory-mapped store in chunks (``frugalvision._integrity.read_rows`` / ``row_chunks``)
and opening a store memory-mapped (``EmbeddingStore.load(mmap=True)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frugalvision._integrity import read_rows, row_chunks, take_rows
from frugalvision.embeddings import EmbeddingStore
from frugalvision.errors import StoreError


def test_read_rows_of_a_mapped_file_equals_slicing(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1001, 13)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    for start, stop in ((0, 1), (5, 17), (990, 1001), (1000, 5000), (7, 7)):
        got = read_rows(mapped, start, stop)
        assert got.dtype == np.float32 and got.flags.c_contiguous and not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, x[start:stop])
    view = mapped[100:200]  # a view keeps its parent's offset attribute: must not be read at that offset
    np.testing.assert_array_equal(read_rows(view, 3, 9), x[103:109])
    np.testing.assert_array_equal(np.concatenate(list(row_chunks(mapped, chunk_bytes=13 * 4 * 100))), x)
    assert [len(c) for c in row_chunks(mapped, chunk_bytes=13 * 4 * 400)] == [400, 400, 201]
    np.testing.assert_array_equal(np.concatenate(list(row_chunks(x.astype(np.float64), 999))), x)
    rows = np.array([1000, 0, 17, 17, 512, -1])
    for source in (mapped, view, x):
        got = take_rows(source, rows[rows < len(source)])
        assert got.dtype == np.float32 and not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, np.asarray(source)[rows[rows < len(source)]])
    with pytest.raises(IndexError, match="out of range for 1001 rows"):
        take_rows(mapped, np.array([1001]))


def test_a_store_opens_memory_mapped_with_the_same_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    store = EmbeddingStore(
        vectors=x, paths=[f"{i}.jpg" for i in range(300)], labels=[("a",)] * 300, classes=["a"]
    )
    store.save(tmp_path / "s")
    mapped = EmbeddingStore.load(tmp_path / "s", mmap=True)
    assert isinstance(mapped.vectors, np.memmap) and not mapped.vectors.flags.writeable
    np.testing.assert_array_equal(mapped.vectors, x)
    assert mapped.checksum() == store.checksum() == EmbeddingStore.load(tmp_path / "s").checksum()
    bad = x.copy()
    bad[123, 4] = np.nan
    np.save(tmp_path / "s" / "vectors.npy", bad)
    with pytest.raises(StoreError, match="holds 1 NaN or infinite value"):
        EmbeddingStore.load(tmp_path / "s", mmap=True)
    np.save(tmp_path / "s" / "vectors.npy", x[::-1].copy())  # another row order: the checksum differs
    with pytest.raises(StoreError, match="do not belong together"):
        EmbeddingStore.load(tmp_path / "s", mmap=True)
