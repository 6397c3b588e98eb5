"""The README's command examples must match the CLI: every subcommand exists and every --option is accepted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from frugalvision.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    found = re.findall(r"`(frugalvision [a-z]+[^`]*)`", text) + re.findall(
        r"(frugalvision [a-z].*)$", blocks, flags=re.M
    )
    return sorted({raw.split("#")[0].strip() for raw in found})


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    from frugalvision.cli import (  # noqa: F401
        curate,
        demo,
        deploy,
        discover,
        distill,
        foundation,
        ood,
        retrieval,
        serve,
        tagging,
        train,
    )

    command: click.Command = cli
    rest = words[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            break
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize("example", _examples())
def test_readme_example_matches_cli(example: str) -> None:
    words = shlex.split(example)
    command, rest = _resolve(words)
    assert command is not cli, f"README example names no subcommand: {example}"
    accepted = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("-") and word not in ("-", "--"):
            flag = word.split("=")[0]
            assert flag in accepted, (
                f"README example `{example}` uses {flag}, which `{command.name}` does not accept"
            )


def test_readme_has_examples() -> None:
    assert len(_examples()) >= 10


def _section_commands(title: str) -> list[str]:
    """The command lines of the first bash block under the README heading ``title``, comments removed."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block is not None, f"README section {title!r} has no bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_image_search_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The four commands, word for word, from a folder holding `photos/` and a new photo `query.jpg`."""
    from click.testing import CliRunner

    from frugalvision.demo import make_demo_dataset

    commands = _section_commands("Image search in four commands")
    assert [shlex.split(c)[1] for c in commands] == ["embed", "evaluate", "index", "search"]
    monkeypatch.chdir(tmp_path)
    make_demo_dataset("photos", views_per_photo=3, photos=("chelsea", "coffee", "rocket"), size=64)
    # the query is a crop of the cat photo that is not among the indexed images
    make_demo_dataset("new", views_per_photo=2, photos=("chelsea",), size=64, seed=1)
    Path("new/chelsea/chelsea_000.jpg").rename("query.jpg")
    outputs = []
    for command in commands:
        words = shlex.split(command)
        _resolve(words)  # registers the subcommands
        result = CliRunner().invoke(cli, words[1:])
        assert result.exit_code == 0, f"`{command}` failed: {result.output}"
        outputs.append(result.output)
    hits = re.findall(r"^ +\d+\. similarity [-\d.]+  (\S+)  \[(\w+)\]$", outputs[-1], flags=re.M)
    assert len(hits) == 5, outputs[-1]
    # real ImageNet features: the nearest indexed image of a new crop of the cat is a crop of the cat
    assert hits[0][1] == "chelsea" and hits[0][0].startswith("photos/chelsea/"), hits
    assert Path("results.png").stat().st_size > 0
