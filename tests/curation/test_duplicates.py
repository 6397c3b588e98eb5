"""Exact and near duplicates: planted copies are found, distinct photos are not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frugalvision.curation import (
    NEAR_DUPLICATE_THRESHOLD,
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
    pairs = near_duplicates(emb)  # default threshold
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
    assert distinct.max() < 0.6 and sims[(1, 9)] > 0.86  # margins on both sides of the threshold (0.81)
    assert duplicate_groups(pairs, len(paths)) == [[0, 8, 10], [1, 9]]


def _lite0_embeddings(images: list[Image.Image]) -> np.ndarray:
    """Embeddings as ``frugalvision curate duplicates`` computes them (offline Lite0, its own preprocessing)."""
    from frugalvision.foundation import create_feature_model

    fm = create_feature_model("tf_efficientnet_lite0.in1k_offline")
    tf = fm.transform()
    with torch.inference_mode():
        return fm(torch.stack([tf(img) for img in images])).numpy()


def _jpeg(img: Image.Image, quality: int, path: Path) -> Image.Image:
    img.save(path, format="JPEG", quality=quality)
    return Image.open(path).convert("RGB")


def test_default_threshold_finds_transformed_copies_of_real_photos(tmp_path: Path) -> None:
    """Copies made as in benchmarks/duplicates.py (half size + JPEG 60, an 85 % crop, a mirror image, colour
    jitter, JPEG 55) of full-size skimage photos are found at the default threshold and distinct photos are not;
    the old default 0.85 missed the half-size JPEG copy of the rocket (cosine about 0.83)."""
    import skimage.data
    from PIL import ImageEnhance

    names = ("chelsea", "coffee", "rocket", "astronaut", "camera", "coins", "page", "immunohistochemistry")
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names]
    rocket, astronaut, chelsea, coffee, coins = (photos[i] for i in (2, 3, 0, 1, 5))
    w, h = chelsea.size
    copies = {
        2: _jpeg(
            rocket.resize((rocket.width // 2, rocket.height // 2), Image.BICUBIC), 60, tmp_path / "r.jpg"
        ),
        3: _jpeg(
            astronaut.resize((astronaut.width // 2, astronaut.height // 2), Image.BICUBIC),
            60,
            tmp_path / "a.jpg",
        ),
        0: chelsea.crop(
            (int(0.1 * w), int(0.05 * h), int(0.1 * w) + int(0.85 * w), int(0.05 * h) + int(0.85 * h))
        ),
        1: coffee.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        5: ImageEnhance.Color(
            ImageEnhance.Contrast(ImageEnhance.Brightness(coins).enhance(1.25)).enhance(0.75)
        ).enhance(1.3),
        6: _jpeg(photos[6], 55, tmp_path / "p.jpg"),
    }
    emb = _lite0_embeddings(photos + list(copies.values()))
    truth = {(i, len(photos) + k) for k, i in enumerate(copies)}
    found = near_duplicates(emb)
    assert {(int(a), int(b)) for a, b in zip(found.first, found.second, strict=True)} == truth
    # independent check in float64 from the raw vectors: every copy above, every distinct pair below
    x = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    cos = x @ x.T
    positives = np.array([cos[a, b] for a, b in sorted(truth)])
    distinct = cos[: len(photos), : len(photos)][~np.eye(len(photos), dtype=bool)]
    assert positives.min() >= NEAR_DUPLICATE_THRESHOLD > distinct.max()
    old = near_duplicates(emb, 0.85)
    missed = truth - {(int(a), int(b)) for a, b in zip(old.first, old.second, strict=True)}
    assert (2, len(photos)) in missed  # the half-size JPEG copy of the rocket


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
