"""Fixtures of the explorer tests: a tiny store + index made with a tiny random backbone, a label manifest, and a
module-scoped headless Chromium (Debian's, driven by Playwright; skipped with the reason when there is none)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def explore_data(tmp_path_factory: pytest.TempPathFactory, labelled_folder: Path) -> dict[str, Path]:
    """40 images (8 classes x 5) embedded by a saved random ``test_efficientnet`` bundle into ``store/``, indexed into
    ``index/``, with absolute paths (so any working folder resolves them)."""
    import torch

    from frugalvision.bundle import save_bundle
    from frugalvision.models import create_embedding_model

    root = tmp_path_factory.mktemp("explore")
    store, index = root / "store", root / "index"
    torch.manual_seed(0)  # a saved random model: `frugalvision search` rebuilds the very same one
    model = create_embedding_model("test_efficientnet", pretrained=False, embedding_size=16, input_size=32)
    bundle = save_bundle(model.eval(), root / "model")
    run_cli(["embed", str(labelled_folder.resolve()), "--out", str(store), "--model", str(bundle),
             "--workers", "0", "--no-progress"])  # fmt: skip
    run_cli(["index", str(store), "--out", str(index)])
    return {"root": root, "store": store, "index": index, "images": labelled_folder.resolve()}


def write_manifest(path: Path, image_paths: list[str]) -> Path:
    """A ``frugalvision label``-style manifest (path,label,prediction,score,margin) of ``image_paths``, paths
    relative to the manifest's folder; every 4th image unlabeled, margins from a fixed seed."""
    rng = np.random.default_rng(0)
    margins = rng.uniform(0, 1, len(image_paths))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "prediction", "score", "margin"])
        for i, p in enumerate(image_paths):
            cls = Path(p).parent.name
            w.writerow([os.path.relpath(p, path.parent), "" if i % 4 == 0 else cls, cls, f"{0.5 + margins[i] / 2:.4f}",
                        f"{margins[i]:.4f}"])  # fmt: skip
    return path


def store_paths(store: Path) -> list[str]:
    lines = (store / "items.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["path"] for line in lines]


@pytest.fixture
def manifest(explore_data: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh label manifest (:func:`write_manifest`) of the store's images in ``tmp_path/labels.csv``."""
    return write_manifest(tmp_path / "labels.csv", store_paths(explore_data["store"]))


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium for one test module (the system's, via Playwright's ``executable_path``).

    Module-scoped, not session-scoped: Playwright's sync API keeps an asyncio event loop running in the main thread
    while it is open, and every later test that calls ``asyncio.run`` (the service's micro-batcher tests) would
    fail with "cannot be called from a running event loop"."""
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium on this machine (install it: apt-get install chromium); browser tests skipped"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--use-gl=swiftshader",
                                                                          "--enable-unsafe-swiftshader"])  # fmt: skip
        yield b
        b.close()
