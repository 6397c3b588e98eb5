"""Time ``frugalvision.metrics`` multi-label metrics against sklearn and torchmetrics.

Two tasks on the same long-tailed data (class ``c`` present with probability ``0.3 / (c + 1)^0.8``, some
entries unknown = -1, scores = noisy function of the targets in [0, 1]):

* ``mAP``: per-class AP averaged over classes. sklearn: ``average_precision_score`` per class on its known
  rows; torchmetrics: ``multilabel_average_precision(average="macro", ignore_index=-1)``.
* ``report``: mAP plus CP/CR/CF1/OP/OR/OF1 at threshold 0.5 and for top-3 prediction (13 numbers, what
  :func:`frugalvision.metrics.multilabel_metrics` returns). sklearn: AP per class, ``precision_score`` /
  ``recall_score`` per class on its known rows (macro) and on the pooled known entries (micro); torchmetrics:
  ``multilabel_average_precision`` plus ``multilabel_precision`` / ``multilabel_recall`` (macro and micro,
  ``ignore_index=-1``) of the 0/1 prediction matrices (thresholded and top-3), which are built outside the
  timed peer code's metric calls but inside its timing.

Usage::

    python benchmarks/multilabel_metrics.py --n 20000 --classes 80 --unknown 0.1 --repeats 3
    python benchmarks/multilabel_metrics.py --decimals 2   # scores rounded: many ties

sklearn agrees to float64 round-off (~1e-15); torchmetrics returns float32, so it agrees to ~1e-7.

Import :func:`run` to reuse the measurement.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_precision,
    multilabel_recall,
)

from frugalvision.metrics import mean_average_precision, multilabel_metrics

THRESHOLD = 0.5
TOP_K = 3
SKLEARN_TOL = 1e-12
TORCHMETRICS_TOL = 1e-5  # float32 results


def make_data(
    n: int, classes: int, seed: int = 0, unknown: float = 0.1, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, classes)`` float64 scores in [0, 1] and int64 targets in {1, 0, -1}, long-tailed class frequency."""
    rng = np.random.default_rng(seed)
    freq = 0.3 / np.arange(1, classes + 1) ** 0.8
    targets = (rng.random((n, classes)) < freq).astype(np.int64)
    scores = np.clip(0.4 * targets + rng.normal(0.3, 0.15, (n, classes)), 0.0, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)
    targets[rng.random((n, classes)) < unknown] = -1
    return scores, targets


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    pred = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(pred, np.argsort(-scores, axis=1, kind="stable")[:, :k], True, axis=1)
    return pred


# ------------------------------------------------------------------------------------------ sklearn


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    aps = []
    for c in range(scores.shape[1]):
        known = targets[:, c] != -1
        if (targets[known, c] == 1).any():
            aps.append(average_precision_score(targets[known, c], scores[known, c]))
    return float(np.mean(aps))


