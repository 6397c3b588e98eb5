"""Single-label classification on real photos: linear probe, fine-tune and LP-FT with EfficientNet-Lite0, calibrated
by temperature scaling; and our linear probe against scikit-learn's ``LogisticRegression`` on the same features.

Data: ``../shared/data/caltech101-dev`` (Caltech-101, 51 classes, CC BY 4.0). A fixed stratified split (seed 0):
in every class folder the images (sorted by name) are shuffled with ``numpy.random.default_rng(0)``, then the first
``--test`` go to the test split, the next ``--val`` to validation and the next ``--train`` to training (capped per
class, so that the run fits a shared CPU; classes with fewer images give what they have, test first). Manifests are
written to ``WORK/split/*.csv``. ``--data`` takes any class-per-folder set, e.g. ``../shared/data/cifar10-test``
(CIFAR-10 test set, 10 classes, Krizhevsky 2009), the second set on which the head-lr default was confirmed.

Methods (all ``frugalvision.train.fit(task=classification)`` with the offline ``tf_efficientnet_lite0`` weights,
the library's defaults -- recipe ``light``, label smoothing 0.1, AdamW, backbone lr 1e-4 with the head at x10 --
except the budget below):

* ``linear probe``: ``model.freeze_backbone=true``, features cached once (not timed), ``--lp-epochs`` epochs;
* ``fine-tune``: the whole network, ``--ft-epochs`` epochs;
* ``LP-FT``: ``model.head_epochs=1`` then the whole network, the same ``--ft-epochs`` epochs in total;
* ``sklearn LogisticRegression``: ``LogisticRegression(C=1.0, max_iter=1000)`` (lbfgs, multinomial) on the very
  cached features the linear probe trains on.

Every bundle's temperature is fitted on the validation split; the table gives the best epoch's validation top-1
(linear probes: the number a head-lr multiplier is chosen on), test top-1, balanced accuracy, ECE
(15 bins) with the raw softmax (``T = 1``) and with the fitted ``T``, and training seconds (``fit`` wall time:
training, the per-epoch validation and checkpoints, then the temperature, report and bundle; the linear probe's feature extraction is done before and not counted;
shared 2-core CPU: indicative only). The linear probe and scikit-learn are scored on the cached test features, the
fine-tuned models on the test images (the same evaluation transform).

Result (``python benchmarks/classification.py --lp-multipliers 10 100``, about 45 min on a 2-core CPU shared with
other jobs -- load average about 20 -- so the seconds are indicative only; head lr x10 is the library's default;
the linear-probe seconds are from before the fix below)::

    caltech101-dev, 51 classes, fixed stratified split (seed 0): 408 train / 204 val / 306 test images; Lite0 at
    96 px, batch 32; budget: linear probe 30 epochs on cached features, fine-tune / LP-FT 2 epochs

    | method                             | test top-1 | bal. acc. | ECE (T = 1) | ECE (fitted T) | T     | train s |
    |------------------------------------|------------|-----------|-------------|----------------|-------|---------|
    | linear probe (30 ep, head lr x10)  | 0.8529     | 0.8529    | 0.3061      | 0.0817         | 0.559 | 471.4   |
    | linear probe (30 ep, head lr x100) | 0.7614     | 0.7614    | 0.0754      | 0.0654         | 1.481 | 399.3   |
    | sklearn LogisticRegression         | 0.8660     | 0.8660    | 0.0777      | --             | --    | 17.6    |
    | fine-tune (2 ep)                   | 0.7614     | 0.7614    | 0.2191      | 0.0630         | 0.606 | 892.3   |
    | LP-FT (1 head + 1 ep)              | 0.7516     | 0.7516    | 0.2012      | 0.0649         | 0.646 | 277.8   |

With label smoothing 0.1 the raw softmax is under-confident (T < 1 sharpens it); temperature scaling fitted on
204 validation images cut the test ECE 3-4x for every trained model. Two fine-tuning epochs at 96 px do not reach
the linear probe at this budget.

Linear-probe speed. Profiled (cProfile), the probe's time went almost entirely into microsecond-sized operations
(the head's ``(32, 1280) @ (1280, 51)``, ``isfinite``, AdamW's updates) that PyTorch split across its 2 intra-op
threads: on a CPU busy with other jobs each split waits for a descheduled thread (``isfinite`` of ``(32, 1280)``:
39 ms with 2 threads, 0.65 ms with 1). The fast path now trains a small head on one thread
(:class:`frugalvision.train.cache.SmallHeadThreads`) and its checkpoints leave out the frozen backbone.
``OMP_NUM_THREADS=2 python benchmarks/classification.py --methods lp sklearn``, the same command before and after,
one after the other (load average 12-14; indicative): linear probe 214.8 s -> 14.1 s (sklearn 15.7 s / 9.7 s in
the same runs), test top-1 0.8529 both times (the same numbers to the last digit: only the threads changed).

Head-lr multiplier of the linear probe (``--methods lp sklearn --lp-multipliers 1 10 100``; chosen on caltech's
validation split, confirmed on CIFAR-10 with ``--data ../shared/data/cifar10-test --train 40 --val 20 --test 60``)::

    caltech101-dev (51 classes, 408 / 204 / 306)  | val top-1 | test top-1 | ECE (T = 1) | ECE (fitted T) | T
    linear probe (30 ep, head lr x1)              | 0.7941    | 0.8497     | 0.3573      | 0.0717         | 0.492
    linear probe (30 ep, head lr x10, default)    | 0.7941    | 0.8529     | 0.3061      | 0.0817         | 0.559
    linear probe (30 ep, head lr x100)            | 0.7255    | 0.7614     | 0.0754      | 0.0654         | 1.481
    sklearn LogisticRegression                    | --        | 0.8660     | 0.0777      | --             | --

    cifar10-test (10 classes, 400 / 200 / 600)    | val top-1 | test top-1 | ECE (T = 1) | ECE (fitted T) | T
    linear probe (30 ep, head lr x1)              | 0.6450    | 0.6200     | 0.2042      | 0.0642         | 0.554
    linear probe (30 ep, head lr x10, default)    | 0.6750    | 0.6417     | 0.0699      | 0.0656         | 0.830
    linear probe (30 ep, head lr x100)            | 0.5850    | 0.5933     | 0.1467      | 0.0488         | 1.814
    sklearn LogisticRegression                    | --        | 0.6483     | 0.1627      | --             | --

On caltech x1 and x10 tie on validation (x100 is 7 points lower), so the default x10 stays; on CIFAR-10 x10 is
best on validation (+3.0 points over x1, +9.0 over x100) and on test. The probe stays 1.3 (caltech) and 0.7
(CIFAR-10) points below scikit-learn's fully converged L2-regularised logistic regression on the same features.

Usage::

    python benchmarks/classification.py                         # the budget above (see --help)
    python benchmarks/classification.py --train 20 --size 160 --ft-epochs 3
    python benchmarks/classification.py --methods lp sklearn --lp-multipliers 1 10 100 \
        --data ../shared/data/cifar10-test --train 40 --val 20 --test 60
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101-dev"
MODEL = "tf_efficientnet_lite0.in1k_offline"


def make_split(root: Path, out: Path, n_train: int, n_val: int, n_test: int) -> dict[str, Path]:
    """The fixed stratified split as three CSV manifests (``path,label``)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        order = np.random.default_rng(0).permutation(len(files))
        picked = [files[i] for i in order]
        parts = {
            "test": picked[:n_test],
            "val": picked[n_test : n_test + n_val],
            "train": picked[n_test + n_val : n_test + n_val + n_train],
        }
        for name, chosen in parts.items():
            rows[name] += [(str(p), folder.name) for p in chosen]
    paths = {}
    for name, items in rows.items():
        paths[name] = out / f"{name}.csv"
        with paths[name].open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(items)
    return paths


