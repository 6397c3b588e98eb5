"""``frugalvision train --task multilabel``, ``predict`` (training bundle and ONNX deploy bundle) and ``evaluate``
of a multilabel bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from frugalvision.cli import deploy, retrieval, tagging, train  # noqa: F401  (registers the commands)
from frugalvision.cli.main import cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]

TINY = [
    "--model", "test_efficientnet", "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--workers", "0",
    "--no-progress", "--set", "model.input_size=32",
]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(multilabel_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tags"
    args = ["train", "--task", "multilabel", "--data", str(multilabel_manifest), "--out", str(out)]
    result = CliRunner().invoke(
        cli, [*args, "--freeze-backbone", "--loss", "asl", "--partial", "selective", *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "map" in result.output and "tuned/cf1" in result.output and "frugalvision predict" in result.output
    return out / "model"


def test_predict_prints_labels_and_json(bundle: Path, multilabel_manifest: Path) -> None:
    folder = multilabel_manifest.parent
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(folder), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 48 and all(set(r) == {"path", "labels", "scores"} for r in rows)
    top = CliRunner().invoke(cli, ["predict", str(bundle), str(folder / "img000.png"), "--top-k", "2"])
    assert top.exit_code == 0 and top.output.count(",") == 1, top.output
    none = CliRunner().invoke(cli, ["predict", str(bundle), str(folder / "img000.png"), "--threshold", "1"])
    assert "(no label over its threshold)" in none.output


def test_predict_with_the_onnx_export_matches(
    bundle: Path, multilabel_manifest: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", str(bundle), "--out", str(tmp_path / "deploy")])
    assert exported.exit_code == 0, exported.output
    images = [str(multilabel_manifest.parent / f"img{i:03d}.png") for i in range(5)]
    torch_rows = [
        json.loads(x)
        for x in runner.invoke(cli, ["predict", str(bundle), *images, "--json"]).output.split("\n")
        if x
    ]
    onnx_rows = [
        json.loads(x)
        for x in runner.invoke(cli, ["predict", str(tmp_path / "deploy"), *images, "--json"]).output.split(
            "\n"
        )
        if x
    ]
    assert [r["labels"] for r in torch_rows] == [r["labels"] for r in onnx_rows]
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_evaluate_a_multilabel_bundle(bundle: Path, multilabel_manifest: Path) -> None:
    result = CliRunner().invoke(
        cli, ["evaluate", str(bundle), "--data", str(multilabel_manifest), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "CF1" in result.output and "white" in result.output
    as_json = CliRunner().invoke(
        cli, ["evaluate", str(bundle), "--data", str(multilabel_manifest), "--no-progress", "--json"]
    )
    report = json.loads(as_json.output)
    assert report["images"] == 48 and len(report["per_class"]) == 5 and 0 < report["metrics"]["map"] <= 1


def test_predict_errors(bundle: Path, multilabel_manifest: Path, tiny_folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(empty)])
    assert result.exit_code != 0 and "no image files found" in result.output
    wrong = CliRunner().invoke(
        cli, ["predict", str(tmp_path), str(multilabel_manifest.parent / "img000.png")]
    )
    assert wrong.exit_code != 0 and "Traceback" not in wrong.output
