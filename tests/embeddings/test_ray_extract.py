"""``embed --ray``: extraction on Ray Data equals the single-process run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli
from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.models import create_backbone

MODEL = ["-m", "test_efficientnet", "--no-pretrained"]
# Ray batches the images differently from the single-process DataLoader; a float32 CPU forward pass may round
# differently with another batch, so vectors are compared to 1e-6 (observed: identical).
VECTOR_ATOL = 1e-6


@pytest.mark.slow  # starts a local Ray (about 30 s) and two actors that import torch: minutes on 2 busy cores
def test_ray_run_equals_single_process(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="pip install 'frugalvision[ray]'")
    from helpers import make_labelled_folder

    data = make_labelled_folder(tmp_path / "data", classes=4, per_class=6)
    (data / "class01" / "img2.png").write_bytes(b"not an image")  # skipped alike by both runs
    import torch

    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", pretrained=False)
    ds = read_folder(data, on_corrupt="skip")
    with pytest.warns(UserWarning, match="skipped 1"):
        single = extract_embeddings(
            backbone, ds, tmp_path / "single", batch_size=4, num_workers=0, progress=False
        )
    from frugalvision.embeddings.ray_extract import extract_embeddings_ray

    with pytest.warns(UserWarning, match="skipped 1"):
        on_ray = extract_embeddings_ray(
            backbone, ds, tmp_path / "ray", workers=2, num_cpus=2, batch_size=4, shard_size=5, progress=False
        )
    loaded = EmbeddingStore.load(tmp_path / "ray")
    for store in (on_ray, loaded):
        assert store.paths == single.paths and store.labels == single.labels and len(store) == 23
        np.testing.assert_allclose(store.vectors, single.vectors, atol=VECTOR_ATOL, rtol=0)
        assert store.info["skipped"] == single.info["skipped"]
        assert store.info["backbone"] == single.info["backbone"]
    assert not (tmp_path / "ray" / "parts").exists()


def test_a_finished_store_does_not_start_ray(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import frugalvision.embeddings.ray_extract as rx

    def no_ray(*args: object) -> None:
        raise AssertionError("Ray was started with nothing to do")

    monkeypatch.setattr(rx, "_start_ray", no_ray)
    import torch

    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", pretrained=False)
    ds = read_folder(tiny_folder)
    done = extract_embeddings(backbone, ds, tmp_path / "s", num_workers=0, progress=False)
    again = rx.extract_embeddings_ray(backbone, ds, tmp_path / "s", progress=False)
    assert again.paths == done.paths and np.array_equal(again.vectors, done.vectors)


def test_embed_ray_options(tiny_folder: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli, ["embed", str(tiny_folder), "-o", str(tmp_path / "s"), *MODEL, "--ray", "-j", "2"]
    )
    assert r.exit_code == 2 and "with --ray use --ray-workers" in r.output
    assert "--ray [ADDRESS]" in CliRunner().invoke(cli, ["embed", "--help"]).output
