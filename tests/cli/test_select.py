"""``frugalvision select`` end to end on timm's tiny random models and a local weights file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from frugalvision.cli.main import cli
from helpers import make_labelled_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_labelled_folder(tmp_path / "data", classes=3, per_class=4, size=20)


def _select(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["select", *args, "--no-progress", "-j", "0"])
    return result.exit_code, result.stdout, result.stderr


def test_json_table_and_png(folder: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from frugalvision.models import create_backbone

    torch.manual_seed(0)
    weights = tmp_path / "mine.safetensors"
    save_file(create_backbone("test_vit", pretrained=False).model.state_dict(), weights)
    out = tmp_path / "sel"
    code, stdout, stderr = _select(
        str(folder), "--models", f"test_resnet,test_vit={weights}", "--no-pretrained", "--out", str(out),
        "--no-speed", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    got = json.loads(stdout)
    assert got == json.loads((out / "selection.json").read_text())
    assert (got["images"], got["classes"], got["rank_by"]) == (12, 3, "linear_probe")
    assert {m["model"] for m in got["models"]} == {"test_resnet", "test_vit=mine.safetensors"}
    for m in got["models"]:
        assert set(m["scores"]) == {"knn_recall_at_1", "map_at_r", "linear_probe", "logme"}
        assert 0 <= m["scores"]["linear_probe"] <= 1 and m["parameters"] > 0 and m["speed"] == {}
    with Image.open(out / "selection.png") as png:
        assert png.format == "PNG" and png.width > 300

    code, stdout, _ = _select(
        str(folder), "--models", "test_resnet", "--no-pretrained", "--out", str(out), "--no-speed"
    )
    assert code == 0
    assert "12 images, 3 classes; ranked by linear_probe" in stdout
    assert stdout.splitlines()[1].split()[:4] == ["rank", "model", "R@1", "MAP@R"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "Error: unknown model 'resnet_nonexistent' in --models"),
        ("one_class", "has 1 class(es) with labelled images"),
        ("single_image", "class(es) class01 have a single image"),
        ("bad_entry", "write ARCH=FILE"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, case: str, message: str) -> None:
    classes = 1 if case == "one_class" else 2
    data = make_labelled_folder(tmp_path / "d", classes=classes, per_class=3, size=16)
    if case == "single_image":
        for name in ("img1.png", "img2.png"):
            (data / "class01" / name).unlink()
    models = {"unknown": "test_vit,resnet_nonexistent", "bad_entry": "test_vit="}.get(case, "test_vit")
    code, stdout, stderr = _select(
        str(data), "--models", models, "--no-pretrained", "--out", str(tmp_path / "o")
    )
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr + stdout
