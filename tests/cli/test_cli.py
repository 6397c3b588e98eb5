"""Command-line round trips on real photos (scikit-image's samples) with the offline pretrained backbone."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def test_search_from_a_relative_folder_and_with_a_new_photo(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long_png, bounded_resize
) -> None:
    """An index built from a relative path is searched with the same relative, an absolute and a new path."""
    shutil.copytree(photos, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    _run(["embed", "photos/", "--out", "store/", "--workers", "0", "--no-progress"])
    _run(["index", "store/", "--out", "index/"])
    query = "photos/chelsea/chelsea_001.jpg"
    for form in (query, str(tmp_path / query), "./photos/../photos/chelsea/chelsea_001.jpg"):
        hits = json.loads(_run(["search", "index/", form, "-k", "3", "--json"]))[0]["results"]
        assert len(hits) == 3 and query not in [h["path"] for h in hits], form  # the query is left out
        assert hits[0]["label"] == "chelsea"
    kept = json.loads(_run(["search", "index/", query, "-k", "1", "--include-self", "--json"]))
    assert kept[0]["results"][0]["path"] == query and kept[0]["results"][0]["score"] > 0.999
    # a photo that is not in the index: nothing to exclude, its k nearest indexed images
    make_demo_dataset(tmp_path / "new", views_per_photo=2, photos=("coffee",), size=96, seed=5)
    new = str(tmp_path / "new" / "coffee" / "coffee_000.jpg")
    hits = json.loads(_run(["search", "index/", new, "-k", "12", "--json"]))[0]["results"]
    assert len(hits) == 12 and hits[0]["label"] == "coffee"
    # a 1 x 30000 query is refused from its header, as one line naming it
    result = CliRunner().invoke(cli, ["search", "index/", str(long_png(1, 30000, name="tall.png"))])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (
        result.output.strip().splitlines() == [result.output.strip()] and "tall.png: 1x30000" in result.output
    )


def _console_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `frugalvision` command (as a user would), with this checkout's package."""
    import frugalvision

    exe = shutil.which("frugalvision")
    command = [exe] if exe else [sys.executable, "-c", "from frugalvision.cli.main import main; main()"]
    src = str(Path(frugalvision.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_try_command_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main_module_registered()
    monkeypatch.chdir(tmp_path)
    out = _run(["demo", "--views", "2", "--no-progress"])
    printed = re.search(r"^try: (frugalvision .*)$", out, flags=re.M)
    assert printed is not None, out
    words = shlex.split(printed.group(1))
    assert words[0] == "frugalvision"  # the console script, which test_console_script_runs_commands runs
    done = _run(words[1:])
    hits = re.findall(r"^ +\d+\. similarity [-\d.]+  (\S+)  \[(\w+)\]$", done, flags=re.M)
    assert len(hits) == 5, done
    assert words[3] not in [path for path, _ in hits]  # the query, an indexed image, is left out


def test_user_errors_are_one_line_messages(tmp_path: Path) -> None:
    main_module_registered()
    runner = CliRunner()
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "Error: no embedding store at" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        cli, ["embed", str(tmp_path), "--out", str(tmp_path / "s"), "--no-pretrained", "-m", "nonsense_net"]
    )
    assert r.exit_code == 1 and "Error:" in r.output


def test_full_disk_is_one_line_naming_the_file(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frugalvision.embeddings import extract
    from frugalvision.index import faiss_index

    main_module_registered()
    runner = CliRunner()
    store, index = tmp_path / "store", tmp_path / "index"

    def savez_full(file: object, *args: object, **kwargs: object) -> None:
        Path(str(file)).write_bytes(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(extract.np, "savez", savez_full)
    args = ["embed", str(photos), "--out", str(store), "--workers", "0", "--no-progress", "-b", "4"]
    r = runner.invoke(cli, args)
    monkeypatch.undo()
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert re.fullmatch(r"Error: cannot write .*part-00000\.npz: No space left on device.*", lines[-1]), lines
    assert not (store / "parts").exists() or not any((store / "parts").iterdir())  # no partial shard
    assert runner.invoke(cli, args).exit_code == 0

    assert runner.invoke(cli, ["index", str(store), "--out", str(index)]).exit_code == 0
    before = (index / "meta.json").read_bytes()

    def write_index_full(ix: object, path: str) -> None:
        Path(path).write_bytes(b"IxF2")
        raise RuntimeError(
            f"Error in faiss::write_index: write error in {path}: 1 != 9 (No space left on device)"
        )

    monkeypatch.setattr(faiss_index.faiss, "write_index", write_index_full)
    r = runner.invoke(cli, ["index", str(store), "--out", str(index), "--metric", "l2"])
    monkeypatch.undo()
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "index.faiss" in r.output and "No space left on device" in r.output
    assert (index / "meta.json").read_bytes() == before  # the old index is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "store"]
    assert len(json.loads(before)["paths"]) == 12


def test_embed_shard_size_flag(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frugalvision.embeddings import extract

    main_module_registered()
    real, calls = extract.embed_images, {"n": 0}

    def killed_at_third_batch(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "embed_images", killed_at_third_batch)
    store = tmp_path / "store"
    args = ["embed", str(photos), "--out", str(store), "--workers", "0", "--no-progress", "-b", "2"]
    CliRunner().invoke(cli, [*args, "--shard-size", "2"])
    assert len(list((store / "parts").glob("part-*.npz"))) == 2  # 2 batches done, 2 shards kept
    r = CliRunner().invoke(cli, [*args, "--shard-size", "0"])
    assert r.exit_code == 2 and "--shard-size" in r.output
    # the help states the library's defaults (the CLI leaves them to it, so that it need not import torch)
    help_text = " ".join(CliRunner().invoke(cli, ["embed", "--help"]).output.split())
    assert f"at most these [default: {extract.DEFAULT_SHARD_SIZE}]" in help_text
    assert f"last save [default: {extract.DEFAULT_SHARD_SECONDS:g}]" in help_text


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


def test_console_script_runs_commands(tmp_path: Path) -> None:
    """The installed ``frugalvision`` script in a fresh process (cheap: it imports no torch to list commands).

    The other tests invoke the commands in-process (click's ``CliRunner``); the training tests' SIGKILL and DDP
    runs start the script for real."""
    done = _console_script(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^  (\w+) ", done.stdout.split("Commands:", 1)[1], flags=re.M)
    assert set(listed) >= {
        "embed",
        "index",
        "search",
        "evaluate",
        "demo",
        "train",
        "predict",
        "export",
        "serve",
    }
    done = _console_script(["--version"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("frugalvision, version "), (
        done.stdout + done.stderr
    )


def test_console_entry_point_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "frugalvision" in capsys.readouterr().out
