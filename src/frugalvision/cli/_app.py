"""The ``frugalvision`` group and what its command modules share; :mod:`frugalvision.cli.main` registers them.

Each command module (``retrieval``, ``train``...) adds its commands to :data:`cli` and imports only from here, so
no command module imports :mod:`~frugalvision.cli.main` (no import circle).

Errors caused by the user's input (:class:`~frugalvision.errors.FrugalVisionError`, ``ValueError``,
``FileNotFoundError``) are printed as one ``Error: ...`` line with exit status 1; set
``FRUGALVISION_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from frugalvision._version import __version__
from frugalvision.errors import DataWarning, FrugalVisionError

__all__ = ["cli", "data_warnings"]

_USER_ERRORS = (FrugalVisionError, ValueError, FileNotFoundError)


@contextmanager
def data_warnings() -> Iterator[None]:
    """Print the :class:`~frugalvision.errors.DataWarning` s raised inside (skipped images...) as yellow lines on
    stderr once the block ends; other warnings are shown as Python shows them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        yield
    for w in caught:
        if issubclass(w.category, DataWarning):
            click.secho(f"Warning: {w.message}", fg="yellow", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


class _FriendlyGroup(click.Group):
    """A click group that turns user errors into a one-line message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as e:
            if os.environ.get("FRUGALVISION_DEBUG"):
                raise
            raise click.ClickException(str(e)) from e


@click.group(
    cls=_FriendlyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True},
)
@click.version_option(__version__, prog_name="frugalvision")
def cli() -> None:
    """frugalvision: from a folder of images to an evaluated model that runs fast on a CPU.

    Typical image-search flow:

    \b
      frugalvision embed photos/ --out store/      # one vector per image
      frugalvision evaluate store/                 # Recall@K, MAP@R, NMI (needs labels)
      frugalvision index store/ --out index/       # faiss index + metadata
      frugalvision search index/ query.jpg -k 5    # nearest images

    Training an embedding for your own classes:

    \b
      frugalvision train --data photos/ --out runs/x --freeze-backbone
      frugalvision embed photos/ --model runs/x/model --out store/

    Classifying images (one label each, calibrated probabilities):

    \b
      frugalvision train --task classification --data photos/ --out runs/c --freeze-backbone
      frugalvision predict runs/c/model photos/ --top-k 3

    Tagging images with several labels each:

    \b
      frugalvision train --task multilabel --data tags.jsonl --out runs/t --freeze-backbone
      frugalvision predict runs/t/model photos/ --json

    `frugalvision demo` runs all of it offline on built-in sample photos.
    """
