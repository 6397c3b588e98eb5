"""benchmarks/duplicates.py: the copies it makes and the precision / recall it reports (no model needed)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


dup = load_benchmark("duplicates.py", "duplicates_bench")


@pytest.fixture()
def originals(tmp_path: Path) -> list[tuple[Path, str]]:
    import skimage.data

    out = []
    for i, name in enumerate(("chelsea", "coffee", "rocket")):
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        img.thumbnail((120, 120))
        p = tmp_path / "src" / f"{name}.jpg"
        p.parent.mkdir(exist_ok=True)
        img.save(p, quality=90)
        out.append((p, "a" if i < 2 else "b"))
    return out


def test_copies_are_the_named_transformations(originals, tmp_path: Path) -> None:
    items = dup.make_copies(originals, tmp_path / "set", seed=0)
    assert len(items) == 3 * (1 + len(dup.TRANSFORMS))
    by = {(it.origin, it.transform): it.path for it in items}
    src = Image.open(originals[0][0]).convert("RGB")
    assert by[0, ""].read_bytes() == originals[0][0].read_bytes()  # the original, unchanged
    assert Image.open(by[0, "half"]).size == (src.width // 2, src.height // 2)
    assert Image.open(by[0, "half+jpeg"]).format == "JPEG" and Image.open(by[0, "jpeg"]).format == "JPEG"
    np.testing.assert_array_equal(np.asarray(Image.open(by[0, "hflip"])), np.asarray(src)[:, ::-1])
    w, h = Image.open(by[0, "crop"]).size
    assert 0.79 * src.width <= w <= 0.91 * src.width and 0.79 * src.height <= h <= 0.91 * src.height
    assert Image.open(by[0, "jitter"]).size == src.size
    # same seed: same bytes; other originals in the same folder: the stale copies are replaced
    again = dup.make_copies(originals, tmp_path / "again", seed=0)
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip(items, again, strict=True))
    fewer = dup.make_copies(originals[1:], tmp_path / "set", seed=0)
    assert fewer[0].path.read_bytes() == originals[1][0].read_bytes()
    assert len(list((tmp_path / "set").glob("*_orig.jpg"))) == 2


def test_pair_scores_match_a_brute_force_count_and_sklearn(originals, tmp_path: Path) -> None:
    items = dup.make_copies(originals, tmp_path / "set", seed=0)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    vectors = np.stack([base[it.origin] + rng.normal(scale=0.6, size=16) for it in items]).astype(np.float32)
    x = vectors.astype(np.float64) / np.linalg.norm(vectors, axis=1, keepdims=True)
    for transform in ("half", None):
        rows = [j for j, it in enumerate(items) if it.transform in ("", transform) or transform is None]
        for threshold in (0.3, 0.6, 0.9):
            truth, pred = [], []
            for a, b in combinations(rows, 2):
                ia, ib = items[a], items[b]
                if ia.origin == ib.origin and "" not in (ia.transform, ib.transform):
                    continue  # two copies of one original: not counted
                truth.append(ia.origin == ib.origin)
                pred.append(float(x[a] @ x[b]) >= threshold)
            s = dup.score_pairs(vectors, items, threshold, transform)
            assert (s.tp, s.fp, s.fn) == (
                sum(t and p for t, p in zip(truth, pred, strict=True)),
                sum(p and not t for t, p in zip(truth, pred, strict=True)),
                sum(t and not p for t, p in zip(truth, pred, strict=True)),
            )
            if any(pred):
                p, r, f, _ = precision_recall_fscore_support(truth, pred, average="binary", zero_division=0)
                assert (s.precision, s.recall, s.f1) == pytest.approx((p, r, f), abs=1e-12)
    best, scores = dup.choose_threshold(vectors, items, grid=[0.2, 0.5, 0.8])
    assert scores[best].f1 == max(s.f1 for s in scores.values())