def _ece(probs: np.ndarray, labels: np.ndarray) -> float:
    from frugalvision.metrics.classification import expected_calibration_error

    return expected_calibration_error(probs, labels, 15)


def _scores_on_features(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    from frugalvision.metrics.classification import balanced_accuracy, softmax

    return {
        "top1": float(np.mean(logits.argmax(1) == labels)),
        "balanced_accuracy": balanced_accuracy(labels, logits, logits.shape[1]),
        "ece_raw": _ece(softmax(logits), labels),
        "ece": _ece(softmax(logits, temperature), labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench_classification"))
    parser.add_argument(
        "--data", type=Path, default=DATA, help="a class-per-folder data set (default caltech101-dev)"
    )
    parser.add_argument(
        "--lp-multipliers",
        type=float,
        nargs="+",
        default=[None],
        help="linear probe rows with these optim.head_lr_multiplier values (default: the library's default only)",
    )
    parser.add_argument("--train", type=int, default=8, help="training images per class (at most)")
    parser.add_argument("--val", type=int, default=4, help="validation images per class")
    parser.add_argument("--test", type=int, default=6, help="test images per class")
    parser.add_argument("--size", type=int, default=96, help="input resolution (pixels) of every method")
    parser.add_argument("--lp-epochs", type=int, default=30)
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["lp", "sklearn", "ft", "lpft"])
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: the benchmark reads caltech101-dev from ../shared/data")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)

    from frugalvision.classify import Classifier, evaluate_classifier
    from frugalvision.data import read_manifest
    from frugalvision.train import build_model, fit, load_config
    from frugalvision.train.cache import cached_features
    from frugalvision.train.config import OptimConfig

    work = args.work.resolve()
    split = make_split(args.data, work / "split", args.train, args.val, args.test)
    sizes = {k: len(read_manifest(p)) for k, p in split.items()}
    cache = work / "feature_cache"
    common = [
        "task=classification",
        f"model.name={MODEL}",
        f"model.input_size={args.size}",
        f"data.path={split['train']}",
        f"data.val_data={split['val']}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        "trainer.progress=false",
        "trainer.patience=null",
        f"data.cache_dir={cache}",
    ]
    rows: list[dict[str, Any]] = []

    # features once, for the linear probe and scikit-learn (not timed)
    lp_cfg = load_config(None, [*common, "model.freeze_backbone=true", f"trainer.epochs={args.lp_epochs}"])
    probe_model = build_model(lp_cfg, num_classes=2)
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t0 = time.perf_counter()
    for name in ("train", "val", "test"):
        dataset = read_manifest(split[name])
        x, kept = cached_features(probe_model, dataset, cache, source=str(split[name]), progress=False)
        names = [dataset.classes[i] for i in dataset.primary_labels()[kept]]
        feats[name] = (x, np.array(names, dtype=object))
    print(
        f"features: {sum(len(v[0]) for v in feats.values())} images in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    classes = sorted(set(feats["train"][1]))
    y_test = np.array([classes.index(c) for c in feats["test"][1]])
    for multiplier in args.lp_multipliers if "lp" in args.methods else []:
        cfg = lp_cfg if multiplier is None else load_config(None, [*common, "model.freeze_backbone=true", f"trainer.epochs={args.lp_epochs}", f"optim.head_lr_multiplier={multiplier}"])  # fmt: skip
        tag = "" if multiplier is None else f", head lr x{multiplier:g}"
        start = time.perf_counter()
        result = fit(cfg.replace(out=str(work / f"lp{multiplier}")))
        seconds = time.perf_counter() - start
        assert list(result.model.config["classes"]) == classes
        with torch.inference_mode():
            logits = result.model.embed_features(torch.from_numpy(feats["test"][0])).double().numpy()
        rows.append({"method": f"linear probe ({args.lp_epochs} ep{tag})", "multiplier": cfg.optim.head_lr_multiplier, "val_top1": result.metrics["val/top1"], **_scores_on_features(logits, y_test, result.temperature), "T": result.temperature, "seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)
    if "sklearn" in args.methods:
        from sklearn.linear_model import LogisticRegression

        y_train = np.array([classes.index(c) for c in feats["train"][1]])
        start = time.perf_counter()
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(feats["train"][0], y_train)
        seconds = time.perf_counter() - start
        probs = lr.predict_proba(feats["test"][0])
        full = np.zeros((len(probs), len(classes)))
        full[:, lr.classes_] = probs
        top1 = float(np.mean(full.argmax(1) == y_test))
        from frugalvision.metrics.classification import balanced_accuracy

        rows.append({"method": "sklearn LogisticRegression", "top1": top1, "balanced_accuracy": balanced_accuracy(y_test, full, len(classes)), "ece_raw": _ece(full, y_test), "ece": float("nan"), "T": float("nan"), "seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)

    for key, label, extra in (
        ("ft", f"fine-tune ({args.ft_epochs} ep)", []),
        ("lpft", f"LP-FT (1 head + {args.ft_epochs - 1} ep)", ["model.head_epochs=1"]),
    ):
        if key not in args.methods:
            continue
        cfg = load_config(None, [*common, f"trainer.epochs={args.ft_epochs}", f"out={work / key}", *extra])
        start = time.perf_counter()
        result = fit(cfg)
        seconds = time.perf_counter() - start
        assert result.bundle is not None
        ev = evaluate_classifier(Classifier(result.bundle), read_manifest(split["test"]), progress=False)
        m = ev["metrics"]
        rows.append({"method": label, "top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"], "ece_raw": m["ece_raw"], "ece": m["ece"], "T": m["temperature"], "seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)

    print(
        f"\n{args.data.name}, {len(classes)} classes, fixed stratified split (seed 0): {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} test images; Lite0 at {args.size} px, batch {args.batch_size}; budget: linear probe "
        f"{args.lp_epochs} epochs on cached features, fine-tune / LP-FT {args.ft_epochs} epochs; shared 2-core CPU"
    )
    print("| method | val top-1 | test top-1 | balanced acc. | ECE (T = 1) | ECE (fitted T) | T | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        val = f"{r['val_top1']:.4f}" if "val_top1" in r else "--"
        print(
            f"| {r['method']} | {val} | {r['top1']:.4f} | {r['balanced_accuracy']:.4f} | {r['ece_raw']:.4f} | "
            f"{r['ece']:.4f} | {r['T']:.3f} | {r['seconds']:.1f} |"
        )
    base = {r["method"]: r for r in rows}
    probes = [r for r in rows if "multiplier" in r]
    default = OptimConfig().head_lr_multiplier
    lp = next((r for r in probes if r["multiplier"] == default), probes[0] if probes else None)
    sk = base.get("sklearn LogisticRegression")
    if lp and sk:
        print(
            f"\n{lp['method']} vs scikit-learn on the same features: top-1 {lp['top1'] - sk['top1']:+.4f}, "
            f"time ratio {lp['seconds'] / max(sk['seconds'], 1e-9):.1f}x"
        )


if __name__ == "__main__":
    main()
