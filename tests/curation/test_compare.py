"""Data-set comparison by prototypes, the report, and the `curate` commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from frugalvision.curation import compare_datasets, write_comparison_report
from frugalvision.data import read_manifest
from frugalvision.embeddings import EmbeddingStore


def _blob(centre: int, n: int, rng: np.random.Generator, dim: int = 12) -> np.ndarray:
    return (np.eye(dim)[centre] * 10 + rng.normal(0, 1, (n, dim))).astype(np.float32)


def test_a_cluster_present_only_in_one_set_is_flagged() -> None:
    rng = np.random.default_rng(0)
    a = np.concatenate([_blob(0, 200, rng), _blob(1, 200, rng)])  # A: concepts 0, 1
    b = np.concatenate([_blob(0, 20, rng), _blob(1, 20, rng), _blob(2, 15, rng)])  # B (smaller): 0, 1, 2
    r = compare_datasets(a, b, k=3)
    assert r.flagged("a") == [] and len(r.flagged("b")) == 1
    j = r.flagged("b")[0]
    assert r.count_a[j] == 0 and r.count_b[j] == 15 and r.share_a[j] == 0.0
    others = [i for i in range(3) if i != j]
    # shares are balanced for set size: A is 7x larger, yet the shared concepts are not "dominated by A"
    assert all(0.3 < r.share_a[i] < 0.7 for i in others)
    # below min_size nothing is flagged
    assert compare_datasets(a, b, k=3, min_size=16).flagged("b") == []
    with pytest.raises(ValueError, match="same dimension"):
        compare_datasets(a, b[:, :5])


def _store(root: Path, vectors: np.ndarray, tag: str, tiny_folder: Path) -> EmbeddingStore:
    images = sorted(tiny_folder.rglob("*.png"))
    paths = [str(images[i % len(images)]) for i in range(len(vectors))]
    store = EmbeddingStore(vectors, paths, [(tag,)] * len(vectors), classes=[tag], info={"normalized": False})
    store.save(root)
    return store


def test_report_files(tiny_folder: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = np.concatenate([_blob(0, 12, rng), _blob(1, 12, rng)])
    b = _blob(0, 12, rng)
    r = compare_datasets(a, b, k=2)
    images = [str(p) for p in sorted(tiny_folder.rglob("*.png"))]
    pa, pb = [images[i % 12] for i in range(24)], [images[i % 12] for i in range(12)]
    out = write_comparison_report(r, a, pa, b, pb, tmp_path / "rep", names=("shop", "web"))
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["dominated_by_shop"]) == 1 and summary["dominated_by_web"] == []
    assert (out / summary["grids"][0]).is_file()
    rows = list(csv.DictReader((out / "clusters.csv").open()))
    assert sorted(r_["dominated_by"] for r_ in rows) == ["", "shop"]


def test_curate_commands_on_stores(tiny_folder: Path, tmp_path: Path) -> None:
    from frugalvision.cli import curate  # noqa: F401  (registers the group)
    from frugalvision.cli.main import cli

    rng = np.random.default_rng(2)
    vecs = np.concatenate([_blob(0, 30, rng), _blob(1, 6, rng)])
    vecs[5] = vecs[4] * 1.01  # a near duplicate
    _store(tmp_path / "sa", vecs, "a", tiny_folder)
    _store(tmp_path / "sb", np.concatenate([_blob(0, 10, rng), _blob(2, 10, rng)]), "b", tiny_folder)
    runner = CliRunner()

    res = runner.invoke(
        cli,
        [
            "curate",
            "duplicates",
            str(tmp_path / "sa"),
            "--threshold",
            "0.999",
            "--out",
            str(tmp_path / "dups"),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert (
        "1 near-duplicate pair(s)" in res.output
    )  # (4, 5); the 36 rows re-use 12 files: exact copies by path
    near = list(csv.DictReader((tmp_path / "dups" / "near.csv").open()))
    assert len(near) == 1 and (tmp_path / "dups" / "near_pairs.png").is_file()

    out = tmp_path / "sel" / "subset.csv"
    res = runner.invoke(
        cli,
        ["curate", "select", str(tmp_path / "sa"), "--n", "8", "-k", "2", "--out", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "from 2 clusters (per cluster: min 4, max 4)" in res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"a"}

    res = runner.invoke(
        cli,
        [
            "curate",
            "compare",
            str(tmp_path / "sa"),
            str(tmp_path / "sb"),
            "-k",
            "3",
            "--out",
            str(tmp_path / "cmp"),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "1 dominated by sa, 1 by sb" in res.output
    assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["clusters"] == 3


def test_selection_manifest_trains(tiny_folder: Path, tmp_path: Path) -> None:
    """The subset written by `curate select` is a manifest read_manifest accepts (distinct paths)."""
    from frugalvision.cli import curate  # noqa: F401
    from frugalvision.cli.main import cli

    images = sorted(tiny_folder.rglob("*.png"))
    rng = np.random.default_rng(3)
    vecs = np.concatenate([_blob(0, 8, rng), _blob(1, 4, rng)])
    labels = [(p.parent.name,) for p in images]
    EmbeddingStore(vecs, [str(p) for p in images], labels, classes=["blue", "green", "red"]).save(
        tmp_path / "s"
    )
    out = tmp_path / "subset.csv"
    res = CliRunner().invoke(
        cli,
        ["curate", "select", str(tmp_path / "s"), "--n", "6", "-k", "2", "--out", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    ds = read_manifest(out)
    assert len(ds) == 6 and set(ds.classes) <= {"blue", "green", "red"}
