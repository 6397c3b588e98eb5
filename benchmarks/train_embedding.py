"""Metric learning on real images, class-disjoint: does training beat the pretrained backbone on unseen classes?

Data (from ``../shared/data``, see its README):

* ``caltech101-dev`` (51 Caltech-101 classes): train on the first 26 classes in sorted order (``Faces`` ...
  ``cougar_face``, 4,039 images), test on the other 25 (``crab`` ... ``hedgehog``, 1,575 images).
* ``omniglot/images_background_small1`` (5 alphabets, 136 characters x 20 drawings): one class per character;
  train on the characters of the first 3 alphabets (Balinese, Early_Aramaic, Greek: 70 classes), test on the
  characters of the other 2 (Korean, Latin: 66 classes) -- alphabet-disjoint, the usual Omniglot protocol.

Backbone: EfficientNet-Lite0 with its offline ImageNet weights (``tf_efficientnet_lite0.in1k_offline``). Every
choice is made on a class-disjoint validation split of the *training* classes (20% of them): the best epoch (early
stopping), and for each loss one setting out of a small grid (:data:`GRID`: a 128-d head at lr 1e-4 -- the
library's defaults -- or a full-width 1280-d head at lr 1e-4 / 1e-5; for the hyperbolic loss also the paper's
clipping radius 2.3 or 1.0). The test classes are only used for the numbers printed. Test metrics: Recall@1 and
MAP@R with cosine similarity, every test image querying all the others.

Rows: the pretrained backbone alone (its pooled features), then each loss trained on the frozen-backbone fast path
(features computed once and cached in ``--out``, only a 128-d linear head + the loss train), and with
``--finetune`` a short fine-tune of the whole network (on a subset: ``--finetune-per-class`` images per training
class, ``--finetune-epochs`` epochs; evaluated on ``--finetune-test-per-class`` test images per class, against the
baseline on the same images).

Usage::

    python benchmarks/train_embedding.py                          # fast path, both data sets
    python benchmarks/train_embedding.py --finetune --losses proxynca++ triplet --datasets caltech101-dev
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frugalvision.data import open_dataset
from frugalvision.metrics import retrieval_metrics
from frugalvision.train import build_model, fit, load_config
from frugalvision.train.cache import cached_features

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "tf_efficientnet_lite0.in1k_offline"

#: loss -> (display name, loss.kwargs). The losses' own defaults (their papers') otherwise.
LOSSES: dict[str, tuple[str, dict[str, Any]]] = {
    "triplet": ("Triplet (semi-hard)", {"mining": "semihard", "margin": 0.2}),
    "arcface": ("ArcFace", {}),
    "proxynca": ("ProxyNCA", {}),
    "proxynca++": ("ProxyNCA++", {}),
    "intra_batch": ("Intra-Batch", {}),
    "hyperbolic_pce": ("Hyperbolic pairwise CE", {}),
}

#: Settings tried for each loss on the fast path; the one with the best validation MAP@R (training classes) is
#: reported. A 128-d head compresses the 1280 pretrained features and, trained on a few dozen classes, can lose
#: what separates unseen ones; a full-width head starts (orthogonal init) from the backbone's own geometry.
GRID: list[list[str]] = [
    ["model.embedding_size=128", "optim.lr=1e-4"],
    ["model.embedding_size=1280", "optim.lr=1e-4"],
    ["model.embedding_size=1280", "optim.lr=1e-5"],
]
#: Extra settings for the hyperbolic loss: Hyp-ViT's clipping radius 2.3 puts every point far from the origin, where
#: distances are stretched and the softmax at temperature 0.2 sees only the hardest negatives; radius 1 keeps the
#: points where the ball is nearly flat.
HYPERBOLIC_GRID = ["model.hyperbolic_clip_r=2.3", "model.hyperbolic_clip_r=1.0"]


def grid(loss: str) -> list[list[str]]:
    if loss != "hyperbolic_pce":
        return GRID
    return [[*g, clip] for clip in HYPERBOLIC_GRID for g in GRID]


def write_manifest(rows: list[tuple[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def caltech_rows(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = {c: [(str(f), c) for f in sorted((root / c).iterdir()) if f.is_file()] for c in classes}
    return [r for c in classes[:26] for r in rows[c]], [r for c in classes[26:] for r in rows[c]]


def omniglot_rows(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    alphabets = sorted(p.name for p in root.iterdir() if p.is_dir())

    def rows(names: list[str]) -> list[tuple[str, str]]:
        return [
            (str(f), f"{a}/{ch.name}")
            for a in names
            for ch in sorted((root / a).iterdir())
            if ch.is_dir()
            for f in sorted(ch.iterdir())
        ]

    return rows(alphabets[:3]), rows(alphabets[3:])


def subsample(rows: list[tuple[str, str]], per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    out = []
    for label in sorted(by_class):
        items = by_class[label]
        keep = sorted(rng.choice(len(items), size=min(per_class, len(items)), replace=False))
        out += [items[i] for i in keep]
    return out


def test_metrics(vectors: np.ndarray | torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    return retrieval_metrics(vectors, labels, k=(1,), metric="cosine", include=("recall", "map_at_r"))


def base_overrides(args: argparse.Namespace, train_csv: Path, out: Path) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (the feature cache lives elsewhere)
    return [
        f"data.path={train_csv}",
        f"out={out}",
        f"model.name={MODEL}",
        f"data.cache_dir={args.out / 'feature_cache'}",
        "data.val_split=classes",
        "data.val_fraction=0.2",
        f"data.batch_size={args.batch_size}",
        "data.m_per_class=4",
        "trainer.progress=false",
        f"seed={args.seed}",
    ]


def run_dataset(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    root = args.data_root / name
    train_rows, test_rows = (
        caltech_rows(root) if name.startswith("caltech") else omniglot_rows(root / "images_background_small1")
    )
    folder = args.out / name
    train_csv, test_csv = (
        write_manifest(train_rows, folder / "train.csv"),
        write_manifest(test_rows, folder / "test.csv"),
    )
    test_ds = open_dataset(test_csv)
    test_labels = test_ds.primary_labels()
    print(
        f"\n## {name}: {len(train_rows)} training images ({len({r[1] for r in train_rows})} classes), "
        f"{len(test_rows)} test images ({len({r[1] for r in test_rows})} unseen classes)",
        flush=True,
    )

    results: list[dict[str, Any]] = []
    frozen = load_config(
        overrides=[*base_overrides(args, train_csv, folder / "baseline"), "model.freeze_backbone=true"]
    )
    model = build_model(frozen)
    start = time.perf_counter()
    test_feats, kept = cached_features(
        model, test_ds, args.out / "feature_cache", source=str(test_csv), progress=False, batch_size=64
    )
    extract_s = time.perf_counter() - start
    base = test_metrics(test_feats, test_labels[kept])
    results.append(
        {
            "dataset": name,
            "method": "pretrained backbone (no training)",
            "path": "-",
            **base,
            "val_map@r": None,
            "epoch": None,
            "seconds": extract_s,
        }
    )
    print(
        f"baseline: R@1 {base['recall@1']:.4f}  MAP@R {base['map@r']:.4f}  (test features: {extract_s:.0f} s)",
        flush=True,
    )

    for loss in args.losses:
        label, kwargs = LOSSES[loss]
        best, total = None, 0.0
        for i, setting in enumerate(grid(loss)):
            overrides = [
                *base_overrides(args, train_csv, folder / f"fast-{loss}-{i}"),
                "model.freeze_backbone=true",
                f"loss.name={loss}",
                f"trainer.epochs={args.epochs}",
                *[f"loss.kwargs.{k}={v}" for k, v in kwargs.items()],
                *setting,
            ]
            start = time.perf_counter()
            result = fit(load_config(overrides=overrides))
            seconds = time.perf_counter() - start
            total += seconds
            val = result.metrics.get("val/map@r", float("nan"))
            print(
                f"  {label:<24} {' '.join(setting):<70} val MAP@R {val:.4f} (epoch {result.metrics.get('best_epoch')}, "
                f"{seconds:.0f} s)",
                flush=True,
            )
            if best is None or val > best[0]:
                best = (val, setting, result, seconds)
        assert best is not None
        val, setting, result, seconds = best
        with torch.no_grad():
            emb = result.model.embed_features(torch.from_numpy(test_feats))
        m = test_metrics(emb, test_labels[kept])
        chosen = ", ".join(s.split(".", 1)[1] for s in setting)
        results.append(
            {
                "dataset": name,
                "method": f"{label} [{chosen}]",
                "path": "frozen",
                **m,
                "val_map@r": val,
                "epoch": result.metrics.get("best_epoch"),
                "seconds": seconds,
                "grid_seconds": total,
            }
        )
        print(
            f"{label:<24} frozen   R@1 {m['recall@1']:.4f}  MAP@R {m['map@r']:.4f}  (chosen: {chosen})",
            flush=True,
        )

    if args.finetune:
        results += run_finetune(name, args, train_rows, test_rows, folder)
    return results


def run_finetune(
    name: str,
    args: argparse.Namespace,
    train_rows: list[tuple[str, str]],
    test_rows: list[tuple[str, str]],
    folder: Path,
) -> list[dict[str, Any]]:
    from frugalvision.bundle import load
    from frugalvision.embeddings import extract_embeddings

    train_csv = write_manifest(subsample(train_rows, args.finetune_per_class), folder / "train-subset.csv")
    test_csv = write_manifest(subsample(test_rows, args.finetune_test_per_class), folder / "test-subset.csv")
    test_ds = open_dataset(test_csv)
    labels = test_ds.primary_labels()
    results = []
    cfg = load_config(
        overrides=[*base_overrides(args, train_csv, folder / "ft-baseline"), "model.freeze_backbone=true"]
    )
    feats, kept = cached_features(
        build_model(cfg), test_ds, args.out / "feature_cache", source=str(test_csv), progress=False
    )
    base = test_metrics(feats, labels[kept])
    results.append(
        {
            "dataset": name,
            "method": f"pretrained backbone (test subset, {len(labels)} images)",
            "path": "-",
            **base,
            "val_map@r": None,
            "epoch": None,
            "seconds": None,
        }
    )
    print(f"fine-tune subset baseline: R@1 {base['recall@1']:.4f}  MAP@R {base['map@r']:.4f}", flush=True)
    for loss in args.losses:
        label, kwargs = LOSSES[loss]
        overrides = [
            *base_overrides(args, train_csv, folder / f"ft-{loss}"),
            f"loss.name={loss}",
            f"trainer.epochs={args.finetune_epochs}",
            f"recipe={args.recipe}",
            "trainer.eval_before_training=false",
            f"model.embedding_size={args.finetune_embedding_size}",
            f"optim.lr={args.finetune_lr}",
            *[f"loss.kwargs.{k}={v}" for k, v in kwargs.items()],
        ]
        start = time.perf_counter()
        result = fit(load_config(overrides=overrides))
        seconds = time.perf_counter() - start
        store = extract_embeddings(
            load(result.bundle),
            test_ds,
            folder / f"ft-{loss}" / "test-embeddings",
            progress=False,
            overwrite=True,
        )
        m = test_metrics(store.vectors, store.label_ids())
        results.append(
            {
                "dataset": name,
                "method": label,
                "path": f"fine-tune ({args.finetune_epochs} ep)",
                **m,
                "val_map@r": result.metrics.get("val/map@r"),
                "epoch": result.metrics.get("best_epoch"),
                "seconds": seconds,
            }
        )
        print(
            f"{label:<24} finetune R@1 {m['recall@1']:.4f}  MAP@R {m['map@r']:.4f}  ({seconds:.0f} s)",
            flush=True,
        )
    return results


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | method [chosen on val] | backbone | Recall@1 | MAP@R | val MAP@R (train classes) | best epoch "
        "| wall-clock s (chosen run / whole grid) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = "" if r["val_map@r"] is None else f"{r['val_map@r']:.4f}"
        epoch = "" if r["epoch"] is None else str(r["epoch"])
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        if r.get("grid_seconds"):
            secs += f" / {r['grid_seconds']:.0f}"
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['path']} | {r['recall@1']:.4f} | {r['map@r']:.4f} | {val} | {epoch} | {secs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-root", type=Path, default=DATA_ROOT, help="folder holding caltech101-dev/ and omniglot/"
    )
    parser.add_argument("--datasets", nargs="+", default=["caltech101-dev", "omniglot"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-train-embedding"), help="runs and feature cache"
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="fast-path epochs (early stopping on the val classes)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--finetune", action="store_true", help="also fine-tune the whole network on a subset"
    )
    parser.add_argument("--finetune-per-class", type=int, default=16)
    parser.add_argument("--finetune-test-per-class", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument(
        "--finetune-lr", type=float, default=1e-5, help="backbone lr of the fine-tune (head: x10)"
    )
    parser.add_argument("--finetune-embedding-size", type=int, default=1280)
    parser.add_argument("--recipe", default="light", choices=["none", "light", "medium", "strong"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    missing = [d for d in args.datasets if not (args.data_root / d).exists()]
    if missing:
        raise SystemExit(f"data not found: {', '.join(str(args.data_root / d) for d in missing)}")
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        rows += run_dataset(name, args)
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
