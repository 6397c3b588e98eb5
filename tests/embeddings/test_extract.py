from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import CorruptImageError, DataWarning, ImageTooLargeError, StoreError
from frugalvision.models import create_backbone


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("test_efficientnet", pretrained=False)


def test_extract_writes_store_in_dataset_order(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    ds = read_folder(tiny_folder)
    store = extract_embeddings(backbone, ds, tmp_path / "store", batch_size=5, num_workers=0, progress=False)
    assert len(store) == len(ds) == 12
    assert store.paths == [str(p) for p in ds.paths]
    assert store.labels[0] == ("blue",) and store.classes == ["blue", "green", "red"]
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, rtol=1e-5)
    # the same vectors as a plain forward pass with the backbone's own preprocessing
    from frugalvision.data import load_image

    x = torch.stack([backbone.transform()(load_image(p)) for p in ds.paths[:3]])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(backbone(x), dim=1).numpy()
    np.testing.assert_allclose(store.vectors[:3], ref, atol=1e-5)
    loaded = EmbeddingStore.load(tmp_path / "store")
    np.testing.assert_array_equal(loaded.vectors, store.vectors)
    assert loaded.labels == store.labels and loaded.info["backbone"]["name"] == "test_efficientnet"
    assert not (tmp_path / "store" / "parts").exists()


def test_unnormalized_and_workers(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    ds = read_folder(tiny_folder)
    a = extract_embeddings(backbone, ds, tmp_path / "a", num_workers=2, normalize=False, progress=False)
    b = extract_embeddings(backbone, ds, tmp_path / "b", num_workers=0, normalize=False, progress=False)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)  # deterministic order with workers
    assert not np.allclose(np.linalg.norm(a.vectors, axis=1), 1.0)


class _Crash(RuntimeError):
    pass


