"""Exact and near duplicates: planted copies are found, distinct photos are not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frugalvision.curation import (
    DuplicatePairs,
    duplicate_groups,
    exact_duplicates,
    near_duplicates,
    save_pair_grid,
    write_pairs_csv,
)

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "coins", "horse", "page")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[tuple[int, int], str]]:
    """8 distinct real photos + an exact copy of #0 + a resized, re-encoded JPEG copy of #1 (+ a 2nd exact of #0)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        img.thumbnail((160, 160))
        p = root / f"{name}.jpg"
        img.save(p, quality=90)
        paths.append(str(p))
    shutil.copy(paths[0], root / "copy_of_chelsea.jpg")
    small = Image.open(paths[1])
    small.resize((small.width * 2 // 3, small.height * 2 // 3), Image.BILINEAR).save(
        root / "coffee_small.jpg", quality=55
    )
    shutil.copy(paths[0], root / "zz_copy2_of_chelsea.jpg")
    paths += [
        str(root / "copy_of_chelsea.jpg"),
        str(root / "coffee_small.jpg"),
        str(root / "zz_copy2_of_chelsea.jpg"),
    ]
    return paths, {(0, 8): "exact", (1, 9): "resized", (0, 10): "exact", (8, 10): "exact"}


def test_exact_duplicates_by_bytes(planted) -> None:
    paths, _ = planted
    assert exact_duplicates(paths) == [[0, 8, 10]]
    assert exact_duplicates(paths[:8]) == []


def test_near_duplicates_with_real_embeddings(planted) -> None:
    from frugalvision.models import create_backbone

    paths, truth = planted
    bb = create_backbone("tf_efficientnet_lite0.in1k_offline")
    tf = bb.transform()
    with torch.inference_mode():
        emb = bb(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).numpy()
    pairs = near_duplicates(emb)  # default threshold 0.85
    found = {(int(a), int(b)) for a, b in zip(pairs.first, pairs.second, strict=True)}
    assert found == set(truth)  # the copies and only them
    sims = dict(
        zip(
            zip(pairs.first.tolist(), pairs.second.tolist(), strict=True),
            pairs.similarity.tolist(),
            strict=True,
        )
    )
    assert sims[(0, 8)] == pytest.approx(1.0, abs=1e-5) and sims[(1, 9)] < 1.0
    normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = normed @ normed.T
    distinct = cos[:8, :8][~np.eye(8, dtype=bool)]
    assert distinct.max() < 0.6 and sims[(1, 9)] > 0.86  # margins on both sides of the threshold
    assert duplicate_groups(pairs, len(paths)) == [[0, 8, 10], [1, 9]]


def test_range_search_is_exact_and_inclusive() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    x[7] = x[3]  # cosine exactly 1
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for threshold in (0.9, 0.7):
        pairs = near_duplicates(x, threshold, block=64)  # several query blocks
        cos = x.astype(np.float64) @ x.T.astype(np.float64)
        i, j = np.nonzero(np.triu(cos >= threshold, k=1))
        assert {(a, b) for a, b in zip(pairs.first.tolist(), pairs.second.tolist(), strict=True)} == set(
            zip(i.tolist(), j.tolist(), strict=True)
        )
        assert np.all(np.diff(pairs.similarity) <= 0)  # most similar first
    # a pair at exactly the threshold is kept
    a = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    assert len(near_duplicates(a, float(np.float32(0.6)))) == 1
    with pytest.raises(ValueError, match="threshold must lie"):
        near_duplicates(a, 1.5)


def test_groups_csv_and_grid(planted, tmp_path: Path) -> None:
    paths, _ = planted
    pairs = DuplicatePairs(np.array([0, 1, 5]), np.array([8, 9, 6]), np.array([1.0, 0.97, 0.96], np.float32))
    assert duplicate_groups(pairs, 11) == [[0, 8], [1, 9], [5, 6]]
    chained = DuplicatePairs(np.array([0, 2]), np.array([2, 4]), np.ones(2, np.float32))
    assert duplicate_groups(chained, 5) == [[0, 2, 4]]
    csv_path = write_pairs_csv(pairs, paths, tmp_path / "near.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "kind,similarity,path_a,path_b" and lines[1].startswith("near,1.0000,")
    png = save_pair_grid(pairs, paths, tmp_path / "pairs.png")
    assert Image.open(png).size[1] > 112
