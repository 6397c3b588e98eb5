"""Sharded extraction (``extract_embeddings(shard=(I, N))`` / ``embed --shard I/N``) and ``merge_shards``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frugalvision.cli.main import cli
from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore, extract_embeddings, merge_shards, parse_shard, shard_rows
from frugalvision.errors import StoreError
from frugalvision.models import create_backbone

# Each shard meets its images in other batches than one process does; on CPU a float32 forward pass of the
# same image gives the same vector up to rounding whatever the batch, so vectors agree to 1e-6 (observed: 0).
VECTOR_ATOL = 1e-6


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("test_efficientnet", pretrained=False)


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
def test_shards_cover_every_row_exactly_once(mode: str) -> None:
    for total in (0, 1, 5, 12, 97, 1000):
        for count in (1, 2, 3, 7, 16):
            parts = [shard_rows(total, i, count, mode) for i in range(count)]
            joined = np.concatenate(parts)
            # exactly once: sorted union is 0..total-1 and nothing repeats
            assert len(joined) == total and np.array_equal(np.sort(joined), np.arange(total))
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            for i, part in enumerate(parts):
                assert np.all(np.diff(part) > 0)
                if mode == "strided":  # independent reference: Python slicing
                    assert part.tolist() == list(range(total))[i::count]
                else:  # one block each, blocks in order
                    assert part.tolist() == list(range(part[0], part[-1] + 1)) if len(part) else True
            if mode == "contiguous":
                assert joined.tolist() == list(range(total))


def test_parse_shard_errors() -> None:
    assert parse_shard("3/8") == (3, 8) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad, msg in (("8/8", "numbered 0..7"), ("1/0", ">= 1"), ("a/b", "I/N"), ("3", "I/N")):
        with pytest.raises(ValueError, match=msg):
            parse_shard(bad)


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
def test_merged_shards_equal_one_process(tiny_folder: Path, tmp_path: Path, backbone, mode: str) -> None:
    (tiny_folder / "green" / "green_1.png").write_bytes(b"not an image")  # skipped by every run alike
    ds = read_folder(tiny_folder, on_corrupt="skip")
    kw = {"batch_size": 2, "num_workers": 0, "progress": False}
    with pytest.warns(UserWarning, match="skipped 1"):
        whole = extract_embeddings(backbone, ds, tmp_path / "whole", **kw)
    shards = []
    for i in (2, 0, 1):  # order of the runs does not matter
        with warnings.catch_warnings(record=True):  # the shard holding the bad image warns
            warnings.simplefilter("always")
            s = extract_embeddings(backbone, ds, tmp_path / f"s{i}", shard=(i, 3), shard_mode=mode, **kw)
        assert s.info["shard"]["index"] == i and s.info["shard"]["count"] == 3
        shards.append(tmp_path / f"s{i}")
    assert sum(len(EmbeddingStore.load(p)) for p in shards) == len(whole) == 11
    merged = merge_shards(shards, tmp_path / "merged")
    loaded = EmbeddingStore.load(tmp_path / "merged")
    for m in (merged, loaded):
        assert m.paths == whole.paths and m.labels == whole.labels and m.classes == whole.classes
        np.testing.assert_allclose(m.vectors, whole.vectors, atol=VECTOR_ATOL, rtol=0)
        assert "shard" not in m.info and m.info["backbone"] == whole.info["backbone"]
        assert [x["path"] for x in m.info["skipped"]] == [x["path"] for x in whole.info["skipped"]]


def test_shard_resumes_and_refuses_another_layout(
    tiny_folder: Path, tmp_path: Path, backbone, monkeypatch
) -> None:
    import frugalvision.embeddings.extract as ex

    ds = read_folder(tiny_folder)
    kw = {"batch_size": 2, "shard_size": 2, "num_workers": 0, "progress": False}
    calls = {"n": 0}
    real = ex.embed_images

    def crashing(bb, images, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(bb, images, **k)

    monkeypatch.setattr(ex, "embed_images", crashing)
    out = tmp_path / "s1"
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(backbone, ds, out, shard=(1, 2), **kw)
    assert len(list((out / "parts").glob("part-*.npz"))) == 1
    with pytest.raises(StoreError, match=r"shard 1/2 \(contiguous\), not of shard 0/2"):
        extract_embeddings(backbone, ds, out, shard=(0, 2), **kw)
    with pytest.raises(StoreError, match="not of the whole data set"):
        extract_embeddings(backbone, ds, out, **kw)
    calls["n"] = -100
    embedded = []
    monkeypatch.setattr(ex, "embed_images", lambda bb, im, **k: embedded.append(len(im)) or real(bb, im, **k))
    resumed = extract_embeddings(backbone, ds, out, shard=(1, 2), **kw)
    assert sum(embedded) == 4  # 6 images in the shard, 2 kept from the killed run
    assert resumed.paths == [str(p) for p in ds.paths[6:]]


def _shards(tmp_path: Path, folder: Path, backbone, n: int, name: str = "s", **kw) -> list[Path]:
    ds = read_folder(folder)
    outs = []
    for i in range(n):
        extract_embeddings(
            backbone, ds, tmp_path / f"{name}{i}", shard=(i, n), num_workers=0, progress=False, **kw
        )
        outs.append(tmp_path / f"{name}{i}")
    return outs


def test_merge_refuses_gap_overlap_and_mixed_shards(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    two = _shards(tmp_path, tiny_folder, backbone, 2)
    with pytest.raises(StoreError, match=r"missing \(a gap\): 1/2"):
        merge_shards(two[:1])
    shutil.copytree(two[0], tmp_path / "copy0")
    with pytest.raises(StoreError, match=rf"overlap: {tmp_path / 'copy0'} and {two[0]} are both shard 0/2"):
        merge_shards([*two, tmp_path / "copy0"])
    three = _shards(tmp_path, tiny_folder, backbone, 3, name="t")
    with pytest.raises(StoreError, match=rf"shard {three[1]} does not belong .*count: 3 vs 2"):
        merge_shards([two[0], three[1]])
    strided = _shards(tmp_path, tiny_folder, backbone, 2, name="st", shard_mode="strided")
    with pytest.raises(StoreError, match=rf"shard {strided[1]} .*mode: 'strided' vs 'contiguous'"):
        merge_shards([two[0], strided[1]])
    unnormalized = _shards(tmp_path, tiny_folder, backbone, 2, name="u", normalize=False)
    with pytest.raises(
        StoreError, match=rf"shard {unnormalized[1]} was made with other settings .*normalized"
    ):
        merge_shards([two[0], unnormalized[1]])
    torch.manual_seed(1)
    other = create_backbone("test_vit", pretrained=False)
    other_model = _shards(tmp_path, tiny_folder, other, 2, name="o")
    with pytest.raises(StoreError, match=rf"shard {other_model[1]} was made with other settings .*backbone"):
        merge_shards([two[0], other_model[1]])
    (tiny_folder / "red" / "red_9.png").write_bytes((tiny_folder / "red" / "red_0.png").read_bytes())
    other_listing = _shards(tmp_path, tiny_folder, backbone, 2, name="l")
    with pytest.raises(StoreError, match=rf"shard {other_listing[1]} .*different data-set listing"):
        merge_shards([two[0], other_listing[1]])
    whole = tmp_path / "whole"
    extract_embeddings(backbone, read_folder(tiny_folder), whole, num_workers=0, progress=False)
    with pytest.raises(StoreError, match=rf"{whole} is not a shard store"):
        merge_shards([two[0], whole])


def test_embed_cli_shard_and_merge(tiny_folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "embed",
        str(tiny_folder),
        "-m",
        "test_efficientnet",
        "--no-pretrained",
        "-j",
        "0",
        "--no-progress",
    ]
    for i in range(2):
        r = runner.invoke(
            cli, [*base, "--shard", f"{i}/2", "--shard-mode", "strided", "-o", str(tmp_path / f"s{i}")]
        )
        assert r.exit_code == 0, r.output
        assert f"wrote 6 embeddings of size 256 to {tmp_path / f's{i}'} (shard {i}/2, strided)" in r.output
    r = runner.invoke(
        cli, ["embed", "--merge", str(tmp_path / "m"), str(tmp_path / "s1"), str(tmp_path / "s0")]
    )
    assert r.exit_code == 0, r.output
    merged = EmbeddingStore.load(tmp_path / "m")
    assert merged.paths == [str(p) for p in read_folder(tiny_folder).paths]

    r = runner.invoke(cli, ["embed", "--merge", str(tmp_path / "m2"), str(tmp_path / "s1")])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: shards missing (a gap): 0/2; got 1 of 2"
    ]
    r = runner.invoke(cli, [*base, "--shard", "2/2", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "numbered 0..1" in r.output
    r = runner.invoke(cli, ["embed", str(tiny_folder), str(tiny_folder), "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "several go with --merge" in r.output
    r = runner.invoke(cli, ["embed", str(tiny_folder)])
    assert r.exit_code == 2 and "--out" in r.output