def test_resume_after_interruption_embeds_only_the_rest(
    tiny_folder: Path, tmp_path: Path, backbone, monkeypatch
) -> None:
    ds = read_folder(tiny_folder)
    full = extract_embeddings(backbone, ds, tmp_path / "full", batch_size=2, num_workers=0, progress=False)

    import frugalvision.embeddings.extract as ex

    calls = {"n": 0}
    real = ex.embed_images

    def crashing(bb, images, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # die in the middle of the 4th batch, after 3 shards of 2 images
            raise _Crash("killed")
        return real(bb, images, **kw)

    monkeypatch.setattr(ex, "embed_images", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(_Crash):
        extract_embeddings(backbone, ds, out, batch_size=2, shard_size=2, num_workers=0, progress=False)
    assert len(list((out / "parts").glob("part-*.npz"))) == 3
    assert not EmbeddingStore.exists(out)

    seen: list[int] = []

    def counting(bb, images, **kw):
        seen.append(len(images))
        return real(bb, images, **kw)

    monkeypatch.setattr(ex, "embed_images", counting)
    resumed = extract_embeddings(backbone, ds, out, batch_size=2, shard_size=2, num_workers=0, progress=False)
    assert sum(seen) == 12 - 6  # only what was not finished
    assert resumed.paths == full.paths
    np.testing.assert_array_equal(resumed.vectors, full.vectors)  # bit-exact
    # a third run has nothing to do
    seen.clear()
    extract_embeddings(backbone, ds, out, num_workers=0, progress=False)
    assert seen == []


def test_other_settings_are_refused_unless_overwrite(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    ds = read_folder(tiny_folder)
    extract_embeddings(backbone, ds, tmp_path / "s", num_workers=0, progress=False)
    with pytest.raises(StoreError, match=r"different settings.*normalized"):
        extract_embeddings(backbone, ds, tmp_path / "s", num_workers=0, normalize=False, progress=False)
    s = extract_embeddings(
        backbone, ds, tmp_path / "s", num_workers=0, normalize=False, overwrite=True, progress=False
    )
    assert not s.normalized


def test_corrupt_images_skipped_with_warning_or_fail(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    bad = tiny_folder / "red" / "red_broken.png"
    bad.write_bytes(b"definitely not a png")
    ds = read_folder(tiny_folder)
    with pytest.warns(DataWarning, match=r"(?s)skipped 1 unreadable image.*red_broken\.png"):
        store = extract_embeddings(backbone, ds, tmp_path / "skip", num_workers=0, progress=False)
    assert len(store) == 12 and store.info["skipped"][0]["path"].endswith("red_broken.png")
    failing = read_folder(tiny_folder, on_corrupt="fail")
    with pytest.raises(CorruptImageError, match=r"red_broken\.png"):
        extract_embeddings(backbone, failing, tmp_path / "fail", num_workers=0, progress=False)


def test_store_load_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="folder missing"):
        EmbeddingStore.load(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "info.json").write_text("{}")
    with pytest.raises(StoreError, match=r"vectors\.npy is missing"):
        EmbeddingStore.load(tmp_path / "half")
    store = EmbeddingStore(np.zeros((2, 3)), ["a", "b"], [("x",), ()], classes=["x"])
    store.save(tmp_path / "ok")
    (tmp_path / "ok" / "items.jsonl").write_text('{"path": "a", "labels": ["x"]}\nnot json\n')
    with pytest.raises(StoreError, match=r"items.jsonl:2: malformed row"):
        EmbeddingStore.load(tmp_path / "ok")
    with pytest.raises(StoreError, match="inconsistent"):
        EmbeddingStore(np.zeros((2, 3)), ["a"], [()])
    np.testing.assert_array_equal(store.label_ids(), [0, -1])


def test_long_images_skipped_or_fail_before_resizing(
    tiny_folder: Path, tmp_path: Path, backbone, long_png, bounded_resize
) -> None:
    """1 x N PNGs that the eval transform would resize to gigabytes follow on_corrupt (issue 12, item 1)."""
    long_png(1, 30000, name="tiny/red/tall.png")
    long_png(6000, 1, name="tiny/blue/wide.png")
    with pytest.warns(DataWarning, match=r"(?s)skipped 2 unreadable image.*wide\.png: 6000x1 pixels has an aspect"
                                         r".*tall\.png: 1x30000 pixels has an aspect ratio of 30000:1"):  # fmt: skip
        store = extract_embeddings(
            backbone, read_folder(tiny_folder), tmp_path / "skip", num_workers=0, progress=False
        )
    assert len(store) == 12
    assert sorted(Path(s["path"]).name for s in store.info["skipped"]) == ["tall.png", "wide.png"]
    failing = read_folder(tiny_folder, on_corrupt="fail")
    with pytest.raises(ImageTooLargeError, match=r"wide\.png: 6000x1 pixels has an aspect ratio of 6000:1"):
        extract_embeddings(backbone, failing, tmp_path / "fail", num_workers=0, progress=False)


def test_embed_cli_long_image(tiny_folder: Path, tmp_path: Path, long_png, bounded_resize) -> None:
    """`frugalvision embed --on-corrupt skip|fail` on a folder holding a 1 x 30000 PNG."""
    from click.testing import CliRunner

    from frugalvision.cli import retrieval  # noqa: F401  (registers the command)
    from frugalvision.cli.main import cli

    long_png(1, 30000, name="tiny/green/tall.png")
    args = [
        "embed",
        str(tiny_folder),
        "-m",
        "test_efficientnet",
        "--no-pretrained",
        "--workers",
        "0",
        "--no-progress",
    ]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "wrote 12 embeddings" in r.output
    assert "Warning: skipped 1 unreadable image(s):" in r.output and "tall.png: 1x30000 pixels" in r.output
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "f"), "--on-corrupt", "fail"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ") and "tall.png: 1x30000 pixels" in r.output


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_shards_are_written_by_time_as_well_as_by_count(
    tiny_folder: Path, tmp_path: Path, backbone, monkeypatch
) -> None:
    import frugalvision.embeddings.extract as ex

    ds = read_folder(tiny_folder)
    full = extract_embeddings(backbone, ds, tmp_path / "full", batch_size=2, num_workers=0, progress=False)
    clock = {"t": 0.0}

    def slow_clock() -> float:  # every reading is 25 s later: a slow model on a slow machine
        clock["t"] += 25.0
        return clock["t"]

    real = ex.embed_images
    calls = {"n": 0}

    def crashing(bb, images, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Crash("killed")
        return real(bb, images, **kw)

    monkeypatch.setattr(ex, "_clock", slow_clock)
    monkeypatch.setattr(ex, "embed_images", crashing)
    out = tmp_path / "timed"
    with pytest.raises(_Crash):  # far fewer images than shard_size, but a minute passed: shards exist
        extract_embeddings(
            backbone, ds, out, batch_size=2, shard_size=1000, shard_seconds=60, num_workers=0, progress=False
        )
    shards = sorted(p.name for p in (out / "parts").iterdir())
    assert shards and all(name.startswith("part-") for name in shards), shards
    monkeypatch.setattr(ex, "embed_images", real)
    resumed = extract_embeddings(backbone, ds, out, batch_size=2, num_workers=0, progress=False)
    np.testing.assert_array_equal(resumed.vectors, full.vectors)  # bit-exact
    with pytest.raises(ValueError, match="shard_seconds must be > 0"):
        extract_embeddings(backbone, ds, out, shard_seconds=0, num_workers=0, progress=False)


def test_default_shards_lose_at_most_256_images() -> None:
    import inspect

    defaults = inspect.signature(extract_embeddings).parameters
    assert defaults["shard_size"].default == 256 and defaults["shard_seconds"].default == 60.0


def test_disk_full_while_writing_a_shard(tiny_folder: Path, tmp_path: Path, backbone, monkeypatch) -> None:
    import frugalvision.embeddings.extract as ex

    ds = read_folder(tiny_folder)
    full = extract_embeddings(backbone, ds, tmp_path / "full", batch_size=2, num_workers=0, progress=False)
    real_savez = np.savez
    calls = {"n": 0}

    def savez_until_full(file, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third shard: half a zip file, then the disk is full
            Path(file).write_bytes(b"PK\x03\x04 half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(file, *args, **kwargs)

    monkeypatch.setattr(ex.np, "savez", savez_until_full)
    out = tmp_path / "s"
    with pytest.raises(StoreError, match=r"cannot write .*parts/part-00002\.npz: No space left on device"):
        extract_embeddings(backbone, ds, out, batch_size=2, shard_size=2, num_workers=0, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-00000.npz", "part-00001.npz"]
    resumed = extract_embeddings(backbone, ds, out, batch_size=2, shard_size=2, num_workers=0, progress=False)
    np.testing.assert_array_equal(resumed.vectors, full.vectors)


def test_disk_full_while_saving_the_store_keeps_the_shards(
    tiny_folder: Path, tmp_path: Path, backbone, monkeypatch
) -> None:
    import frugalvision.embeddings.extract as ex
    import frugalvision.embeddings.store as st

    ds = read_folder(tiny_folder)

    def full_disk(file, *args, **kwargs):
        Path(file).write_bytes(b"\x93NUM")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(st.np, "save", full_disk)
    out = tmp_path / "s"
    with pytest.raises(StoreError, match=r"cannot write .*vectors\.npy: No space left on device"):
        extract_embeddings(backbone, ds, out, batch_size=4, shard_size=4, num_workers=0, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["s", "tiny"]  # no partial store folder beside it
    assert len(list((out / "parts").glob("part-*.npz"))) == 3  # the work is kept
    seen: list[int] = []
    real = ex.embed_images
    monkeypatch.setattr(ex, "embed_images", lambda bb, x, **kw: seen.append(len(x)) or real(bb, x, **kw))
    assert len(extract_embeddings(backbone, ds, out, num_workers=0, progress=False)) == 12 and seen == []


def test_leftovers_of_a_killed_run_are_cleaned(tiny_folder: Path, tmp_path: Path, backbone) -> None:
    ds = read_folder(tiny_folder)
    out = tmp_path / "s"
    pid = _dead_pid()
    (out / "parts").mkdir(parents=True)
    (out / "parts" / f".part-00000.tmp-{pid}.npz").write_bytes(b"PK half")  # killed while writing a shard
    (tmp_path / f".s.tmp-{pid}-x81kq0").mkdir()  # killed while saving the store
    (tmp_path / ".s.tmp-keep").mkdir()  # not one of ours
    extract_embeddings(backbone, ds, out, num_workers=0, progress=False)
    assert sorted(os.listdir(tmp_path)) == [".s.tmp-keep", "s", "tiny"]
    assert not (out / "parts").exists()


def test_a_store_moved_aside_by_a_killed_save_is_resumed(
    tiny_folder: Path, tmp_path: Path, backbone, monkeypatch
) -> None:
    import frugalvision.embeddings.extract as ex

    ds = read_folder(tiny_folder)
    out = tmp_path / "s"
    first = extract_embeddings(backbone, ds, out, num_workers=0, progress=False)
    os.replace(out, tmp_path / f".s.old-{_dead_pid()}")  # killed between the renames of a later save
    seen: list[int] = []
    real = ex.embed_images
    monkeypatch.setattr(ex, "embed_images", lambda bb, x, **kw: seen.append(len(x)) or real(bb, x, **kw))
    again = extract_embeddings(backbone, ds, out, num_workers=0, progress=False)
    assert seen == [] and sorted(os.listdir(tmp_path)) == [
        "s",
        "tiny",
    ]  # nothing embedded twice, nothing left over
    np.testing.assert_array_equal(again.vectors, first.vectors)
