"""Forward+backward time of every registered loss, and ours / pytorch-metric-learning's where pml has the loss.

    .venv/bin/python benchmarks/losses.py                 # all cores, sizes 256x512 and 1024x128
    .venv/bin/python benchmarks/losses.py --threads 1 --repeats 20 --sizes 256x512

Batches are m-per-class, as a metric-learning sampler draws them: 256x512 holds 64 classes x 4 samples,
1024x128 holds 100 classes x ~10 samples; losses with class weights or proxies are built for that many classes.
Each cell is the median of ``--repeats`` timed forward+backward passes after ``--warmup`` untimed ones. Our loss
and pml's run alternately in the same process, on the same inputs, with equivalent settings (the ratio column).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision.losses import create_loss, get_loss_class, list_losses

Inputs = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Special:
    """How to benchmark a loss that needs more than ``(num_classes, embedding_size)`` and ``(x, y)``."""

    kwargs: Callable[[int, int], dict[str, Any]] = field(default_factory=lambda: lambda num_classes, dim: {})
    # Applied to the embeddings inside the timed step.
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x


# Losses whose construction or inputs need help. Keep this table in step with the registry.
SPECIAL: dict[str, Special] = {
    # Guidance alone (base_loss=None), with precomputed class-name embeddings instead of a language model.
    "language_guided": Special(
        kwargs=lambda num_classes, dim: {"class_embeddings": torch.randn(num_classes, 384)}
    ),
    # Points must lie inside the Poincaré ball: project like a normalised head would.
    "hyperbolic_pce": Special(prepare=lambda x: 0.9 * F.normalize(x, dim=1)),
}


def _pml_rows() -> dict[
    str, tuple[dict[str, Any], Callable[[int, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]
]:
    """Row name -> (our create_loss kwargs, factory of pml's equivalent ``f(x, y) -> loss``)."""
    import math

    from pytorch_metric_learning import losses as pml
    from pytorch_metric_learning import miners

    def with_miner(loss: nn.Module, miner: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, y: loss(x, y, miner(x, y))

    return {
        "triplet": ({}, lambda c, d: pml.TripletMarginLoss(margin=0.2)),
        "triplet[semihard]": (
            {"mining": "semihard"},
            lambda c, d: with_miner(
                pml.TripletMarginLoss(margin=0.2),
                miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
            ),
        ),
        "triplet[hard]": (
            {"mining": "hard"},
            lambda c, d: with_miner(pml.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()),
        ),
        "arcface": ({}, lambda c, d: pml.ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=64)),
        "cosface": ({}, lambda c, d: pml.CosFaceLoss(c, d, margin=0.35, scale=64)),
        "sphereface": ({}, lambda c, d: pml.SphereFaceLoss(c, d, margin=4)),
        "proxynca": ({"exclude_positive": False}, lambda c, d: pml.ProxyNCALoss(c, d, softmax_scale=1)),
        "proxynca++": ({}, lambda c, d: pml.ProxyNCALoss(c, d, softmax_scale=9)),
    }


def _labels(batch: int, num_classes: int) -> torch.Tensor:
    """m-per-class labels: class ``i % num_classes`` for sample ``i``, shuffled."""
    labels = torch.arange(batch) % num_classes
    return labels[torch.randperm(batch)]


def _time(steps: list[Callable[[], None]], warmup: int, repeats: int) -> list[float]:
    """Median milliseconds of each step; the steps alternate within every repeat so that load from other
    processes hits them alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, bucket in zip(steps, times, strict=True):
            start = time.perf_counter()
            step()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) * 1e3 for bucket in times]


def _step(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> Callable[[], None]:
    module = fn if isinstance(fn, nn.Module) else None

    def step() -> None:
        x.grad = None
        if module is not None:
            module.zero_grad(set_to_none=True)
        fn(prepare(x), y).backward()

    return step


def _build(name: str, num_classes: int, dim: int, extra: dict[str, Any]) -> nn.Module:
    params = inspect.signature(get_loss_class(name)).parameters
    kwargs: dict[str, Any] = {}
    if "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if "embedding_size" in params:
        kwargs["embedding_size"] = dim
    special = SPECIAL.get(name)
    if special is not None:
        kwargs.update(special.kwargs(num_classes, dim))
    kwargs.update(extra)
    return create_loss(name, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    parser.add_argument("--sizes", default="256x512x64,1024x128x100", help="BxDxC list: batch, dim, classes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--no-pml", action="store_true", help="skip pytorch-metric-learning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pml_rows = {} if args.no_pml else _pml_rows()
    rows: list[tuple[str, str, dict[str, Any]]] = []  # (row name, registry name, our extra kwargs)
    for name in list_losses(include_aliases=False):
        rows.append((name, name, pml_rows.get(name, ({}, None))[0]))
    for row in pml_rows:
        if "[" in row:
            rows.append((row, row.split("[")[0], pml_rows[row][0]))
    rows.sort()
    if args.only:
        wanted = set(args.only.split(","))
        rows = [r for r in rows if r[0] in wanted]

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} after {args.warmup} warm-up"
    )
    print()
    print("| loss | B×D (classes) | ours fwd+bwd (ms) | pml fwd+bwd (ms) | ours / pml |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes.split(","):
        batch, dim, num_classes = (int(v) for v in size.split("x"))
        x = torch.randn(batch, dim, requires_grad=True)
        y = _labels(batch, num_classes)
        for row, name, extra in rows:
            special = SPECIAL.get(name, Special())
            ours = _build(name, num_classes, dim, extra)
            steps = [_step(ours, x, y, special.prepare)]
            if row in pml_rows:
                steps.append(_step(pml_rows[row][1](num_classes, dim), x, y))
            timings = _time(steps, args.warmup, args.repeats)
            ours_ms = timings[0]
            pml_cell, ratio_cell = "—", "—"
            if len(timings) == 2:
                pml_cell, ratio_cell = f"{timings[1]:.2f}", f"{ours_ms / timings[1]:.2f}"
            print(
                f"| {row} | {batch}×{dim} ({num_classes}) | {ours_ms:.2f} | {pml_cell} | {ratio_cell} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
