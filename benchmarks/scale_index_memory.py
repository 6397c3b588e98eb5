"""Peak resident memory of ``frugalvision index --kind ivfpq`` on a store larger than the index, before and after.

Usage::

    python benchmarks/scale_index_memory.py --baseline-src /work/main/src     # 200,000 x 1280 synthetic store

Writes a synthetic store (``--count`` x ``--dim`` unit vectors around 1,000 Gaussian centres, seed 0; 1 GB at the
defaults) into ``--work`` once, then runs ``frugalvision index STORE --kind ivfpq --nlist 256`` in a fresh process
under ``/usr/bin/time -v`` with this checkout's code and, if given, with ``--baseline-src`` (another checkout's
``src``, e.g. the code before the store was memory-mapped), and prints wall seconds and peak RSS (``Maximum
resident set size``: anonymous memory plus the mapped file pages the process touched) with their ratio. Both
builds must give the same index: the script checks that their search results on 200 stored vectors are identical.
Timings on a shared CPU are indicative.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from frugalvision.embeddings import EmbeddingStore
from frugalvision.index import EmbeddingIndex


def make_store(folder: Path, count: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = np.empty((count, dim), np.float32)
    for start in range(0, count, 50_000):
        n = min(50_000, count - start)
        part = centres[rng.integers(0, 1000, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
        x[start : start + n] = part / np.linalg.norm(part, axis=1, keepdims=True)
    paths = [f"img/{i:07d}.jpg" for i in range(count)]
    EmbeddingStore(vectors=x, paths=paths, labels=[()] * count, info={"normalized": True}).save(folder)


def run(src: Path, store: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `frugalvision index` process with the code of ``src``."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = "from frugalvision.cli.main import cli; cli()"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", code, "index", str(store), "--out", str(out), *extra]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    print("  " + done.stdout.strip())
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return wall, rss_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--work", type=Path, default=Path("/tmp/frugalvision-index-memory"))
    ap.add_argument("--baseline-src", type=Path, default=None, help="src folder of the code to compare with")
    ap.add_argument("--nlist", type=int, default=256)
    args = ap.parse_args()

    store = args.work / f"store-{args.count}x{args.dim}"
    if not EmbeddingStore.exists(store):
        t = time.perf_counter()
        make_store(store, args.count, args.dim)
        print(f"wrote {store} ({time.perf_counter() - t:.0f} s)")
    size = (store / "vectors.npy").stat().st_size / 2**20
    extra = ["--kind", "ivfpq", "--nlist", str(args.nlist), "--recall-queries", "200"]
    this = Path(__file__).resolve().parents[1] / "src"
    runs = [("this checkout", this)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    rows = []
    for name, src in runs:
        print(f"{name}: {src}")
        wall, rss = run(src, store, args.work / f"index-{name.replace(' ', '-')}", extra)
        rows.append((name, wall, rss))
    x = np.load(store / "vectors.npy", mmap_mode="r")
    q = np.ascontiguousarray(x[:: max(1, args.count // 200)][:200])
    found = [
        EmbeddingIndex.load(args.work / f"index-{n.replace(' ', '-')}").search(q, 10).ids for n, _ in runs
    ]
    same = all(np.array_equal(found[0], f) for f in found[1:])

    print(f"\nfrugalvision index --kind ivfpq --nlist {args.nlist}: {args.count:,} x {args.dim} store "
          f"(vectors.npy {size:,.0f} MiB)")  # fmt: skip
    print(f"  {'code':<14} {'wall s':>7} {'peak RSS MiB':>13} {'RSS / store':>11}")
    for name, wall, rss in rows:
        print(f"  {name:<14} {wall:>7.1f} {rss:>13.0f} {rss / size:>11.2f}")
    if len(rows) == 2:
        print(f"  peak RSS ratio baseline / this checkout: {rows[1][2] / rows[0][2]:.2f}")
        print(f"  the two indexes give identical top-10 ids on 200 queries: {same}")


if __name__ == "__main__":
    main()