def _sklearn_summary(pred: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    known = targets != -1
    has_pos = [c for c in range(targets.shape[1]) if (targets[:, c] == 1).any()]
    cols = [(targets[known[:, c], c], pred[known[:, c], c]) for c in has_pos]
    cp = float(np.mean([precision_score(y, p, zero_division=0) for y, p in cols]))
    cr = float(np.mean([recall_score(y, p, zero_division=0) for y, p in cols]))
    op = float(precision_score(targets[known], pred[known], zero_division=0))
    orc = float(recall_score(targets[known], pred[known], zero_division=0))
    return {"cp": cp, "cr": cr, "cf1": _f1(cp, cr), "op": op, "or": orc, "of1": _f1(op, orc)}


def sklearn_report(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    out = {"map": sklearn_map(scores, targets)}
    out.update(_sklearn_summary(scores >= THRESHOLD, targets))
    out.update({f"{k}@top{TOP_K}": v for k, v in _sklearn_summary(_top_k(scores, TOP_K), targets).items()})
    return out


# ------------------------------------------------------------------------------------------ torchmetrics


def torchmetrics_map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    c = scores.shape[1]
    return float(
        multilabel_average_precision(scores, targets, num_labels=c, average="macro", ignore_index=-1)
    )


def _torchmetrics_summary(pred: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    c = pred.shape[1]
    kw = {"num_labels": c, "threshold": 0.5, "ignore_index": -1}
    cp = float(multilabel_precision(pred, targets, average="macro", **kw))  # type: ignore[arg-type]
    cr = float(multilabel_recall(pred, targets, average="macro", **kw))  # type: ignore[arg-type]
    op = float(multilabel_precision(pred, targets, average="micro", **kw))  # type: ignore[arg-type]
    orc = float(multilabel_recall(pred, targets, average="micro", **kw))  # type: ignore[arg-type]
    return {"cp": cp, "cr": cr, "cf1": _f1(cp, cr), "op": op, "or": orc, "of1": _f1(op, orc)}


def torchmetrics_report(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    out = {"map": torchmetrics_map(scores, targets)}
    out.update(_torchmetrics_summary((scores >= THRESHOLD).double(), targets))
    # a stable sort gives ties to the lower class index, our rule (torch.topk would break ties arbitrarily)
    top_idx = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :TOP_K]
    top = torch.zeros_like(scores).scatter_(1, top_idx, 1.0)
    out.update({f"{k}@top{TOP_K}": v for k, v in _torchmetrics_summary(top, targets).items()})
    return out


# ------------------------------------------------------------------------------------------ timing


Fn = Callable[[], dict[str, float]]


def _best_times(fns: dict[str, Fn], repeats: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Best wall-clock seconds and values of each function; runs alternate so all see the same load."""
    best = dict.fromkeys(fns, float("inf"))
    values: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            values[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, values


def run(
    n: int = 20_000,
    classes: int = 80,
    repeats: int = 3,
    unknown: float = 0.1,
    decimals: int | None = None,
) -> list[dict]:
    """Time the three implementations on the same data and compare their values.

    Returns one row per task (``"mAP"``, ``"report"``) with ``task``, ``seconds`` (``{impl: best of
    repeats}``), ``values`` (``{metric: {impl: value}}``) and ``max_abs_diff`` (``{peer: max |ours - peer|}``).
    """
    scores, targets = make_data(n, classes, unknown=unknown, decimals=decimals)
    s_t, t_t = torch.from_numpy(scores), torch.from_numpy(targets)
    tasks: dict[str, dict[str, Fn]] = {
        "mAP": {
            "ours": lambda: {"map": mean_average_precision(scores, targets)},
            "sklearn": lambda: {"map": sklearn_map(scores, targets)},
            "torchmetrics": lambda: {"map": torchmetrics_map(s_t, t_t)},
        },
        "report": {
            "ours": lambda: multilabel_metrics(scores, targets, thresholds=THRESHOLD, top_k=TOP_K),
            "sklearn": lambda: sklearn_report(scores, targets),
            "torchmetrics": lambda: torchmetrics_report(s_t, t_t),
        },
    }
    small = min(n, 2000)
    multilabel_metrics(scores[:small], targets[:small])  # warm-up: lazy imports, thread pools
    torchmetrics_report(s_t[:small], t_t[:small])
    sklearn_map(scores[:small], targets[:small])
    rows = []
    for task, fns in tasks.items():
        seconds, results = _best_times(fns, repeats)
        values = {key: {impl: results[impl][key] for impl in fns} for key in results["ours"]}
        diff = {
            peer: max(abs(v["ours"] - v[peer]) for v in values.values())
            for peer in ("sklearn", "torchmetrics")
        }
        rows.append({"task": task, "seconds": seconds, "values": values, "max_abs_diff": diff})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of images")
    parser.add_argument("--classes", type=int, default=80, help="number of classes")
    parser.add_argument("--unknown", type=float, default=0.1, help="fraction of entries set to -1 (unknown)")
    parser.add_argument("--decimals", type=int, default=None, help="round scores (many ties)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run(args.n, args.classes, args.repeats, args.unknown, args.decimals)
    print(
        f"N={args.n}  C={args.classes}  unknown={args.unknown}  decimals={args.decimals}  "
        f"torch threads={torch.get_num_threads()}  best of {args.repeats}"
    )
    print(
        f"{'task':<8} {'ours s':>8} {'sklearn s':>10} {'tm s':>8} {'sk/ours':>8} {'tm/ours':>8}"
        f"  {'|diff| sk':>10} {'|diff| tm':>10}"
    )
    for row in rows:
        sec, diff = row["seconds"], row["max_abs_diff"]
        print(
            f"{row['task']:<8} {sec['ours']:>8.3f} {sec['sklearn']:>10.3f} {sec['torchmetrics']:>8.3f}"
            f" {sec['sklearn'] / sec['ours']:>8.1f} {sec['torchmetrics'] / sec['ours']:>8.1f}"
            f"  {diff['sklearn']:>10.1e} {diff['torchmetrics']:>10.1e}"
        )
    print(f"\n{'metric':<10} {'ours':>10} {'sklearn':>10} {'torchmetrics':>13}")
    for metric, v in rows[-1]["values"].items():
        print(f"{metric:<10} {v['ours']:>10.6f} {v['sklearn']:>10.6f} {v['torchmetrics']:>13.6f}")
    bad = [
        f"{row['task']} vs {peer}"
        for row in rows
        for peer, tol in (("sklearn", SKLEARN_TOL), ("torchmetrics", TORCHMETRICS_TOL))
        if not row["max_abs_diff"][peer] <= tol
    ]
    if bad:
        raise SystemExit(f"values disagree: {', '.join(bad)}")
    print(f"values agree: sklearn within {SKLEARN_TOL}, torchmetrics (float32) within {TORCHMETRICS_TOL}")


if __name__ == "__main__":
    main()
