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
