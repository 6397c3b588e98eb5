"""The ``frugalvision`` command: the group of :mod:`frugalvision.cli._app` with every command module registered.

Errors caused by the user's input (:class:`~frugalvision.errors.FrugalVisionError`, ``ValueError``,
``FileNotFoundError``) are printed as one ``Error: ...`` line with exit status 1; set
``FRUGALVISION_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from frugalvision.cli._app import cli

__all__ = ["COMMAND_MODULES", "cli", "main"]

#: The modules of :mod:`frugalvision.cli` whose import adds their commands to :data:`cli`; a new one is added here.
COMMAND_MODULES = (
    "curate",
    "demo",
    "deploy",
    "discover",
    "distill",
    "explore",
    "foundation",
    "ood",
    "retrieval",
    "select",
    "serve",
    "tagging",
    "train",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"frugalvision.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="frugalvision")
