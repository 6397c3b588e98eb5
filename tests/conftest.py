"""Shared fixtures: real-data location, small generated image folders, real photos, one torch thread.

Plain helper functions the tests import live in ``tests/helpers.py`` (``from helpers import ...``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_labelled_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """``shared_data("caltech101-dev")``: path of a real data set in ``../shared/data``, or skip with the reason."""

    def _get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(
                f"real data {path} not available (it ships beside the project for CI, not in a clone)"
            )
        return path

    return _get


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A class-per-folder data set: 3 classes x 4 small images of distinct colours + noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 class folders x 5 noisy 24 px images (:func:`helpers.make_labelled_folder`), shared by the session."""
    return make_labelled_folder(tmp_path_factory.mktemp("labelled") / "data")


@pytest.fixture
def photos() -> list:
    """Real photos from scikit-image (RGB arrays of various sizes)."""
    import skimage.data as data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test: tiny models on a few shared cores run many times faster without
    thread contention. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- multi-label data -----------------------------------------------------------------------------------
TAG_CLASSES = ("red", "green", "blue", "yellow", "white")
_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 230), "yellow": (240, 230, 20)}


def make_multilabel_manifest(root: Path, n: int = 48, size: int = 32, unknown_every: int = 0) -> Path:
    """``n`` images on a grey background with 1-3 coloured squares (one per class, in a class-specific corner;
    "white" is a centre square); a JSONL manifest ``labels.jsonl``. ``unknown_every``: every k-th image marks one
    absent class as unknown."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    corners = {"red": (0, 0), "green": (0, 1), "blue": (1, 0), "yellow": (1, 1)}
    half = size // 2
    lines = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        present = sorted(rng.choice(len(TAG_CLASSES), size=k, replace=False).tolist())
        arr = np.clip(rng.normal(110, 20, (size, size, 3)), 0, 255)
        for c in present:
            name = TAG_CLASSES[c]
            if name == "white":
                arr[half - 5 : half + 5, half - 5 : half + 5] = 250
            else:
                r, q = corners[name]
                arr[r * half + 2 : (r + 1) * half - 2, q * half + 2 : (q + 1) * half - 2] = _COLOURS[name]
        Image.fromarray(arr.astype(np.uint8)).save(root / f"img{i:03d}.png")
        row: dict = {"path": f"img{i:03d}.png", "labels": [TAG_CLASSES[c] for c in present]}
        absent = [TAG_CLASSES[c] for c in range(len(TAG_CLASSES)) if c not in present]
        if unknown_every and i % unknown_every == 0:
            row["unknown"] = absent[:1]
        lines.append(json.dumps(row))
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root / "labels.jsonl"


@pytest.fixture(scope="session")
def multilabel_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 tagged images (5 classes, 1-3 per image, every 4th image with one unknown class): ``labels.jsonl``."""
    return make_multilabel_manifest(tmp_path_factory.mktemp("tags") / "data", unknown_every=4)


# --- tiny, very long images (issue 12, item 1) -----------------------------------------------------------
@pytest.fixture
def long_png(tmp_path: Path):
    """``long_png(width, height, name=None)``: a black PNG of that size (1 x 30000 is 138 bytes), its path."""

    def _make(width: int, height: int, name: str | None = None) -> Path:
        path = tmp_path / (name or f"long-{width}x{height}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (width, height)).save(path)
        return path

    return _make


#: Largest output a test lets Pillow's resize produce; far above any test image's real preprocessing.
RESIZE_GUARD_PIXELS = 4_000_000


@pytest.fixture
def bounded_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``PIL.Image.Image.resize`` raise ``AssertionError`` for an output over 4 million pixels instead of
    allocating it, so a test of an unbounded intermediate fails (before the fix) without eating the machine's
    memory. Every resize on the way (torchvision's ``Resize``, timm's, the runtime's) goes through it."""
    resize = Image.Image.resize

    def guarded(self: Image.Image, size, *args, **kwargs):  # type: ignore[no-untyped-def]
        if int(size[0]) * int(size[1]) > RESIZE_GUARD_PIXELS:
            raise AssertionError(f"unbounded intermediate: {self.size} resized to {tuple(size)}")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
