"""Time ``frugalvision.metrics.retrieval_metrics`` against pytorch-metric-learning's ``AccuracyCalculator``.

Both compute Precision@1, R-Precision, MAP@R and NMI of the same embeddings (class centres plus Gaussian
noise, L2-normalised so that pml's L2 search ranks like our cosine search) on the CPU, and the script checks
that the values agree. pml is run with ``k="max_bin_count"``: its default ``k=None`` asks for the full
N × N ranking (20 GB of indices at N = 50,000), and MAP@R / R-Precision only need ``max R`` neighbours.

Usage::

    python benchmarks/retrieval_metrics.py --n 50000 --dim 128 --classes 100 --repeats 3
    python benchmarks/retrieval_metrics.py --n 20000 --long-tail   # Zipf class sizes

We search each query only as deep as it needs (its own R), pml searches every query as deep as the largest
class; the gap grows with class imbalance (``--long-tail``).

Import :func:`run` to reuse the measurement.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import faiss
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from frugalvision.metrics import retrieval_metrics

OUR_INCLUDE = ("precision_at_1", "r_precision", "map_at_r", "nmi")
PML_INCLUDE = ("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI")
PML_TO_OURS = dict(zip(PML_INCLUDE, ("precision@1", "r_precision", "map@r", "nmi"), strict=True))
PML_KMEANS_SEED = 1234  # faiss's default k-means seed, which pml uses
AGREEMENT_TOL = 1e-4  # float32 search: a few near-ties may order differently at N = 50k


def make_data(
    n: int, dim: int, classes: int, seed: int = 0, long_tail: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, dim)`` unit-norm embeddings around ``classes`` random centres, and ``(n,)`` int64 labels.

    Classes are equally likely, or with ``long_tail`` Zipf-distributed (class ``c`` has probability
    proportional to ``1 / (c + 1)``). The noise (σ = 2 per coordinate) keeps MAP@R well below 1.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    weights = 1.0 / torch.arange(1, classes + 1) if long_tail else torch.ones(classes)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    emb = centres[labels] + 2.0 * torch.randn(n, dim, generator=g)
    return F.normalize(emb, dim=1), labels


Fn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def _best_times(
    fns: dict[str, Fn], emb: torch.Tensor, labels: torch.Tensor, repeats: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Best wall-clock seconds and last values of each function; runs alternate so both see the same load."""
    warm = min(len(emb), 4000)
    for fn in fns.values():
        fn(emb[:warm], labels[:warm])  # untimed warm-up: thread pools, lazy imports
    best = dict.fromkeys(fns, float("inf"))
    values: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            values[name] = fn(emb, labels)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, values


TIMED = (  # (row name, our include, pml include)
    ("neighbours", OUR_INCLUDE[:3], PML_INCLUDE[:3]),
    ("nmi", OUR_INCLUDE[3:], PML_INCLUDE[3:]),
    ("all four", OUR_INCLUDE, PML_INCLUDE),
)


def run(
    n: int = 50_000, dim: int = 128, classes: int = 100, repeats: int = 3, long_tail: bool = False
) -> list[dict]:
    """Time both implementations on the same data and compare their values.

    Returns one row per timed task (``"neighbours"`` = Precision@1 + R-Precision + MAP@R from one k-NN
    pass, ``"nmi"``, ``"all four"``) with ``task``, ``ours_s`` / ``pml_s`` (best of ``repeats`` wall-clock
    seconds), ``speedup`` (pml_s / ours_s), ``values`` (``{metric: (ours, pml)}``), ``max_abs_diff`` and
    ``agree`` (max_abs_diff <= 1e-4). ``long_tail``: Zipf class sizes (see :func:`make_data`).
    """
    emb, labels = make_data(n, dim, classes, long_tail=long_tail)
    logging.getLogger("PML").setLevel(logging.ERROR)
    rows = []
    for task, ours_include, pml_include in TIMED:
        calc = AccuracyCalculator(include=pml_include, k="max_bin_count", device=torch.device("cpu"))
        times, results = _best_times(
            {
                "ours": lambda e, y, inc=ours_include: retrieval_metrics(
                    e, y, metric="cosine", include=inc, seed=PML_KMEANS_SEED, nmi_init="random", nmi_n_init=1
                ),  # pml's NMI settings (one faiss k-means run from random points), so both compute the same
                "pml": lambda e, y, calc=calc: calc.get_accuracy(e, y),
            },
            emb,
            labels,
            repeats,
        )
        ours_s, pml_s, ours, pml_raw = times["ours"], times["pml"], results["ours"], results["pml"]
        values = {PML_TO_OURS[key]: (ours[PML_TO_OURS[key]], float(v)) for key, v in pml_raw.items()}
        diff = max(abs(a - b) for a, b in values.values())
        rows.append(
            {
                "task": task,
                "ours_s": ours_s,
                "pml_s": pml_s,
                "speedup": pml_s / ours_s,
                "values": values,
                "max_abs_diff": diff,
                "agree": diff <= AGREEMENT_TOL,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension")
    parser.add_argument("--classes", type=int, default=100, help="number of classes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best is kept)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and faiss threads (default: unchanged)"
    )
    parser.add_argument(
        "--long-tail",
        action="store_true",
        help="Zipf class sizes instead of equal ones (pml needs much memory)",
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rows = run(args.n, args.dim, args.classes, args.repeats, args.long_tail)
    print(
        f"N={args.n}  D={args.dim}  classes={args.classes}  long_tail={args.long_tail}  threads={torch.get_num_threads()}/{faiss.omp_get_max_threads()} (torch/faiss)  best of {args.repeats}"
    )
    print(f"{'task':<12} {'ours s':>8} {'pml s':>8} {'pml/ours':>9}  {'max |diff|':>10}")
    for row in rows:
        print(
            f"{row['task']:<12} {row['ours_s']:>8.2f} {row['pml_s']:>8.2f} {row['speedup']:>9.2f}  {row['max_abs_diff']:>10.2e}"
        )
    print(f"\n{'metric':<12} {'ours':>10} {'pml':>10}")
    for metric, (ours, pml) in rows[-1]["values"].items():
        print(f"{metric:<12} {ours:>10.6f} {pml:>10.6f}")
    if not all(row["agree"] for row in rows):
        raise SystemExit(f"values disagree by more than {AGREEMENT_TOL}")
    print(f"values agree within {AGREEMENT_TOL}")


if __name__ == "__main__":
    main()
