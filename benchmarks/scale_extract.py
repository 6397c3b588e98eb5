"""Extraction images/s: one process (DataLoader) vs Ray Data with 2 backbone actors (``embed --ray``).

Usage::

    python benchmarks/scale_extract.py                  # 192 caltech101-dev images, EfficientNet-Lite0
    python benchmarks/scale_extract.py --images 5614    # the whole set

Images: an evenly strided subset of ``../shared/data/caltech101-dev`` (real JPEGs of mixed sizes); the
benchmark stops with a message when the folder is absent. Model: EfficientNet-Lite0 with its offline ImageNet
weights, batch 32, CPU. Both runs write a store to a temporary folder; Ray is started once before its run
(``num_cpus=2``), and its start-up is reported apart. The vectors of both runs are compared (max |difference|).
On 2 cores near parity is expected: the point is that the Ray path runs, and what it costs. Timings on a shared
machine are indicative.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from frugalvision.data import read_folder
from frugalvision.embeddings import extract_embeddings
from frugalvision.models import create_backbone

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "caltech101-dev"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ray-workers", type=int, default=2)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the caltech101-dev images in {SHARED} (see ../shared/data/README.md)")
    ds = read_folder(SHARED)
    step = max(1, len(ds) // args.images)
    ds = ds.subset(list(range(0, len(ds), step))[: args.images])
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0.in1k_offline")
    print(
        f"data: {len(ds)} images of caltech101-dev ({SHARED}); model EfficientNet-Lite0, batch {args.batch_size}"
    )

    with tempfile.TemporaryDirectory(prefix="frugalvision-scale-extract-") as tmp:
        t = time.perf_counter()
        one = extract_embeddings(backbone, ds, Path(tmp) / "one", batch_size=args.batch_size, progress=False)
        t_one = time.perf_counter() - t

        import ray

        from frugalvision.embeddings.ray_extract import extract_embeddings_ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        t_start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            on_ray = extract_embeddings_ray(
                backbone,
                ds,
                Path(tmp) / "ray",
                workers=args.ray_workers,
                batch_size=args.batch_size,
                progress=False,
            )
            t_ray = time.perf_counter() - t
        finally:
            ray.shutdown()
    assert on_ray.paths == one.paths
    diff = float(np.abs(on_ray.vectors - one.vectors).max())
    n = len(one)
    print(f"\n{'run':<44} {'seconds':>8} {'images/s':>9}")
    print(f"{'one process (DataLoader, 2 loader workers)':<44} {t_one:>8.1f} {n / t_one:>9.2f}")
    print(
        f"{f'Ray Data, {args.ray_workers} actors (Ray already started)':<44} {t_ray:>8.1f} {n / t_ray:>9.2f}"
    )
    print(f"{'Ray Data incl. starting Ray':<44} {t_ray + t_start:>8.1f} {n / (t_ray + t_start):>9.2f}")
    print(
        f"\nratio Ray / one process (images/s, Ray started): {t_one / t_ray:.2f}; Ray start-up {t_start:.1f} s"
    )
    print(f"max |vector difference| Ray vs one process: {diff:.2e}")


if __name__ == "__main__":
    main()
