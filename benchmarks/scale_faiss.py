"""Sweep of the faiss approximate-search settings: recall@10 against exact search and queries/s.

Question: which HNSW ``ef_construction`` / ``ef_search``, IVF ``nprobe``, IVF-PQ code size and re-rank candidate
count give recall@10 >= 0.9 (after re-ranking for IVF-PQ) at a speed still far from exact search, and as what
function of ``k`` and the number of lists? Defaults are chosen on one set and confirmed on another.

Data (``--data``, all unit vectors, metric ``ip``, queries held out of the index and drawn from the same
distribution):

* ``clustered``: ``benchmarks/scale.py``'s index set: around 4,096 Gaussian centres, centre + 0.6 x Gaussian
  noise in every dimension, 128-d. The tuning set. Two query sets: ``same`` (around the same centres) and ``fresh``
  (around 4,096 *other* centres: queries unlike anything indexed, whose neighbours spread over many clusters at
  nearly equal similarity -- ``scale.py`` drew only such queries before this sweep, as its seed 99 also drew new
  centres).
* ``skewed``: ``benchmarks/scale_pg.py``'s confirmation set: 5,000 Zipf-sized anisotropic clusters with a decaying
  spectrum, 192-d, queries from the same clusters. The confirmation set.

Exact top-k: ``IndexFlatIP`` over the in-memory rows (float32; the reference is faiss's brute force, not the
code under test). Each row of the table is one setting: ``kind``, the build parameter, the search parameter,
recall@k of ``--queries`` queries, qps at batch 1 (first 100 queries one by one) and at batch 64 (all queries),
against ``flat`` (exact) at the top. Settings marked ``auto`` are the library's defaults (what a user gets without
passing a value). Timings come from a shared, busy 2-core machine: indicative only; recall is deterministic.

Run::

    python benchmarks/scale_faiss.py --data clustered --count 200000
    python benchmarks/scale_faiss.py --data skewed --count 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from frugalvision.index import EmbeddingIndex, default_nlist
from scale_pg import skewed


def clustered(count: int, dim: int, seed: int, centres_seed: int = 0) -> np.ndarray:
    """``scale.py``'s generator: ``count`` unit vectors around 4,096 centres drawn with ``centres_seed``."""
    centres = np.random.default_rng(centres_seed).standard_normal((4096, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 65_536):
        m = min(65_536, count - start)
        x = centres[rng.integers(0, 4096, m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def dataset(name: str, count: int, queries: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows and the named query sets of ``--data``."""
    if name == "clustered":
        same, fresh = clustered(queries, 128, 2), clustered(queries, 128, 2, centres_seed=99)
        return clustered(count, 128, 1), {"same": same, "fresh": fresh}
    return skewed(count, 192, 2), {"same": skewed(queries, 192, 3)}


def timed(search: Callable[[np.ndarray], np.ndarray], q: np.ndarray) -> tuple[float, float, np.ndarray]:
    t0 = time.perf_counter()
    for i in range(100):
        search(q[i : i + 1])
    qps1 = 100 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids = np.vstack([search(q[s : s + 64]) for s in range(0, len(q), 64)])
    return qps1, len(q) / (time.perf_counter() - t0), ids


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(np.intersect1d(a, b)) for a, b in zip(ids, truth, strict=True)]) / truth.shape[1]
    )


def row(
    kind: str, build: str, search: str, recalls: list[float], qps1: float, qps64: float, build_s: float
) -> None:
    shown = " | ".join(f"{r:.3f}" for r in recalls)
    print(f"| {kind} | {build} | {search} | {shown} | {qps1:.0f} | {qps64:.0f} | {build_s:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="clustered", choices=["clustered", "skewed"])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--kinds", nargs="*", default=["ivf", "ivfpq", "hnsw"])
    ap.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    ap.add_argument("--ef-construction", type=int, nargs="*", default=[40, 128])
    ap.add_argument("--ef-search", type=int, nargs="*", default=[32, 64, 100, 200, 400])
    ap.add_argument(
        "--pq-m", type=int, nargs="*", default=[0], help="IVF-PQ bytes per vector (0: the default)"
    )
    ap.add_argument("--rerank-factor", type=int, nargs="*", default=[1, 4, 10, 20, 40])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    x, sets = dataset(args.data, args.count, args.queries)
    k = args.k
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    q = sets["same"]  # timed; the other sets only searched for their recall
    qps1, qps64, _ = timed(lambda b: flat.search(b, k)[1], q)
    truth = {name: flat.search(queries, k)[1] for name, queries in sets.items()}
    print(f"\n{args.data}: {args.count:,} x {x.shape[1]}, {len(q)} queries per set, k = {k}, "
          f"nlist {default_nlist(len(x))}; qps of the 'same' set")  # fmt: skip
    names = " | ".join(f"recall@k {name}" for name in sets)
    print(f"\n| kind | build | search | {names} | qps b=1 | qps b=64 | build s |")
    print("|---|---|---|" + "---|" * len(sets) + "---|---|---|")
    row("flat", "-", "-", [1.0] * len(sets), qps1, qps64, 0)

    def measure(index: EmbeddingIndex) -> tuple[float, float, list[float]]:
        qps1, qps64, ids = timed(lambda b: index.search(b, k).ids, q)
        recalls = [recall(ids, truth["same"])]
        recalls += [recall(index.search(s, k).ids, truth[n]) for n, s in sets.items() if n != "same"]
        return qps1, qps64, recalls

    def sweep(index: EmbeddingIndex, build: str, build_s: float, attr: str, values: list) -> None:
        for v in values:
            setattr(index, attr, v)
            qps1, qps64, recalls = measure(index)
            shown = f"{attr} {v}" if v is not None else f"{attr} auto ({index.effective(k)[attr]})"
            row(index.kind, build, shown, recalls, qps1, qps64, build_s)

    if "ivf" in args.kinds:
        t0 = time.perf_counter()
        index = EmbeddingIndex.build(x, kind="ivf", recall_queries=0)
        sweep(index, f"nlist {index.nlist}", time.perf_counter() - t0, "nprobe", [None, *args.nprobe])
    if "ivfpq" in args.kinds:
        for m in args.pq_m:
            t0 = time.perf_counter()
            index = EmbeddingIndex.build(x, kind="ivfpq", pq_m=m or None, rerank=True, recall_queries=0)
            build = f"nlist {index.nlist}, pq_m {index.params['pq_m']}"
            build_s = time.perf_counter() - t0
            for nprobe in [None, *args.nprobe]:
                index.nprobe = nprobe
                shown = "auto" if nprobe is None else str(nprobe)
                for factor in [None, *args.rerank_factor]:
                    index.rerank_factor = factor
                    qps1, qps64, recalls = measure(index)
                    eff = index.effective(k)
                    what = f"nprobe {shown} ({eff['nprobe']}), rerank {'auto' if factor is None else factor}"
                    row("ivfpq", build, f"{what} ({eff['rerank_factor']})", recalls, qps1, qps64, build_s)
    if "hnsw" in args.kinds:
        for efc in args.ef_construction:
            t0 = time.perf_counter()
            index = EmbeddingIndex.build(x, kind="hnsw", ef_construction=efc, recall_queries=0)
            sweep(index, f"M 32, efC {efc}", time.perf_counter() - t0, "ef_search", [None, *args.ef_search])


if __name__ == "__main__":
    main()
