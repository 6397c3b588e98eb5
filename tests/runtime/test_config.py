"""``deploy.json`` read back from disk: every field checked, model files kept inside the bundle folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from frugalvision.errors import StoreError
from frugalvision.runtime import Predictor, read_deploy_config
from helpers import make_bundle


def _rewrite(folder: Path, edit) -> Path:
    """Apply ``edit(dict)`` to ``folder/deploy.json``; returns the file."""
    file = folder / "deploy.json"
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))
    return file


def _set(*keys: str, value: object):
    def edit(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


BAD_FIELDS = [
    (
        ("models", "fp32", "file"),
        "../../etc/passwd",
        r"'models\.fp32\.file' must be a file inside the bundle folder",
    ),
    (("models", "fp32", "file"), "/etc/passwd", r"'models\.fp32\.file' must be a file inside"),
    (("models", "fp32", "file"), "sub/../../model.onnx", r"'models\.fp32\.file'"),
    (("models", "fp32", "file"), "C:\\models\\model.onnx", r"'models\.fp32\.file'"),
    (
        ("data_config", "crop_pct"),
        0.01,
        r"'data_config\.crop_pct' must be a number in \(0\.3, 1\.5\], got 0\.01",
    ),
    (("data_config", "input_size"), [3, 20000, 20000], r"'data_config\.input_size' must be \[3, H, W\]"),
    (("data_config", "mean"), "imagenet", r"'data_config\.mean' must be 3 finite numbers"),
    (("classes",), "notalist", "'classes' must be a list of strings, got 'notalist'"),
    (("thresholds",), ["0.5"], r"'thresholds\[0\]' must be a number in \[0, 1\]"),
    (("output",), 5, "'output' must be an object"),
    (("output", "size"), "5", r"'output\.size' must be an integer"),
    (("output", "size"), True, r"'output\.size' must be an integer"),
]


@pytest.mark.parametrize(
    ("keys", "value", "message"), BAD_FIELDS, ids=[".".join(k) + f"={v!r}" for k, v, _ in BAD_FIELDS]
)
def test_bad_fields_are_refused_naming_file_and_field(tiny_bundle, keys, value, message) -> None:
    folder, _ = tiny_bundle
    file = _rewrite(folder, _set(*keys, value=value))
    with pytest.raises(StoreError, match=message) as caught:
        Predictor(folder)
    assert str(caught.value).startswith(f"{file.resolve()}: ") or str(caught.value).startswith(f"{file}: ")


def test_a_file_outside_the_folder_is_refused_even_when_it_exists(tiny_bundle, tmp_path: Path) -> None:
    folder, _ = tiny_bundle
    other = tmp_path / "other"
    make_bundle(other, seed=1)  # a valid model, but outside the bundle
    _rewrite(folder, _set("models", "fp32", "file", value="../other/model.onnx"))
    with pytest.raises(StoreError, match=r"models\.fp32\.file"):
        Predictor(folder)
    # a symbolic link inside the folder that leads out of it is refused too
    (folder / "link.onnx").symlink_to(other / "model.onnx")
    _rewrite(folder, _set("models", "fp32", "file", value="link.onnx"))
    with pytest.raises(
        StoreError, match=r"models\.fp32\.file' must be a file inside the bundle folder .*links"
    ):
        Predictor(folder)
    (folder / "sub").mkdir()
    (folder / "model.onnx").rename(folder / "sub" / "model.onnx")  # a sub-folder is fine
    _rewrite(folder, _set("models", "fp32", "file", value="sub/model.onnx"))
    assert Predictor(folder).model_path == (folder / "sub" / "model.onnx").resolve()


def test_read_deploy_config_checks_the_fields_too(tiny_bundle) -> None:
    folder, _ = tiny_bundle
    _rewrite(folder, _set("data_config", "crop_pct", value=0.01))
    with pytest.raises(StoreError, match=r"deploy\.json: field 'data_config\.crop_pct'"):
        read_deploy_config(folder)


@pytest.mark.parametrize(
    ("keys", "value", "field"),
    [(("data_config", "crop_pct"), 0.01, "data_config.crop_pct"),
     (("models", "fp32", "file"), "../../etc/passwd", "models.fp32.file"),
     (("output", "size"), 512, "output.size")],
)  # fmt: skip
def test_cli_refuses_a_bad_deploy_json_in_one_line(tmp_path: Path, photos: list, keys, value, field) -> None:
    from PIL import Image

    from frugalvision.cli import tagging  # noqa: F401  (registers `predict`)
    from frugalvision.cli.main import cli

    folder = tmp_path / "tags-onnx"
    classes = tuple("abcde")
    make_bundle(folder, task="multilabel", classes=classes)
    if field == "output.size":  # 512 outputs need 512 class names to pass the other checks
        _rewrite(folder, _set("classes", value=[f"c{i}" for i in range(512)]))
    _rewrite(folder, _set(*keys, value=value))
    Image.fromarray(photos[0]).save(tmp_path / "a.png")
    result = CliRunner().invoke(cli, ["predict", str(folder), str(tmp_path / "a.png")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, (result.output, result.exception)
    assert "deploy.json" in errors[0] and f"'{field}'" in errors[0] and "Traceback" not in result.output
