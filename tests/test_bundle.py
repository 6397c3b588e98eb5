from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import frugalvision
from frugalvision.bundle import (
    BUNDLE_VERSION,
    embedder_from_spec,
    is_bundle,
    load,
    read_bundle_config,
    save_bundle,
)
from frugalvision.data import read_folder
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import StoreError
from frugalvision.models import EmbeddingModel, create_embedding_model

pytestmark = pytest.mark.usefixtures("one_thread")


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


# ------------------------------------------------------------------------------------------ damaged bundles
def _cli_error(args: list[str]) -> str:
    """Run the CLI in-process; it must fail with exactly one ``Error:`` line and no traceback. Returns the line."""
    from click.testing import CliRunner

    from frugalvision.cli import retrieval  # noqa: F401  (registers `embed`)
    from frugalvision.cli.main import cli

    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, (
        result.output,
        result.exception,
    )  # nothing else printed
    assert lines[0].startswith("Error:") and "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated header", "truncated data", "garbage header", "empty"])
def test_corrupt_or_truncated_weights_name_the_file(
    trained: EmbeddingModel, tmp_path: Path, tiny_folder: Path, damage: str
) -> None:
    folder = save_bundle(trained, tmp_path / "bundle")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    damaged = {
        "truncated header": data[:3000],
        "truncated data": data[: len(data) // 2],
        "garbage header": b"\xff" * 8 + data[8:],
        "empty": b"",
    }[damage]
    weights.write_bytes(damaged)
    with pytest.raises(StoreError, match=r"model\.safetensors is corrupt or truncated"):
        load(folder)
    line = _cli_error(["embed", str(tiny_folder), "--model", str(folder), "--out", str(tmp_path / "s")])
    assert str(weights) in line and "corrupt or truncated" in line


def _edit(config: dict, key: str, value: object) -> dict:
    """``config`` with the dotted ``key`` set to ``value`` (both data_config copies for preprocessing keys)."""
    out = json.loads(json.dumps(config))
    keys = [key] + ([f"model.{key}"] if key.startswith("data_config.") else [])
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node[p]
        node[last] = value
    return out


BAD_FIELDS = [
    ("task", 5, "'task' must be one of 'embedding', 'multilabel', 'classification', 'detection', got 5"),
    ("task", "segmentation", "'task' must be one of"),
    ("classes", "notalist", "'classes' must be a list of strings, got 'notalist'"),
    ("classes", ["a", 3], "'classes' must be a list of strings"),
    ("thresholds", [0.5], "'thresholds' must be null or a list of 2 numbers"),
    (
        "data_config.input_size",
        [3, 20000, 20000],
        r"'data_config\.input_size' must be \[3, H, W\] with 1 <= H, W <= 2048",
    ),
    ("data_config.input_size", [3, 32], r"'data_config\.input_size'"),
    ("data_config.crop_pct", 0.01, r"'data_config\.crop_pct' must be a number in \(0\.3, 1\.5\], got 0\.01"),
    ("data_config.crop_pct", "0.9", r"'data_config\.crop_pct'"),
    ("data_config.std", [0.2, 0.0, 0.2], r"'data_config\.std' must be 3 finite numbers > 0"),
    ("data_config.interpolation", "cubic", r"'data_config\.interpolation' must be one of"),
    ("model.head.embedding_size", "16", r"'model\.head\.embedding_size' must be an integer"),
    ("model.head.kind", 3, r"'model\.head\.kind' must be one of 'linear'"),
    ("model.pooling.gem_p", -1, r"'model\.pooling\.gem_p' must be a number in \(0, inf\)"),
    ("model.backbone.model_kwargs", {"img_size": 50000}, r"'model\.backbone\.model_kwargs\.img_size'"),
    ("history", {"epoch": 1}, "'history' must be null or a list of objects"),
    ("metrics", [1, 2], "'metrics' must be an object or null"),
    ("temperature", 0, r"'temperature' must be a number in \(0, inf\)"),
    ("temperature", "1.5", "'temperature' must be a number"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), BAD_FIELDS, ids=[f"{k}={v!r}" for k, v, _ in BAD_FIELDS]
)
def test_config_fields_are_checked_at_load(
    trained: EmbeddingModel, tmp_path: Path, key: str, value: object, message: str
) -> None:
    folder = save_bundle(trained, tmp_path / "bundle", classes=["a", "b"])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_edit(config, key, value)))
    with pytest.raises(StoreError, match=message) as caught:
        load(folder)
    assert str(caught.value).startswith(f"{folder / 'config.json'}: ")


def test_a_multilabel_config_needs_one_class_per_output(trained: EmbeddingModel, tmp_path: Path) -> None:
    folder = save_bundle(trained, tmp_path / "bundle", classes=["a", "b"])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "task": "multilabel"}))
    with pytest.raises(StoreError, match=r"config\.json: a multilabel model with 16 outputs"):
        read_bundle_config(folder)


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [("task", 5, "task"), ("data_config.input_size", [3, 20000, 20000], "data_config.input_size"),
     ("data_config.crop_pct", 0.01, "data_config.crop_pct")],
)  # fmt: skip
def test_cli_refuses_a_bad_config_in_one_line(
    trained: EmbeddingModel, tmp_path: Path, tiny_folder: Path, key: str, value: object, field: str
) -> None:
    folder = save_bundle(trained, tmp_path / "bundle")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_edit(config, key, value)))
    line = _cli_error(
        ["embed", str(tiny_folder), "--model", str(folder), "--out", str(tmp_path / "s"), "--workers", "0"]
    )
    assert f"{folder / 'config.json'}: field {field!r}" in line
    assert not (tmp_path / "s").exists()


def test_detection_report_names_the_depthwise_and_dfl_options() -> None:
    from frugalvision.bundle import render_report
    from frugalvision.models.detection import DetectorConfig

    def model_line(**options: object) -> str:
        det = DetectorConfig(num_classes=2, pretrained=False, **options).to_dict()  # type: ignore[arg-type]
        config = {"task": "detection", "classes": ["a", "b"], "model": {"detector": det}}
        return next(line for line in render_report(config).splitlines() if line.startswith("- backbone:"))

    assert "depthwise" not in model_line() and "focal" not in model_line()
    line = model_line(depthwise=True, dfl_bins=16, repconv=True)
    assert line.endswith(", RepConv, depthwise neck and head, distribution focal loss (16 bins)"), line
