"""Distillation on real images: how close does a small student trained from scratch get to its teacher, and how
much faster is it on a CPU?

Teacher: EfficientNet-Lite0 with its offline ImageNet weights (``tf_efficientnet_lite0.in1k_offline``), pooled
1280-d features at its own 224 px preprocessing. Student: ``mobilenetv3_small_100`` from random weights (no
pretraining of any kind) at ``--input-size`` px (128 by default), its own pre-logits (pooled map + 1x1
``conv_head`` to 1024) + a linear head to 1280-d, trained by :func:`frugalvision.distill.distill` (symmetric InfoNCE at tau 0.07 + MSE on normalised
embeddings; AdamW, warm-up + cosine; the ``light`` augmentation recipe on the student's images, clean images for the
teacher, whose embeddings are computed once and cached).

Data: ``../shared/data/caltech101-dev`` (51 Caltech-101 classes). Protocol ``classes`` (default, the harder one):
the student distils on up to ``--train-per-class`` photos of each of the first 26 classes in sorted order
(``Faces`` ... ``cougar_face``) and is tested on up to ``--test-per-class`` photos of each of the other 25 classes
(``crab`` ... ``helicopter``), which it never saw. Protocol ``images``: it distils on photos of all 51 classes and
is tested on other photos of the same classes. Labels are never used for training. Test metrics: kNN Recall@1 and
MAP@R with cosine similarity, every test image querying all the other test images
(:func:`frugalvision.metrics.retrieval_metrics`).

Rows: the teacher; the teacher run at the student's resolution (the cheap alternative to distillation); the
student with its initial weights (the floor); the distilled student (``--student-pretrained``: the student starts
from pretrained weights, e.g. the teacher's own at 128 px). CPU speed: torch eager, ``--threads``
intra-op threads (2), images per second at batch 1 and batch 32 (median over timed repetitions after warm-up),
each model at its own input size; ratios are student / teacher.

Usage::

    python benchmarks/distill.py                       # ~8 min on 2 idle cores (teacher features included)
    python benchmarks/distill.py --epochs 60 --train-per-class 200 --protocol images
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frugalvision.data import open_dataset
from frugalvision.distill import DistillConfig, build_student, distill, trainable_parameters
from frugalvision.embeddings import extract_embeddings
from frugalvision.foundation import create_feature_model
from frugalvision.metrics import retrieval_metrics

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
TEACHER = "tf_efficientnet_lite0.in1k_offline"


def write_manifest(rows: list[tuple[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def split_rows(root: Path, protocol: str, train_per_class: int, test_per_class: int, seed: int):
    """``(train rows, test rows)`` of ``(path, class)``, each class's photos drawn at random with ``seed``."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for i, c in enumerate(classes):
        files = [str(f) for f in sorted((root / c).iterdir()) if f.is_file()]
        order = rng.permutation(len(files))
        if protocol == "classes":
            chosen = [files[j] for j in order[: train_per_class if i < 26 else test_per_class]]
            (train if i < 26 else test).extend((f, c) for f in sorted(chosen))
        else:
            n_test = min(test_per_class, len(files) // 2)
            test.extend((files[j], c) for j in sorted(order[:n_test]))
            train.extend((files[j], c) for j in sorted(order[n_test : n_test + train_per_class]))
    return train, test


def metrics(vectors: np.ndarray | torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    out = retrieval_metrics(vectors, labels, k=(1,), metric="cosine", include=("recall", "map_at_r"))
    return {"recall@1": out["recall@1"], "map@r": out["map@r"]}


@torch.inference_mode()
def images_per_second(
    nets: dict[str, tuple[torch.nn.Module, int]], batch: int, seconds: float, rounds: int = 5
) -> dict[str, float]:
    """Median images/s of each model (eval mode, random ``(batch, 3, size, size)`` inputs).

    The models take turns (``rounds`` rounds of ``seconds / rounds`` each after a warm-up), so a change in the load
    of a shared machine hits them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in nets}
    inputs = {name: torch.randn(batch, 3, size, size) for name, (_, size) in nets.items()}
    for name, (net, _) in nets.items():
        net.eval()
        for _ in range(3):
            net(inputs[name])
    for _ in range(rounds):
        for name, (net, _) in nets.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds or len(times[name]) < 2:
                t = time.perf_counter()
                net(inputs[name])
                times[name].append(time.perf_counter() - t)
    return {name: batch / statistics.median(values) for name, values in times.items()}


def embed(model: Any, dataset: Any, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    store = extract_embeddings(model, dataset, folder, num_workers=0, progress=False, overwrite=True)
    return store.vectors, store.label_ids()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder holding caltech101-dev/")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-distill"), help="runs, manifests, caches"
    )
    parser.add_argument("--protocol", choices=["classes", "images"], default="classes")
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--input-size", type=int, default=128, help="student resolution")
    parser.add_argument(
        "--student-pretrained",
        action="store_true",
        help="start the student from its pretrained weights (offline names only here), e.g. "
        "--student tf_efficientnet_lite0.in1k_offline --student-pretrained: the teacher at a lower resolution, "
        "distilled towards its own full-resolution embeddings",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--head-only-epochs", type=int, default=0, help="train the student's head alone first (LP-FT)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=DistillConfig.lr)
    parser.add_argument("--recipe", default="light", choices=["none", "light", "medium", "strong"])
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (training and timing)")
    parser.add_argument("--speed-seconds", type=float, default=4.0, help="timing per model and batch size")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    root = args.data_root / "caltech101-dev"
    if not root.exists():
        raise SystemExit(f"data not found: {root} (see ../shared/data/README.md)")
    wall = time.perf_counter()
    train_rows, test_rows = split_rows(
        root, args.protocol, args.train_per_class, args.test_per_class, args.seed
    )
    train_csv = write_manifest(train_rows, args.out / "train.csv")
    test_csv = write_manifest(test_rows, args.out / "test.csv")
    print(
        f"caltech101-dev, protocol {args.protocol}: {len(train_rows)} training photos "
        f"({len({c for _, c in train_rows})} classes), {len(test_rows)} test photos "
        f"({len({c for _, c in test_rows})} classes)",
        flush=True,
    )

    init = "pretrained" if args.student_pretrained else "random init"
    run = (
        args.out
        / f"{args.student}-{args.input_size}px-{args.protocol}{'-pretrained' if args.student_pretrained else ''}"
    )
    config = DistillConfig(
        data=str(train_csv),
        val_data=str(test_csv),
        out=str(run),
        teacher=TEACHER,
        teacher_cache=str(args.out / "teacher_cache"),
        student=args.student,
        student_pretrained=args.student_pretrained,
        input_size=args.input_size,
        epochs=args.epochs,
        head_only_epochs=args.head_only_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        recipe=args.recipe,
        eval_every=max(1, args.epochs // 6),
        num_workers=args.workers,
        accelerator=args.accelerator,
        seed=args.seed,
        progress=False,
    )
    if (run / "checkpoints" / "last.ckpt").exists():
        import shutil

        shutil.rmtree(run)  # a fresh run each time (the teacher cache lives beside it)
    start = time.perf_counter()
    result = distill(config)
    train_s = time.perf_counter() - start
    for h in result.history:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in h.items() if k != "epoch" and isinstance(v, float))
        print(f"  epoch {h['epoch']:>3}  {shown}", flush=True)
    print(f"distillation (teacher features + training): {train_s:.0f} s", flush=True)

    test_ds = open_dataset(test_csv)
    teacher = create_feature_model(TEACHER)
    teacher_low = create_feature_model(TEACHER)
    teacher_low.data_config = {**teacher_low.data_config, "input_size": (3, args.input_size, args.input_size)}
    low_vectors, low_labels = embed(teacher_low, test_ds, args.out / f"teacher-{args.input_size}px-test")
    torch.manual_seed(args.seed)
    scratch = build_student(config, result.model.embedding_size)
    scratch_vectors, scratch_labels = embed(scratch, test_ds, run / "random-init-test")

    teacher_size = int(teacher.data_config["input_size"][-1])
    rows: list[dict[str, Any]] = [
        {
            "model": f"teacher {TEACHER} @{teacher_size}px",
            "params": sum(p.numel() for p in teacher.parameters()),
            "recall@1": result.teacher_metrics["val/recall@1"],
            "map@r": result.teacher_metrics["val/map@r"],
            "net": teacher,
            "size": teacher_size,
        },
        {
            "model": f"teacher @{args.input_size}px (no distillation)",
            "params": sum(p.numel() for p in teacher.parameters()),
            **metrics(low_vectors, low_labels),
            "net": teacher,
            "size": args.input_size,
        },
        {
            "model": f"student {args.student} @{args.input_size}px, {init} (not distilled)",
            "params": trainable_parameters(scratch),
            **metrics(scratch_vectors, scratch_labels),
            "net": None,
            "size": args.input_size,
        },
        {
            "model": f"student {args.student} @{args.input_size}px, {init}, distilled ({args.epochs} ep)",
            "params": result.student_params,
            "recall@1": result.metrics["val/recall@1"],
            "map@r": result.metrics["val/map@r"],
            "cosine": result.metrics["val/cosine"],
            "net": result.model,
            "size": args.input_size,
        },
    ]
    nets = {r["model"]: (r["net"], r["size"]) for r in rows if r["net"] is not None}
    for batch in (1, 32):
        speed = images_per_second(nets, batch, args.speed_seconds * len(nets))
        for row in rows:
            if row["model"] in speed:
                row[f"img/s b{batch}"] = speed[row["model"]]
    ref, student = rows[0], rows[-1]

    print(f"\ntest photos: {len(test_rows)}; CPU: torch eager, {args.threads} threads\n")
    print("| model | params | Recall@1 | MAP@R | img/s batch 1 | img/s batch 32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        b1 = f"{r['img/s b1']:.1f}" if "img/s b1" in r else ""
        b32 = f"{r['img/s b32']:.1f}" if "img/s b32" in r else ""
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['recall@1']:.4f} | {r['map@r']:.4f} | {b1} | {b32} |"
        )
    print(
        f"| student / teacher | {student['params'] / ref['params']:.2f}x | "
        f"{student['recall@1'] / ref['recall@1']:.2f}x | {student['map@r'] / ref['map@r']:.2f}x | "
        f"{student['img/s b1'] / ref['img/s b1']:.1f}x | {student['img/s b32'] / ref['img/s b32']:.1f}x |"
    )
    print(
        f"\nstudent-teacher cosine on the test photos: {result.metrics['val/cosine']:.4f}; "
        f"nearest-neighbour agreement: {result.metrics['val/nn_agreement']:.4f}"
    )
    total = time.perf_counter() - wall
    print(f"wall time: {total:.0f} s (distillation {train_s:.0f} s)")
    summary = [{k: v for k, v in r.items() if k != "net"} for r in rows]
    (args.out / "results.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "rows": summary, "wall_s": total}, indent=2
        )
    )


if __name__ == "__main__":
    main()
