"""Embedding extraction throughput on the CPU, and retrieval-metric time against pytorch-metric-learning.

Usage::

    python benchmarks/embed_throughput.py                 # both parts
    python benchmarks/embed_throughput.py --images 256 --skip-metrics

Part 1 times, for EfficientNet-Lite0 (real offline weights) and ViT-S/16 (random init: speed does not
depend on the weights):
  * ``model``: forward passes only, on a preprocessed batch, ``torch.inference_mode``;
  * ``pipeline``: :func:`frugalvision.embeddings.extract_embeddings` end to end (JPEG decoding, resizing,
    normalising in worker processes, forward, writing the store).
Images are real photos from ``../shared/data/caltech101-dev`` when present, else the demo's views of the
scikit-image photos. Part 2 runs ``benchmarks/retrieval_metrics.py`` (50,000 x 128 random embeddings).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from frugalvision.data import ImageDataset, read_folder
from frugalvision.embeddings import extract_embeddings
from frugalvision.models import create_backbone

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "caltech101-dev"
MODELS = [
    ("EfficientNet-Lite0", "tf_efficientnet_lite0.in1k_offline", True),
    ("ViT-S/16", "vit_small_patch16_224", False),
]


def _images(n: int, tmp: Path) -> tuple[ImageDataset, str]:
    if SHARED.exists():
        ds = read_folder(SHARED)
        step = max(1, len(ds) // n)
        return ds.subset(list(range(0, len(ds), step))[:n]), f"caltech101-dev ({SHARED})"
    from frugalvision.demo import make_demo_dataset

    views = max(2, -(-n // 12))
    ds = read_folder(make_demo_dataset(tmp / "demo", views_per_photo=views))
    return ds.subset(list(range(min(n, len(ds))))), "scikit-image demo views (../shared/data absent)"


def _model_rate(bb: torch.nn.Module, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        bb(x)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            bb(x)
            times.append(time.perf_counter() - t)
    times.sort()
    return batch / times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512, help="images for the end-to-end pipeline timing")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed forward passes (median) for the model-only rate"
    )
    ap.add_argument("--workers", type=int, default=None, help="data-loading workers (default: one per core)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    ap.add_argument("--skip-metrics", action="store_true", help="skip part 2 (retrieval metrics vs pml)")
    ap.add_argument("--n", type=int, default=50_000, help="embeddings for the metrics part")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset, source = _images(args.images, Path(tmp))
        print(f"images: {len(dataset)} from {source}\n")
        print(
            f"| model | weights | model only (img/s, batch {args.batch_size}) | pipeline (img/s) | pipeline s |"
        )
        print("|---|---|---|---|---|")
        for label, name, pretrained in MODELS:
            bb = create_backbone(name, pretrained=pretrained)
            model_rate = _model_rate(bb, args.batch_size, args.repeats)
            t = time.perf_counter()
            extract_embeddings(
                bb,
                dataset,
                Path(tmp) / f"store-{label}",
                batch_size=args.batch_size,
                num_workers=args.workers,
                progress=False,
            )
            wall = time.perf_counter() - t
            weights = "ImageNet (offline)" if pretrained else "random init"
            print(f"| {label} | {weights} | {model_rate:.1f} | {len(dataset) / wall:.1f} | {wall:.1f} |")

    if not args.skip_metrics:
        import retrieval_metrics

        print(f"\nRetrieval metrics on {args.n:,} random 128-d embeddings (ours vs pml AccuracyCalculator):")
        retrieval_metrics.main(["--n", str(args.n), "--dim", "128"])


if __name__ == "__main__":
    main()
