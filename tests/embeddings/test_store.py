"""EmbeddingStore on disk: consistency checks at load, a full disk while saving, leftovers of a killed save."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frugalvision.embeddings import EmbeddingStore
from frugalvision.embeddings import store as store_module
from frugalvision.errors import StoreError


def dead_pid() -> int:
    """The id of a process that has exited (a killed writer's pid)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def small_store(rows: int = 4, dim: int = 6) -> EmbeddingStore:
    rng = np.random.default_rng(0)
    return EmbeddingStore(
        rng.standard_normal((rows, dim)).astype(np.float32),
        [f"img{i}.jpg" for i in range(rows)],
        [("cat",) if i % 2 else ("dog",) for i in range(rows)],
        classes=["cat", "dog"],
        info={"normalized": False},
    )


def disk_full_after(nbytes: int):
    """A stand-in for ``np.save`` that writes ``nbytes`` of the file, then fails as a full disk does."""

    def save(file: object, arr: object, *args: object, **kwargs: object) -> None:
        with open(file, "wb") as f:  # type: ignore[call-overload]
            f.write(b"\x93NUMPY"[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def test_vectors_of_another_dimension_than_info_json_are_refused(tmp_path: Path) -> None:
    d = small_store(dim=6).save(tmp_path / "s")
    np.save(d / "vectors.npy", np.zeros((4, 3), dtype=np.float32))  # same rows, other width
    with pytest.raises(StoreError, match=r"vectors\.npy holds 3-d vectors but .*info\.json says dim 6"):
        EmbeddingStore.load(d)


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        (np.zeros(4, dtype=np.float32), r"vectors\.npy must hold a 2-D \(N, D\) array, got shape \(4,\)"),
        (np.zeros((4, 6), dtype=np.int64), r"vectors\.npy must hold float32 vectors, got int64"),
        (np.full((4, 6), np.nan, dtype=np.float32), r"vectors\.npy holds 24 NaN or infinite"),
    ],
)
def test_malformed_vectors_are_refused_naming_the_file(
    tmp_path: Path, vectors: np.ndarray, match: str
) -> None:
    d = small_store().save(tmp_path / "s")
    np.save(d / "vectors.npy", vectors)
    with pytest.raises(StoreError, match=match):
        EmbeddingStore.load(d)


def test_unreadable_vectors_npy_is_refused_naming_the_file(tmp_path: Path) -> None:
    d = small_store().save(tmp_path / "s")
    (d / "vectors.npy").write_bytes((d / "vectors.npy").read_bytes()[:100])  # truncated
    with pytest.raises(StoreError, match=r"vectors\.npy is not a readable numpy array"):
        EmbeddingStore.load(d)
    (d / "info.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match=r"info\.json must hold a JSON object"):
        EmbeddingStore.load(d)


def test_reordered_items_are_refused_by_the_checksum(tmp_path: Path) -> None:
    d = small_store().save(tmp_path / "s")
    lines = (d / "items.jsonl").read_text().splitlines()
    (d / "items.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(StoreError, match=r"items\.jsonl, vectors\.npy and info\.json do not belong together"):
        EmbeddingStore.load(d)


def test_disk_full_while_saving_keeps_the_old_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = small_store(rows=4)
    old.save(tmp_path / "s")
    monkeypatch.setattr(store_module.np, "save", disk_full_after(4))
    with pytest.raises(StoreError, match=r"cannot write .*vectors\.npy: No space left on device"):
        small_store(rows=6).save(tmp_path / "s")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["s"], "no partial folder may be left behind"
    np.testing.assert_array_equal(EmbeddingStore.load(tmp_path / "s").vectors, old.vectors)


def test_leftovers_of_a_killed_save_are_cleaned_by_the_next(tmp_path: Path) -> None:
    pid = dead_pid()
    ours = [f".s.tmp-{pid}-k2j4x9", f".s.old-{pid}"]
    others = [".s.tmp-notes", "s.tmp-1", f".t.tmp-{pid}-abc", f".s.tmp-{os.getpid()}-live"]
    for name in ours + others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "vectors.npy").write_bytes(b"x")
    small_store().save(tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["s", *others]
    )  # a running writer's and foreign folders stay


def test_a_store_moved_aside_by_a_killed_save_is_put_back(tmp_path: Path) -> None:
    store = small_store()
    store.save(tmp_path / "s")
    os.replace(tmp_path / "s", tmp_path / f".s.old-{dead_pid()}")  # killed between the two renames
    assert store_module.recover_interrupted_save(tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == ["s"]
    np.testing.assert_array_equal(EmbeddingStore.load(tmp_path / "s").vectors, store.vectors)
    assert not store_module.recover_interrupted_save(tmp_path / "s")  # nothing left to do
