"""The shared CLI options: help defaults read from the configuration, ``--task`` from the task registry, one
default model, and a command line that starts without torch."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli

_DEFAULT = re.compile(r"\[default: ([^\]]+)\]")


def _expected(param: click.Parameter, value: Any) -> str:
    """How a configuration value should read in help: a flag pair by the name of the default side (as click shows
    it), anything else as written (floats compared as numbers by the caller)."""
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return (param.opts if value else param.secondary_opts)[0].lstrip("-")
    return str(value)


def _help_defaults(command: click.Command) -> dict[str, str]:
    """``param name -> X`` for each option whose help shows ``[default: X]`` (wrapped lines joined)."""
    ctx = click.Context(command, info_name=command.name)
    found = {}
    for param in command.params:
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record and (m := _DEFAULT.search(" ".join(record[1].split()))):
            found[param.name or ""] = m.group(1)
    return found


def _check(command: click.Command, config: Any, key_of: dict[str, str]) -> list[str]:
    """The options whose shown default equals the configuration's; fails on the first that differs."""
    checked = []
    for name, shown in _help_defaults(command).items():
        value = functools.reduce(getattr, key_of.get(name, name).split("."), config)
        if value is None:  # "one per core", "the student's own"...: said in words, not a config value
            continue
        param = next(p for p in command.params if p.name == name)
        shown_value = shown.split(" = ")[0]  # "auto = classes for embedding, ..." explains the auto
        if isinstance(value, float):
            assert float(shown_value) == value, (name, shown, value)
        else:
            assert shown_value == _expected(param, value), (name, shown, value)
        checked.append(name)
    return checked


def test_train_help_defaults_are_the_train_config_defaults() -> None:
    from frugalvision.cli.train import _FLAG_KEYS
    from frugalvision.train.config import TrainConfig

    checked = _check(cli.commands["train"], TrainConfig(), _FLAG_KEYS)
    assert {"epochs", "batch_size", "lr", "recipe", "task", "pretrained", "freeze_backbone"} <= set(checked)


def test_distill_help_defaults_are_the_distill_config_defaults() -> None:
    from frugalvision.distill.config import DistillConfig

    checked = _check(cli.commands["distill"], DistillConfig(), {})
    assert {"epochs", "batch_size", "lr", "temperature", "teacher", "student", "symmetric"} <= set(checked)


def test_help_output_shows_the_config_default() -> None:
    from frugalvision.distill.config import DistillConfig
    from frugalvision.train.config import TrainConfig

    train = CliRunner().invoke(cli, ["train", "--help"])
    assert train.exit_code == 0, train.output
    assert f"Training epochs. [x>=1] [default: {TrainConfig().trainer.epochs}]" in " ".join(
        train.output.split()
    )
    distill = CliRunner().invoke(cli, ["distill", "--help"])
    assert f"Training epochs. [x>=1] [default: {DistillConfig().epochs}]" in " ".join(distill.output.split())


def test_train_task_choices_come_from_the_task_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import frugalvision.train as train_pkg

    tasks = [*train_pkg.list_tasks(), "detection"]
    monkeypatch.setattr(train_pkg, "list_tasks", lambda: tasks)
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--task [embedding|multilabel|...]" in help_text  # help imports no registry (no torch)
    # "detection" passes the option check (no usage error, exit 2); the configuration then checks it
    result = CliRunner().invoke(cli, ["train", "--task", "detection"])
    assert result.exit_code == 1 and "Invalid value for '--task'" not in result.output, result.output
    bad = CliRunner().invoke(cli, ["train", "--task", "segmentation"])
    assert bad.exit_code == 2 and "'embedding', 'multilabel', 'classification', 'detection'" in bad.output, (
        bad.output
    )


