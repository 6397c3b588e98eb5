from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import frugalvision
from frugalvision.bundle import BUNDLE_VERSION, is_bundle, load, read_bundle_config, save_bundle
from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import StoreError
from frugalvision.models import EmbeddingModel, create_embedding_model, embedder_from_spec


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trained() -> EmbeddingModel:
    torch.manual_seed(0)
    model = create_embedding_model(
        "test_efficientnet", pretrained=False, pooling="gem", embedding_size=16, input_size=32
    )
    with torch.no_grad():  # move away from the initialisation, so a fresh model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.pooling.gem.p.fill_(2.5)  # type: ignore[union-attr]
    return model.eval()


HISTORY = [
    {"epoch": 0, "train/loss": 1.5, "val/recall@1": 0.5, "val/map@r": 0.3},
    {"epoch": 1, "train/loss": 1.2, "val/recall@1": 0.6, "val/map@r": 0.4},
]


def test_round_trip_gives_identical_embeddings(trained: EmbeddingModel, tmp_path: Path) -> None:
    folder = save_bundle(
        trained,
        tmp_path / "bundle",
        classes=["a", "b"],
        loss={"name": "triplet", "kwargs": {"margin": 0.1}},
        training={"optim": {"lr": 1e-3}},
        metrics={"val/map@r": 0.4, "best_epoch": 1, "baseline": {"val/map@r": 0.2}},
        history=HISTORY,
        data={"train": {"images": 10}},
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "curves.png",
        "model.safetensors",
        "report.md",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary folder left behind
    loaded = frugalvision.load(folder)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)
    assert loaded.data_config == trained.data_config and not loaded.training
    config = loaded.config
    assert (
        config["format_version"] == BUNDLE_VERSION
        and config["frugalvision_version"] == frugalvision.__version__
    )
    assert config["model"]["backbone"]["name"] == "test_efficientnet"
    assert config["model"]["pooling"] == {"kind": "gem", "gem_p": 2.5, "gem_learnable": True}
    assert config["classes"] == ["a", "b"] and config["loss"]["kwargs"] == {"margin": 0.1}
    assert config["data_config"]["input_size"] == [3, 32, 32]
    report = (folder / "report.md").read_text()
    assert "| map@r | 0.4000 | 0.2000 |" in report and "optim.lr" in report
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert loaded.spec.to_dict() == {"bundle": str(folder), "id": config["id"], "arch": "test_efficientnet"}


def test_saving_again_replaces_the_bundle_with_a_new_id(trained: EmbeddingModel, tmp_path: Path) -> None:
    first = read_bundle_config(save_bundle(trained, tmp_path / "b"))["id"]
    second = read_bundle_config(save_bundle(trained, tmp_path / "b"))["id"]
    assert first != second and is_bundle(tmp_path / "b") and not is_bundle(tmp_path)


def test_load_errors(trained: EmbeddingModel, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no model bundle"):
        load(tmp_path / "missing")
    folder = save_bundle(trained, tmp_path / "b")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(StoreError, match="format version 99"):
        load(folder)
    (folder / "config.json").write_text(
        json.dumps(
            {**config, "model": {**config["model"], "head": {**config["model"]["head"], "embedding_size": 7}}}
        )
    )
    with pytest.raises(StoreError, match="does not fit"):
        load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(StoreError, match=r"model\.safetensors is missing"):
        load(folder)
    with pytest.raises(TypeError, match="EmbeddingModel"):
        save_bundle(torch.nn.Linear(2, 2), tmp_path / "x")  # type: ignore[arg-type]


def test_extraction_with_a_bundle_records_it_and_rebuilds_it(
    trained: EmbeddingModel, tmp_path: Path, tiny_folder: Path
) -> None:
    model = load(save_bundle(trained, tmp_path / "bundle"))
    dataset = read_folder(tiny_folder)
    store = extract_embeddings(model, dataset, tmp_path / "store", num_workers=0, progress=False)
    assert store.dim == 16 and store.info["backbone"]["bundle"] == str(tmp_path / "bundle")
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, rtol=1e-5)

    rebuilt = embedder_from_spec(EmbeddingStore.load(tmp_path / "store").info["backbone"])
    again = extract_embeddings(rebuilt, dataset, tmp_path / "store2", num_workers=0, progress=False)
    np.testing.assert_array_equal(again.vectors, store.vectors)

    save_bundle(trained, tmp_path / "bundle")  # replaced: a new id
    with pytest.raises(StoreError, match="was replaced"):
        embedder_from_spec(store.info["backbone"])
