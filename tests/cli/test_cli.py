"""Command-line round trips on real photos (scikit-image's samples) with the offline pretrained backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli, main
from frugalvision.demo import make_demo_dataset


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    return make_demo_dataset(
        root / "data", views_per_photo=4, photos=("chelsea", "coffee", "rocket"), size=96
    )


def _run(args: list[str]) -> str:
    main_module_registered()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def main_module_registered() -> None:
    from frugalvision.cli import demo, retrieval  # noqa: F401


def test_embed_index_search_evaluate_round_trip(photos: Path, tmp_path: Path) -> None:
    store, index = tmp_path / "store", tmp_path / "index"
    out = _run(["embed", str(photos), "--out", str(store), "--workers", "0", "--no-progress"])
    assert "wrote 12 embeddings of size 1280" in out

    metrics = json.loads(_run(["evaluate", str(store), "-k", "1", "-k", "3", "--json"]))
    assert metrics["count"] == 12
    assert set(metrics) >= {"recall@1", "recall@3", "precision@1", "r_precision", "map@r", "nmi"}
    # real ImageNet features separate crops of a cat, a cup of coffee and a rocket
    assert metrics["recall@1"] >= 0.9 and metrics["map@r"] > 0.6

    assert "indexed 12 vectors (ip, flat)" in _run(["index", str(store), "--out", str(index)])

    query = photos / "chelsea" / "chelsea_000.jpg"
    hits = json.loads(_run(["search", str(index), str(query), "-k", "3", "--json"]))
    paths = [h["path"] for h in hits[0]["results"]]
    assert str(query.resolve()) not in paths  # the query itself is excluded
    assert all(h["label"] == "chelsea" for h in hits[0]["results"])
    with_self = json.loads(_run(["search", str(index), str(query), "-k", "1", "--include-self", "--json"]))
    assert with_self[0]["results"][0]["path"] == str(query.resolve())

    grid = tmp_path / "grid.png"
    text = _run(["search", str(index), str(query), "-k", "2", "--grid", str(grid)])
    assert "similarity" in text and grid.stat().st_size > 0


def test_user_errors_are_one_line_messages(tmp_path: Path) -> None:
    main_module_registered()
    runner = CliRunner()
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "Error: no embedding store at" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        cli, ["embed", str(tmp_path), "--out", str(tmp_path / "s"), "--no-pretrained", "-m", "nonsense_net"]
    )
    assert r.exit_code == 1 and "Error:" in r.output


def test_every_command_and_option_has_help() -> None:
    import click

    main_module_registered()
    assert set(cli.commands) >= {"embed", "index", "search", "evaluate", "demo"}
    for name, command in cli.commands.items():
        assert command.help, f"command {name} has no help text"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"option {param.opts} of `frugalvision {name}` has no help text"
        assert CliRunner().invoke(cli, [name, "--help"]).exit_code == 0


def test_console_entry_point_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "frugalvision" in capsys.readouterr().out