def test_one_default_model_everywhere() -> None:
    from frugalvision._defaults import DEFAULT_MODEL
    from frugalvision.distill.config import DistillConfig
    from frugalvision.train.config import TrainConfig

    assert TrainConfig().model.name == DEFAULT_MODEL
    assert DistillConfig().teacher == DEFAULT_MODEL
    for name in ("embed", "discover", "demo"):
        command = cli.commands[name]
        model = next(p for p in command.params if p.name == "model")
        assert model.default == DEFAULT_MODEL, name


def test_cli_starts_without_torch() -> None:
    code = "import sys, frugalvision.cli.main; print(sorted(m for m in ('torch', 'timm', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_of_train_and_distill_imports_no_torch() -> None:
    """``train --help`` / ``distill --help`` read their defaults from the torch-free config modules."""
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from frugalvision.cli.main import cli; "
        "r = [CliRunner().invoke(cli, [c, '--help']) for c in ('train', 'distill')]; "
        "assert all(x.exit_code == 0 and '[default: 10]' in x.output for x in r[:1]), r[0].output; "
        "print(sorted(m for m in ('torch', 'timm', 'lightning') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize(
    ("command", "param", "names"),
    [
        ("train", "recipe", "frugalvision.train.recipes:RECIPES"),
        ("distill", "recipe", "frugalvision.train.recipes:RECIPES"),
        ("select", "rank_by", "frugalvision.selection:SCORES"),
    ],
)
def test_choices_written_in_the_cli_are_the_library_names(command: str, param: str, names: str) -> None:
    """Choices the command line states itself (importing their registry would import torch at start) are exactly
    the names the library knows."""
    import importlib

    module, _, attr = names.partition(":")
    expected = getattr(importlib.import_module(module), attr)
    option = next(p for p in cli.commands[command].params if p.name == param)
    assert sorted(option.type.choices) == sorted(expected)  # type: ignore[attr-defined]


def test_model_options_give_the_command_one_model_settings(tmp_path: Path) -> None:
    """``--model/--weights/--pretrained`` reach the command as one ModelSettings; the options themselves (names,
    defaults, help) are those of the three separate options."""
    from frugalvision.cli._options import DEFAULT_MODEL, ModelSettings, model_options

    got: list[ModelSettings] = []

    @click.command()
    @model_options()
    @click.option("--other", default=1)
    def command(model: ModelSettings, other: int) -> None:
        got.append(model)

    assert [p.name for p in command.params] == ["model", "weights", "pretrained", "other"]
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    runner = CliRunner()
    assert runner.invoke(command, []).exit_code == 0
    assert (
        runner.invoke(command, ["-m", "resnet18", "--weights", str(weights), "--no-pretrained"]).exit_code
        == 0
    )
    assert got == [ModelSettings(DEFAULT_MODEL, None, True), ModelSettings("resnet18", weights, False)]
    folder = runner.invoke(command, ["--weights", str(tmp_path)])
    assert folder.exit_code == 2 and "is a directory" in folder.output


@pytest.mark.parametrize(
    ("kind", "given", "ok"),
    [("file", "file", True), ("file", "folder", False), ("folder", "folder", True), ("folder", "file", False),
     ("any", "file", True), ("any", "folder", True), ("any", "missing", False)],
)  # fmt: skip
def test_input_option_takes_an_existing_path_of_its_kind(
    tmp_path: Path, kind: str, given: str, ok: bool
) -> None:
    from frugalvision.cli._options import input_option

    seen: list[Path | None] = []

    @click.command()
    @input_option("--thing", "thing_path", kind=kind, help="A thing.")
    def command(thing_path: Path | None) -> None:
        seen.append(thing_path)

    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    runner = CliRunner()
    assert runner.invoke(command, []).exit_code == 0 and seen == [None]
    result = runner.invoke(command, ["--thing", str(tmp_path / given)])
    assert (result.exit_code == 0) == ok, result.output
    if ok:
        assert seen[-1] == tmp_path / given and isinstance(seen[-1], Path)
    else:
        assert "Invalid value for '--thing'" in result.output
