"""``frugalvision export`` and ``frugalvision serve``: a backbone name to a served deploy bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from frugalvision.cli.main import cli


def _register() -> None:
    from frugalvision.cli import deploy, serve  # noqa: F401


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    import skimage.data as data

    root = tmp_path / "labelled"
    for cls, photo in (("cat", data.chelsea()), ("cup", data.coffee())):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.ascontiguousarray(photo[i * 20 : i * 20 + 200, i * 30 : i * 30 + 250])).save(
                root / cls / f"{i}.jpg"
            )
    return root


def test_export_int8_validate_json(tmp_path: Path, labelled: Path) -> None:
    _register()
    out = tmp_path / "deploy"
    args = ["export", "test_efficientnet", "--no-pretrained", "--exporter", "torchscript", "--out", str(out),
            "--int8", "--calibrate", str(labelled), "--calibration-images", "4", "--validate", str(labelled),
            "--speed-seconds", "0.01", "--bf16", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["parity_fp32"]["min_cosine"] >= 0.9999
    assert [r["precision"] for r in report["comparison"]] == ["fp32", "int8"]
    assert set(json.loads((out / "deploy.json").read_text())["models"]) == {"fp32", "int8", "bf16"}


def test_usage_errors(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "resnet18", "--int8", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--calibrate" in result.output
    (tmp_path / "notabundle").mkdir()
    result = runner.invoke(cli, ["export", str(tmp_path / "notabundle")])
    assert result.exit_code != 0 and "not a model bundle" in result.output
    result = runner.invoke(cli, ["serve", str(tmp_path / "notabundle")])
    assert result.exit_code == 1 and "deploy.json" in result.output
    for command in ("export", "serve"):
        help_text = runner.invoke(cli, [command, "--help"]).output
        assert "Show this message" in help_text


def test_export_transformer_records_the_fastest_model(tmp_path: Path, labelled: Path) -> None:
    """A ViT gets the fused and dynamic-int8 models, a measured choice in deploy.json, and serve runs it."""
    _register()
    out = tmp_path / "vit"
    args = ["export", "test_vit", "--no-pretrained", "--exporter", "torchscript", "--out", str(out),
            "--validate", str(labelled), "--speed-seconds", "0.1", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    deploy = json.loads((out / "deploy.json").read_text())
    assert set(deploy["models"]) == {"fp32", "fp32-fused", "int8-dynamic", "tome", "tome-int8-dynamic"}
    assert deploy["models"]["tome"]["parity_with_torch"]["min_cosine"] >= 0.9999  # Token Merging candidates
    engine = deploy["engine"]
    assert engine == report["engine"] and engine["precision"] in deploy["models"]
    assert {r["precision"] for r in engine["measured"]} == set(deploy["models"])
    assert engine["budget"]["max_accuracy_drop"] == 0.01  # --validate: the budget is accuracy, not cosine
    assert all("accuracy" in r for r in engine["measured"])

    from frugalvision.runtime import Predictor
    from frugalvision.serve import create_app

    app = create_app(Predictor(out, threads=1))
    assert engine["precision"] in app.description


def test_export_cnn_skips_transformer_paths(tmp_path: Path) -> None:
    _register()
    out = tmp_path / "cnn"
    args = ["export", "test_efficientnet", "--no-pretrained", "--exporter", "torchscript", "--out", str(out)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    deploy = json.loads((out / "deploy.json").read_text())
    assert set(deploy["models"]) == {"fp32"} and "engine" not in deploy
