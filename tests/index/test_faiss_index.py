"""EmbeddingIndex against numpy brute force, IVF recall, exclusion of the query, atomic save/load and errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.errors import StoreError
from frugalvision.index import EmbeddingIndex, SearchResult, default_nlist
from frugalvision.index import faiss_index as module


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 3
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    return x.astype(np.float32)


def brute_force(
    queries: np.ndarray, vectors: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every pair in float64, then a full sort: the obvious reference."""
    q, v = queries.astype(np.float64), vectors.astype(np.float64)
    if metric == "ip":
        scores = q @ v.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((q[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_equals_brute_force(metric: str) -> None:
    vectors = clustered(300, 12, 5, 0)
    queries = clustered(20, 12, 5, 1)
    index = EmbeddingIndex.build(vectors, metric=metric, kind="flat")
    result = index.search(queries, 7)
    expected_scores, expected_ids = brute_force(queries, vectors, 7, metric)
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.ids, expected_ids)
    np.testing.assert_allclose(result.scores, expected_scores, rtol=1e-5, atol=1e-3)
    # torch queries give the same answer
    torch_result = index.search(torch.from_numpy(queries), 7)
    np.testing.assert_array_equal(torch_result.ids, result.ids)


@pytest.mark.parametrize(("metric", "missing"), [("ip", -np.inf), ("l2", np.inf)])
def test_fewer_vectors_than_k_pads_with_minus_one(metric: str, missing: float) -> None:
    vectors = clustered(4, 3, 2, 2)
    result = EmbeddingIndex.build(vectors, metric=metric, paths=list("abcd")).search(vectors[:1], 6)
    assert result.ids[0, 4:].tolist() == [-1, -1]
    assert result.scores[0, 4:].tolist() == [missing, missing]
    assert result.paths[0][0] == "a" and result.paths[0][4:] == [None, None]


def test_ivf_recall_against_flat() -> None:
    vectors = clustered(5000, 16, 40, 3)
    queries = clustered(200, 16, 40, 4)
    flat = EmbeddingIndex.build(vectors, kind="flat", metric="l2").search(queries, 10).ids
    ivf = EmbeddingIndex.build(vectors, kind="ivf", metric="l2", nprobe=32)
    assert ivf.kind == "ivf" and ivf.nlist == default_nlist(5000) == 5000 // 39
    ids = ivf.search(queries, 10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), flat.tolist(), strict=True)])
    assert recall >= 0.9
    ivf.nprobe = ivf.nlist  # scanning every list is exact
    np.testing.assert_array_equal(ivf.search(queries, 10).ids, flat)
    ivf.nprobe = 1
    assert np.mean(ivf.search(queries, 10).ids == flat) < 1.0, "nprobe=1 should lose some neighbours"


def test_auto_kind_switches_to_ivf_at_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = clustered(800, 8, 4, 5)
    assert EmbeddingIndex.build(vectors).kind == "flat"
    monkeypatch.setattr(module, "AUTO_IVF_MIN_COUNT", 800)
    index = EmbeddingIndex.build(vectors)
    assert index.kind == "ivf" and index.nlist == 800 // 39 and index.nprobe is None
    assert index.effective(10) == {"nprobe": 16, "rerank_factor": 1}  # the default: at least 16 lists


def test_default_nlist_bounds() -> None:
    assert default_nlist(10) == 1
    assert default_nlist(1000) == 25  # 4 sqrt(1000) = 126 lists would get 7 points each: capped at 1000 // 39
    assert default_nlist(1_000_000) == 4000


