"""The steps ``frugalvision evaluate`` takes alike for a classification and a multilabel bundle
(:mod:`~frugalvision.cli.classify`, :mod:`~frugalvision.cli.tagging`): run the library's evaluation over the
labelled images of DATA, and print it as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from frugalvision.cli._app import data_warnings

__all__ = ["echo_json", "evaluate_on"]


def evaluate_on(
    evaluate: Callable[..., dict[str, Any]],
    model: Any,
    data: Path,
    *,
    workers: int | None,
    progress: bool,
    top_k: int,
) -> dict[str, Any]:
    """``evaluate(model, dataset, top_k=..., num_workers=..., progress=...)`` on the data set ``data``
    (:func:`~frugalvision.data.open_dataset`), its warnings (skipped images...) printed once it ends."""
    from frugalvision.data import open_dataset

    with data_warnings():
        return evaluate(model, open_dataset(data), top_k=top_k, num_workers=workers or 0, progress=progress)


def echo_json(bundle: Path, data: Path, result: dict[str, Any]) -> None:
    """Print the evaluation ``result`` of ``bundle`` on ``data`` as one JSON object."""
    click.echo(json.dumps({"bundle": str(bundle), "data": str(data), **result}, indent=2))
