"""benchmarks/multilabel_data.py: mosaic builder, partial-annotation simulation, COCO-128 / BCCD manifests.

Tests on real data skip when ``../shared/data`` (beside the repository) is absent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from frugalvision.data import read_class_names, read_manifest
from frugalvision.errors import DataError
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


mld = load_benchmark("multilabel_data.py")

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real data {DATA} not available (it ships beside the project, not in a clone)"
)
TINY = {"n_train": 20, "n_val": 8, "n_test": 8, "tile": 32}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _photo_key(photo: str) -> str:
    cls, name = photo.split("/")
    return f"{'Faces' if cls == 'Faces_easy' else cls}/{name}"  # Faces_easy = tighter crops of Faces photos


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not DATA.is_dir():
        pytest.skip(f"real data {DATA} not available (it ships beside the project, not in a clone)")
    out = tmp_path_factory.mktemp("mosaic") / "a"
    return mld.build_mosaics(DATA / "caltech101-dev", out, seed=0, **TINY)


# --------------------------------------------------------------------------------------------- mosaics
@needs_data
def test_mosaics_deterministic_and_reused(tiny_build: dict[str, Path], tmp_path: Path) -> None:
    a = tiny_build["train"].parent
    b = mld.build_mosaics(DATA / "caltech101-dev", tmp_path / "b", seed=0, **TINY)["train"].parent
    for rel in ("train.jsonl", "val.jsonl", "test.jsonl", "classes.txt", "tiles/train.jsonl", "build.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    img = "images/test/000003.jpg"
    assert (a / img).read_bytes() == (b / img).read_bytes()

    # a rebuild with the same settings reuses the images; another seed rewrites them (no stale reuse)
    before = {p.name: p.stat().st_mtime_ns for p in (b / "images" / "train").iterdir()}
    mld.build_mosaics(DATA / "caltech101-dev", b, seed=0, **TINY)
    assert {p.name: p.stat().st_mtime_ns for p in (b / "images" / "train").iterdir()} == before
    small = {"n_train": 3, "n_val": 1, "n_test": 1, "tile": 32}
    mld.build_mosaics(DATA / "caltech101-dev", b, seed=1, **small)
    fresh = mld.build_mosaics(DATA / "caltech101-dev", tmp_path / "c", seed=1, **small)["train"].parent
    assert (
        (b / "train.jsonl").read_bytes()
        == (fresh / "train.jsonl").read_bytes()
        != (a / "train.jsonl").read_bytes()
    )
    assert sorted(p.name for p in (b / "images" / "train").iterdir()) == [
        "000001.jpg",
        "000002.jpg",
        "000003.jpg",
    ]
    for name in ("000001.jpg", "000003.jpg"):
        assert (b / "images" / "train" / name).read_bytes() == (
            fresh / "images" / "train" / name
        ).read_bytes()


@needs_data
def test_mosaic_labels_tiles_and_split(tiny_build: dict[str, Path]) -> None:
    out = tiny_build["train"].parent
    classes = read_class_names(tiny_build["classes"])
    assert classes == sorted(p.name for p in (DATA / "caltech101-dev").iterdir() if p.is_dir())
    assert len(classes) == 51
    keys: dict[str, set[str]] = {}
    n_labels = []
    for split, n in (("train", 20), ("val", 8), ("test", 8)):
        rows, tiles = _rows(out / f"{split}.jsonl"), _rows(out / "tiles" / f"{split}.jsonl")
        assert len(rows) == len(tiles) == n
        assert [r["path"] for r in rows] == [f"images/{split}/{i:06d}.jpg" for i in range(1, n + 1)]
        keys[split] = set()
        for row, tile in zip(rows, tiles, strict=True):
            assert row["path"] == tile["path"]
            tile_classes = [t["class"] for t in tile["tiles"]]
            assert len(set(tile_classes)) == len(tile_classes)  # distinct classes within an image
            assert len({t["cell"] for t in tile["tiles"]}) == len(tile_classes) <= 4
            assert row["labels"] == [
                c for c in classes if c in tile_classes
            ]  # labels = tile classes, class order
            for t in tile["tiles"]:
                assert (
                    t["photo"].startswith(t["class"] + "/")
                    and (DATA / "caltech101-dev" / t["photo"]).is_file()
                )
                keys[split].add(_photo_key(t["photo"]))
            n_labels.append(len(tile_classes))
    assert (
        not keys["train"] & keys["val"]
        and not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
    )
    assert min(n_labels) >= 1 and len(set(n_labels)) >= 3  # the label count varies

    # the pixels: each tile is the centre crop of its photo (reference: PIL's ImageOps.fit), blanks are grey
    row = _rows(out / "tiles" / "train.jsonl")[0]
    img = np.asarray(Image.open(out / row["path"]).convert("RGB"), dtype=np.float64)
    assert img.shape == (64, 64, 3)
    cells = {t["cell"]: t["photo"] for t in row["tiles"]}
    refs = {
        p: np.asarray(
            ImageOps.fit(
                Image.open(DATA / "caltech101-dev" / p).convert("RGB"), (32, 32), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
        for p in cells.values()
    }
    for cell in range(4):
        r, c = divmod(cell, 2)
        patch = img[32 * r : 32 * r + 32, 32 * c : 32 * c + 32]
        if cell not in cells:
            assert np.abs(patch - 128).mean() < 3
            continue
        errors = {p: np.abs(patch - ref).mean() for p, ref in refs.items()}
        assert errors[cells[cell]] < 12 and errors[cells[cell]] == min(errors.values())


@needs_data
def test_class_frequencies_follow_zipf_rank() -> None:
    photos = mld._list_photos(DATA / "caltech101-dev")
    classes = sorted(photos)
    split = mld._split_photos(photos, (0.5, 0.2, 0.3), 0)
    # photo split: fractions per class, every photo in exactly one split
    for cls in classes:
        parts = [split[s][cls] for s in ("train", "val", "test")]
        assert sorted(p for part in parts for p in part) == photos[cls] and all(parts)
        if cls != "Faces_easy":
            assert abs(len(parts[2]) - 0.3 * len(photos[cls])) <= 1
    assert all(
        split[s]["Faces_easy"] == [p for p in split[s]["Faces"] if p in photos["Faces_easy"]] for s in split
    )

    p = mld.zipf_probabilities(51, 1.0)
    np.testing.assert_allclose(p, (1 / np.arange(1, 52)) / (1 / np.arange(1, 52)).sum(), rtol=1e-12)
    rank = np.random.default_rng(7).permutation(51)
    plans = mld._plan_split(
        3000,
        classes,
        p[rank],
        split["train"],
        cells=4,
        min_tiles=1,
        max_tiles=4,
        rng=np.random.default_rng(0),
    )
    counts = Counter(cls for tiles in plans for _, cls, _ in tiles)
    by_rank = np.array([counts[classes[i]] for i in np.argsort(rank)])
    assert by_rank[0] > 20 * by_rank[-1] > 0  # long tail
    assert np.corrcoef(np.argsort(np.argsort(-by_rank)), np.arange(51))[0, 1] > 0.95  # Spearman vs Zipf rank
    sizes = Counter(len(t) for t in plans)
    assert set(sizes) == {1, 2, 3, 4} and min(sizes.values()) > 600  # uniform 1..4 labels per image


@needs_data
def test_mosaics_of_chosen_nested_class_folders(tmp_path: Path) -> None:
    """``classes=``: a subset of (possibly nested) class folders; labels are the folders with ``/`` -> ``-``."""
    root = DATA / "omniglot" / "images_background_small1"
    folders = ["Korean/character03", "Greek/character01", "Latin/character10"]
    paths = mld.build_mosaics(root, tmp_path / "o", seed=0, classes=folders, max_tiles=3, **TINY)
    labels = read_class_names(paths["classes"])
    assert labels == ["Greek-character01", "Korean-character03", "Latin-character10"]
    seen = set()
    for split in ("train", "val", "test"):
        ds = read_manifest(paths[split], classes=labels)
        assert ds.target_matrix().shape[1] == 3
        for tile_row in _rows(paths["train"].parent / "tiles" / f"{split}.jsonl"):
            for t in tile_row["tiles"]:
                folder = t["photo"].rsplit("/", 1)[0]
                assert folder in folders and mld.class_label(folder) == t["class"]
                assert (root / t["photo"]).is_file()
                seen.add(folder)
    assert seen == set(folders)
    # the default (every top-level folder) leaves the labels as they were: folder names
    assert mld.class_label("Faces_easy") == "Faces_easy"
    with pytest.raises(DataError, match="class folder 'Greek/character99' not found"):
        mld.build_mosaics(root, tmp_path / "x", classes=["Greek/character99", "Greek/character01"], **TINY)
    with pytest.raises(DataError, match="holds no"):
        mld.build_mosaics(root, tmp_path / "y", classes=["Greek", "Latin"], **TINY)


@needs_data
def test_build_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_tiles"):
        mld.build_mosaics(DATA / "caltech101-dev", tmp_path, max_tiles=5)
    with pytest.raises(ValueError, match="photo_split"):
        mld.build_mosaics(DATA / "caltech101-dev", tmp_path, photo_split=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="caltech_root"):
        mld.build_mosaics(tmp_path / "missing", tmp_path)


# -------------------------------------------------------------------------------- partial annotation
@needs_data
def test_hide_annotations_reads_back_as_unknown(tiny_build: dict[str, Path], tmp_path: Path) -> None:
    classes = read_class_names(tiny_build["classes"])
    full = _rows(tiny_build["train"])
    out = tmp_path / "elsewhere" / "partial.jsonl"  # another folder: relative paths are rewritten
    counts = mld.hide_annotations(tiny_build["train"], out, fraction=0.5, seed=3, classes=classes)
    again, again2 = tmp_path / "again.jsonl", tmp_path / "again2.jsonl"
    mld.hide_annotations(tiny_build["train"], again, fraction=0.5, seed=3, classes=classes)
    mld.hide_annotations(tiny_build["train"], again2, fraction=0.5, seed=3, classes=classes)
    assert again.read_bytes() == again2.read_bytes()
    assert [(r["labels"], r["unknown"]) for r in _rows(again)] == [
        (r["labels"], r["unknown"]) for r in _rows(out)
    ]
    other = tmp_path / "other.jsonl"
    mld.hide_annotations(tiny_build["train"], other, fraction=0.5, seed=4, classes=classes)
    assert _rows(other) != _rows(again)

    part = _rows(out)
    n_entries = len(full) * len(classes)
    n_unknown = sum(len(r["unknown"]) for r in part)
    assert abs(n_unknown / n_entries - 0.5) < 4 * np.sqrt(0.25 / n_entries)
    assert counts["hidden_positives"] + counts["hidden_negatives"] == n_unknown
    assert counts["positives"] == sum(len(r["labels"]) for r in full)
    assert counts["positives"] + counts["negatives"] == n_entries
    for f, p in zip(full, part, strict=True):
        assert set(p["labels"]) <= set(f["labels"]) and not set(p["labels"]) & set(p["unknown"])
        assert set(p["labels"]) | (set(p["unknown"]) & set(f["labels"])) == set(f["labels"])

    # frugalvision's reader: hidden entries are -1, kept positives 1, the rest 0
    ds = read_manifest(out, classes=classes)
    assert ds.paths == read_manifest(tiny_build["train"], classes=classes).paths
    t = ds.target_matrix()
    expected = np.zeros((len(part), len(classes)), dtype=np.float32)
    for i, r in enumerate(part):
        expected[i, [classes.index(c) for c in r["labels"]]] = 1
        expected[i, [classes.index(c) for c in r["unknown"]]] = -1
    np.testing.assert_array_equal(t, expected)
    assert (t == -1).sum() == n_unknown and ds.has_unknown

    # fraction 0 keeps everything, 1 hides everything
    mld.hide_annotations(tiny_build["train"], tmp_path / "none.jsonl", fraction=0, seed=0, classes=classes)
    assert [(r["labels"], r["unknown"]) for r in _rows(tmp_path / "none.jsonl")] == [
        (r["labels"], []) for r in full
    ]
    mld.hide_annotations(tiny_build["train"], tmp_path / "all.jsonl", fraction=1, seed=0, classes=classes)
    assert all(r["labels"] == [] and r["unknown"] == classes for r in _rows(tmp_path / "all.jsonl"))


def _synthetic_manifest(path: Path, n: int, classes: list[str], seed: int = 0) -> list[set[str]]:
    rng = np.random.default_rng(seed)
    truth = [set(rng.choice(classes, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n)]
    rows = [{"path": f"img{i}.jpg", "labels": sorted(t)} for i, t in enumerate(truth)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return truth


@pytest.mark.parametrize("mode", ["random_per_annotation", "positives_only"])
def test_hide_modes_leak(mode: str, tmp_path: Path) -> None:
    """Random per annotation: being unknown says nothing about presence; positives only: it means present."""
    classes = [f"c{k}" for k in range(20)]
    truth = _synthetic_manifest(tmp_path / "full.jsonl", 1000, classes)
    mld.hide_annotations(
        tmp_path / "full.jsonl", tmp_path / "p.jsonl", fraction=0.3, seed=1, mode=mode, classes=classes
    )
    part = _rows(tmp_path / "p.jsonl")
    unknown = [(c, c in t) for r, t in zip(part, truth, strict=True) for c in r["unknown"]]
    pos_rate = sum(len(t) for t in truth) / (len(truth) * len(classes))
    pos_given_unknown = np.mean([present for _, present in unknown])
    hidden_pos = sum(present for _, present in unknown) / sum(len(t) for t in truth)
    assert abs(hidden_pos - 0.3) < 0.05  # positives hidden at the asked rate in both modes
    if mode == "random_per_annotation":
        assert abs(pos_given_unknown - pos_rate) < 0.02
        assert abs(len(unknown) / (len(truth) * len(classes)) - 0.3) < 0.02
    else:
        assert pos_given_unknown == 1.0


def test_hide_negatives_at_their_own_rate(tmp_path: Path) -> None:
    """``negative_fraction``: positives hidden at ``fraction``, negatives at ``negative_fraction``."""
    classes = [f"c{k}" for k in range(20)]
    truth = _synthetic_manifest(tmp_path / "full.jsonl", 1000, classes)
    mld.hide_annotations(
        tmp_path / "full.jsonl",
        tmp_path / "p.jsonl",
        fraction=0.5,
        negative_fraction=0.95,
        seed=1,
        classes=classes,
    )
    part = _rows(tmp_path / "p.jsonl")
    unknown = [c in t for r, t in zip(part, truth, strict=True) for c in r["unknown"]]
    positives = sum(len(t) for t in truth)
    negatives = len(truth) * len(classes) - positives
    assert abs(sum(unknown) / positives - 0.5) < 0.05
    assert abs((len(unknown) - sum(unknown)) / negatives - 0.95) < 0.01
    with pytest.raises(ValueError, match="negative_fraction"):
        mld.hide_annotations(
            tmp_path / "full.jsonl",
            tmp_path / "q.jsonl",
            fraction=0.5,
            negative_fraction=2,
            seed=1,
            classes=classes,
        )


def test_hide_annotations_errors(tmp_path: Path) -> None:
    src = tmp_path / "full.jsonl"
    _synthetic_manifest(src, 5, ["a", "b", "c"])
    with pytest.raises(ValueError, match="classes is required"):
        mld.hide_annotations(src, tmp_path / "o.jsonl", fraction=0.5, seed=0)
    with pytest.raises(DataError, match=r"full\.jsonl:\d+: label '.' \(field 'labels'\) is not in classes"):
        mld.hide_annotations(src, tmp_path / "o.jsonl", fraction=0.5, seed=0, classes=["a"])
    with pytest.raises(ValueError, match="fraction"):
        mld.hide_annotations(src, tmp_path / "o.jsonl", fraction=1.5, seed=0, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="mode"):
        mld.hide_annotations(
            src, tmp_path / "o.jsonl", fraction=0.5, seed=0, mode="fixed", classes=["a", "b", "c"]
        )
    with pytest.raises(ValueError, match="must differ"):
        mld.hide_annotations(src, src, fraction=0.5, seed=0, classes=["a", "b", "c"])
    (tmp_path / "bad.jsonl").write_text('{"path": "x.jpg", "labels": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'labels'"):
        mld.hide_annotations(
            tmp_path / "bad.jsonl", tmp_path / "o.jsonl", fraction=0.5, seed=0, classes=["a"]
        )


# ------------------------------------------------------------------------------ genuine multi-label sets
@needs_data
def test_coco128_manifests(tmp_path: Path) -> None:
    paths = mld.coco128_manifests(tmp_path, seed=0, val_fraction=0.3, root=DATA / "coco128")
    train, val = _rows(paths["train"]), _rows(paths["val"])
    assert (len(train), len(val)) == (67, 29)  # 96 images in the data README, round(0.3 * 96) = 29 in val
    rows = train + val
    assert len({r["path"] for r in rows}) == 96
    classes = read_class_names(paths["classes"])
    assert len(classes) == 80 and classes[45] == "bowl" and classes[49] == "orange"
    # reference: the YOLO label files read directly (class id = first field)
    for r in rows:
        path = Path(r["path"])
        assert path.is_absolute() and path.is_file()
        label_file = DATA / "coco128" / "labels" / (path.stem + ".txt")
        ids = set()
        if label_file.is_file():
            ids = {int(line.split()[0]) for line in label_file.read_text().splitlines() if line.strip()}
        assert r["labels"] == [classes[i] for i in sorted(ids)]
    assert sum(not r["labels"] for r in rows) == 2  # the README's two images without boxes
    assert max(len(r["labels"]) for r in rows) > 1
    assert len(read_manifest(paths["val"], classes=classes)) == 29


@needs_data
def test_bccd_manifests(tmp_path: Path) -> None:
    paths = mld.bccd_manifests(tmp_path, root=DATA / "bccd")
    rows = {s: _rows(paths[s]) for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 205, "val": 87, "test": 72}  # 364 in the README
    assert read_class_names(paths["classes"]) == ["Platelets", "RBC", "WBC"]
    all_paths = [r["path"] for rs in rows.values() for r in rs]
    assert len(set(all_paths)) == 364
    n_boxes = 0
    for rs in rows.values():
        for r in rs:
            path = Path(r["path"])
            assert path.is_absolute() and path.is_file()
            names = re.findall(
                r"<name>\s*([^<]*?)\s*</name>",
                (path.parents[1] / "Annotations" / f"{path.stem}.xml").read_text(),
            )
            n_boxes += len(names)
            assert r["labels"] == sorted(set(names))
    assert n_boxes == 4888  # the README's box count
    ds = read_manifest(paths["test"], classes=["Platelets", "RBC", "WBC"])
    assert ds.target_matrix().shape == (72, 3)


@needs_data
def test_manifest_stats_and_table(tiny_build: dict[str, Path]) -> None:
    classes = read_class_names(tiny_build["classes"])
    stats = mld.manifest_stats(tiny_build["val"], classes, train_classes={"Faces"})
    rows = _rows(tiny_build["val"])
    counts = Counter(c for r in rows for c in r["labels"])
    assert stats["images"] == 8 and stats["classes"] == len(counts) and stats["n_classes"] == 51
    assert stats["labels_mean"] == pytest.approx(np.mean([len(r["labels"]) for r in rows]))
    assert (stats["pos_min"], stats["pos_median"], stats["pos_max"]) == (
        min(counts.values()),
        float(np.median(list(counts.values()))),
        max(counts.values()),
    )
    assert stats["not_in_train"] == sorted(set(counts) - {"Faces"}, key=classes.index)
    table = mld.format_table("tiny", {"val": stats})
    assert "| val | 8 |" in table