def test_ivf_nlist_checks() -> None:
    vectors = clustered(200, 4, 2, 6)
    with pytest.warns(UserWarning, match="fewer than 39 training vectors per list"):
        EmbeddingIndex.build(vectors, kind="ivf", nlist=10)
    with pytest.raises(ValueError, match=r"nlist must be an int in \[1, 200\]"):
        EmbeddingIndex.build(vectors, kind="ivf", nlist=201)
    with pytest.raises(ValueError, match="nlist applies to kinds 'ivf' and 'ivfpq' only"):
        EmbeddingIndex.build(vectors, kind="flat", nlist=4)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_exclude_self_removes_the_query_but_keeps_duplicates(kind: str) -> None:
    vectors = clustered(400, 8, 4, 7)
    vectors[11] = vectors[10]  # one duplicate
    vectors[21:27] = vectors[20]  # six copies of item 20: more than k + 1 tie at distance 0
    index = EmbeddingIndex.build(
        vectors, kind=kind, metric="l2", nlist=4 if kind == "ivf" else None, nprobe=4
    )
    ids = np.arange(400)
    result = index.search_by_id(ids, 3)
    assert not (result.ids == ids[:, None]).any(), "no query may be its own hit"
    assert result.ids[10, 0] == 11 and result.ids[11, 0] == 10
    assert set(result.ids[20].tolist()) <= set(range(21, 27))
    np.testing.assert_array_equal(result.scores[20], 0.0)
    # search() with exclude_ids is the same operation
    np.testing.assert_array_equal(index.search(vectors, 3, exclude_ids=ids).ids, result.ids)
    # without exclusion the query finds itself (or an exact copy) first
    assert index.search_by_id([10], 1, exclude_self=False).scores[0, 0] == 0.0
    # the other hits are those of a plain k + 1 search minus the query
    plain = index.search(vectors[:5], 4).ids
    for row in range(5):
        np.testing.assert_array_equal(result.ids[row], [i for i in plain[row] if i != row][:3])


def test_exclude_minus_one_means_the_query_is_not_indexed() -> None:
    vectors = clustered(300, 8, 4, 3)
    index = EmbeddingIndex.build(vectors, metric="l2")
    queries = clustered(4, 8, 4, 99)  # new vectors, in no row of the index
    mixed = index.search(np.vstack([queries, vectors[[7]]]), 5, exclude_ids=[-1, -1, -1, -1, 7])
    # a query with nothing to exclude gets its plain top-k; an indexed one loses itself
    ref_scores, ref_ids = brute_force(queries, vectors, 5, "l2")
    np.testing.assert_array_equal(mixed.ids[:4], ref_ids)
    np.testing.assert_allclose(mixed.scores[:4], ref_scores, rtol=1e-4)
    _, ref_ids = brute_force(vectors[[7]], vectors, 6, "l2")
    np.testing.assert_array_equal(mixed.ids[4], [i for i in ref_ids[0] if i != 7][:5])
    with pytest.raises(ValueError, match=r"exclude_ids must be ids in \[0, 300\) or -1"):
        index.search(queries[:1], 1, exclude_ids=[-2])
    with pytest.raises(ValueError, match=r"ids in \[0, 300\), got -1"):
        index.reconstruct([-1])


def test_lookup_matches_paths_after_resolving_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "photos" / "cat" / name).write_bytes(b"x")
    (tmp_path / "new.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "photos", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    # as a folder reader records them when given a relative path, one absolute as a manifest records it
    paths = ["photos/cat/a.jpg", str(tmp_path / "photos" / "cat" / "b.jpg")]
    index = EmbeddingIndex.build(np.eye(2, dtype=np.float32), paths=paths)
    queries = [
        "photos/cat/a.jpg",  # as recorded
        str(tmp_path / "photos" / "cat" / "a.jpg"),  # absolute form of a relative record
        "./photos/cat/../cat/b.jpg",  # relative form of an absolute record
        "link/cat/a.jpg",  # through a symbolic link
        "new.jpg",  # not indexed
        "missing.jpg",  # does not exist at all
    ]
    np.testing.assert_array_equal(index.lookup(queries), [0, 0, 1, 0, -1, -1])
    with pytest.raises(StoreError, match="stores no paths"):
        EmbeddingIndex.build(np.eye(2, dtype=np.float32)).lookup(["a.jpg"])


def test_search_result_paths_and_labels() -> None:
    vectors = np.eye(3, dtype=np.float32)
    index = EmbeddingIndex.build(vectors, paths=["a.jpg", "b.jpg", "c.jpg"], labels=["cat", "dog", "cat"])
    result = index.search(vectors[[2]], 1)
    assert isinstance(result, SearchResult)
    assert result.paths == [["c.jpg"]] and result.labels == [["cat"]]
    with pytest.raises(StoreError, match="stores no labels"):
        _ = EmbeddingIndex.build(vectors).search(vectors, 1).labels


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    vectors = clustered(500, 8, 4, 8)
    info = {"backbone": {"name": "resnet18", "dim": 8}, "preprocessing": {"size": [224, 224]}}
    index = EmbeddingIndex.build(
        vectors,
        paths=[f"img/{i}.jpg" for i in range(500)],
        labels=[str(i % 4) for i in range(500)],
        kind=kind,
        nlist=8 if kind == "ivf" else None,
        nprobe=3,
        info=info,
    )
    index.save(tmp_path / "idx")
    assert sorted(os.listdir(tmp_path)) == ["idx"], "no temporary directory may be left behind"
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert (loaded.kind, loaded.metric, loaded.dim, len(loaded), loaded.nprobe, loaded.nlist) == (
        kind,
        "ip",
        8,
        500,
        3,
        index.nlist,
    )
    assert loaded.paths == index.paths and loaded.labels == index.labels and loaded.info == info
    before, after = index.search(vectors[:50], 5), loaded.search(vectors[:50], 5)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(loaded.reconstruct([0, 499]), vectors[[0, 499]])
    np.testing.assert_array_equal(loaded.search_by_id([3], 4).ids, index.search_by_id([3], 4).ids)


def test_save_replaces_an_existing_index(tmp_path: Path) -> None:
    first = EmbeddingIndex.build(np.eye(3, dtype=np.float32), info={"v": 1})
    second = EmbeddingIndex.build(np.eye(4, dtype=np.float32), info={"v": 2})
    first.save(tmp_path / "idx")
    second.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert (len(loaded), loaded.info) == (4, {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_failed_save_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = EmbeddingIndex.build(np.eye(3, dtype=np.float32), info={"v": "old"})
    new = EmbeddingIndex.build(np.eye(5, dtype=np.float32), info={"v": "new"})
    old.save(tmp_path / "idx")

    def broken_dump(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")  # the faiss file is written, the metadata is not

    monkeypatch.setattr(module.json, "dump", broken_dump)
    with pytest.raises(StoreError, match=r"cannot write .*meta\.json: disk full"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    assert EmbeddingIndex.load(tmp_path / "idx").info == {"v": "old"}
    assert sorted(os.listdir(tmp_path)) == ["idx"]

    # Fail at the last step, after the old index was moved aside: it must be put back.
    real_replace = os.replace
    calls = []

    def replace_failing_second_time(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("crash during rename")
        real_replace(src, dst)

    monkeypatch.setattr(module.os, "replace", replace_failing_second_time)
    with pytest.raises(StoreError, match=r"cannot move .* to .*idx: crash during rename"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    assert EmbeddingIndex.load(tmp_path / "idx").info == {"v": "old"}
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_save_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        EmbeddingIndex.build(np.eye(2, dtype=np.float32)).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        EmbeddingIndex.build(np.eye(2, dtype=np.float32)).save(tmp_path / "file")


def _edit_meta(directory: Path, **changes: object) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(changes)
    (directory / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda d: (d / "index.faiss").unlink(), "index.faiss is missing"),
        (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
        (lambda d: (d / "meta.json").write_text("{not json"), r"not valid JSON \(line 1"),
        (lambda d: _edit_meta(d, format_version=99), "format_version 99.*upgrade frugalvision"),
        (lambda d: _edit_meta(d, format_version=1), "format_version 1.*rebuild the index"),
        (lambda d: _edit_meta(d, paths=["b", "a", "c"]), "checksum.*meta.json and index.faiss do not belong"),
        (lambda d: _edit_meta(d, checksum="sha256:0"), "checksum.*meta.json and index.faiss do not belong"),
        (lambda d: _edit_meta(d, checksum=None), "'checksum' has the wrong type NoneType"),
        (lambda d: _edit_meta(d, format="something-else"), "not a frugalvision index description"),
        (lambda d: _edit_meta(d, count=7), "count=7 but index.faiss holds 3 vectors"),
        (lambda d: _edit_meta(d, dim=5), "dim=5 but index.faiss has dimension 3"),
        (lambda d: _edit_meta(d, metric="l2"), "metric='l2'"),
        (lambda d: _edit_meta(d, kind="ivf"), "kind='ivf'"),
        (lambda d: _edit_meta(d, paths=["a"]), "'paths' has 1 entries, expected 3"),
        (lambda d: _edit_meta(d, nprobe="16"), "'nprobe' has the wrong type str"),
        (lambda d: _edit_meta(d, info=None), "'info' has the wrong type"),
        (lambda d: (d / "index.faiss").write_bytes(b"garbage"), "not a readable faiss index"),
    ],
)
def test_load_errors(tmp_path: Path, corrupt, match: str) -> None:
    directory = EmbeddingIndex.build(np.eye(3, dtype=np.float32), paths=list("abc")).save(tmp_path / "idx")
    corrupt(directory)
    with pytest.raises(StoreError, match=match):
        EmbeddingIndex.load(directory)


def test_load_missing_directory_mentions_an_interrupted_save(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"does not exist$"):
        EmbeddingIndex.load(tmp_path / "nothing")
    EmbeddingIndex.build(np.eye(2, dtype=np.float32)).save(tmp_path / "idx")
    os.replace(tmp_path / "idx", tmp_path / ".idx.old-123")  # a crash between the two renames of a save
    with pytest.raises(StoreError, match=r"previous index in .*\.idx\.old-123"):
        EmbeddingIndex.load(tmp_path / "idx")


def test_input_errors() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = EmbeddingIndex.build(vectors)
    with pytest.raises(ValueError, match="must have dimension 4"):
        index.search(np.zeros((2, 3), dtype=np.float32), 1)
    with pytest.raises(ValueError, match=r"2-D \(N, D\)"):
        index.search(np.zeros(4, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 4), np.nan, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingIndex.build(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(vectors, 0)
    with pytest.raises(ValueError, match="0 vectors"):
        EmbeddingIndex.build(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="paths has 2 entries but there are 4 vectors"):
        EmbeddingIndex.build(vectors, paths=["a", "b"])
    with pytest.raises(TypeError, match=r"labels\[1\] must be a str"):
        EmbeddingIndex.build(vectors, labels=["a", 1, "c", "d"])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        EmbeddingIndex.build(vectors, info={"path": Path("x")})
    with pytest.raises(ValueError, match="metric must be one of"):
        EmbeddingIndex.build(vectors, metric="cosine")
    with pytest.raises(ValueError, match="exclude_ids has 1 entries but there are 4 queries"):
        index.search(vectors, 1, exclude_ids=[0])
    with pytest.raises(ValueError, match=r"ids in \[0, 4\)"):
        index.search_by_id([4], 1)
    with pytest.raises(ValueError, match="nprobe must be a positive int"):
        index.nprobe = 0


def test_reordered_labels_or_swapped_vectors_are_refused(tmp_path: Path) -> None:
    """The checksum in meta.json ties each row's path and label to its vector."""
    vectors = clustered(50, 4, 2, 1)
    paths, labels = [f"{i}.jpg" for i in range(50)], ["a" if i < 25 else "b" for i in range(50)]
    directory = EmbeddingIndex.build(vectors, paths=paths, labels=labels).save(tmp_path / "idx")
    assert EmbeddingIndex.load(directory).labels == labels
    _edit_meta(directory, labels=labels[::-1])  # a query would come back with wrong labels
    with pytest.raises(StoreError, match="do not belong together"):
        EmbeddingIndex.load(directory)
    # the same metadata over other vectors of the same shape (index.faiss replaced)
    directory = EmbeddingIndex.build(vectors, paths=paths, labels=labels).save(tmp_path / "idx")
    other = EmbeddingIndex.build(vectors[::-1].copy(), paths=paths, labels=labels).save(tmp_path / "other")
    os.replace(other / "index.faiss", directory / "index.faiss")
    with pytest.raises(StoreError, match="do not belong together"):
        EmbeddingIndex.load(directory)


def test_checksum_is_sha256_of_the_rows() -> None:
    """Reference: hashlib over the JSON rows and the raw float32 bytes, written out here independently."""
    import hashlib

    vectors = clustered(500, 8, 4, 2)
    paths, labels = [f"p{i}" for i in range(500)], [str(i % 3) for i in range(500)]
    digest = hashlib.sha256(json.dumps([paths, labels], ensure_ascii=False).encode("utf-8"))
    digest.update(vectors.astype("<f4").tobytes())
    expected = "sha256:" + digest.hexdigest()
    for kind in ("flat", "ivf"):
        index = EmbeddingIndex.build(
            vectors, paths=paths, labels=labels, kind=kind, nlist=4 if kind == "ivf" else None
        )
        assert index.checksum() == expected, kind


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_leftovers_of_a_killed_save_are_cleaned_by_the_next(tmp_path: Path) -> None:
    pid = _dead_pid()
    ours = [f".idx.tmp-{pid}-0a1b2c3d4e5f", f".idx.old-{pid}-0a1b2c3d4e5f"]
    others = [
        ".idx.tmp-mine",
        f".idx2.tmp-{pid}-0a1b2c3d4e5f",
        f".idx.tmp-{os.getpid()}-0a1b2c3d4e5f",
        "idx.old",
    ]
    for name in ours + others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.faiss").write_bytes(b"x")
    EmbeddingIndex.build(np.eye(3, dtype=np.float32)).save(tmp_path / "idx")
    assert sorted(os.listdir(tmp_path)) == sorted(["idx", *others])


def test_disk_full_while_saving_is_one_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    EmbeddingIndex.build(np.eye(3, dtype=np.float32), info={"v": "old"}).save(tmp_path / "idx")

    def write_until_full(
        index: object, path: str
    ) -> None:  # what faiss raises on ENOSPC (checked on /dev/full)
        Path(path).write_bytes(b"IxF2 half")
        raise RuntimeError(
            f"Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: Error: "
            f"'ret == (size * 4)' failed: write error in {path}: 4051 != 320000 (No space left on device)"
        )

    monkeypatch.setattr(module.faiss, "write_index", write_until_full)
    with pytest.raises(
        StoreError, match=r"cannot write \S*idx/index\.faiss: No space left on device; the previous index"
    ):
        EmbeddingIndex.build(np.eye(5, dtype=np.float32), info={"v": "new"}).save(tmp_path / "idx")
    monkeypatch.undo()

    def json_until_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(module.json, "dump", json_until_full)
    with pytest.raises(StoreError, match=r"cannot write .*meta\.json: No space left on device"):
        EmbeddingIndex.build(np.eye(5, dtype=np.float32), info={"v": "new"}).save(tmp_path / "idx")
    monkeypatch.undo()
    assert EmbeddingIndex.load(tmp_path / "idx").info == {"v": "old"}
    assert sorted(os.listdir(tmp_path)) == ["idx"]
