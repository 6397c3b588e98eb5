"""Where the approximate k-NN of the kNN OOD score loses recall: PCA dimensions, lists scanned, candidates.

Usage::

    python benchmarks/scale_knn.py 50000                 # PCA 128, 256 and none; 16 / 64 / all lists; 2, 4, 8 x k
    python benchmarks/scale_knn.py 200000 128,256        # the size the defaults were checked on

Data: ``benchmarks/scale.py``'s embedding-like 1280-d rows (decaying spectrum, clusters, planted copies; written
once under ``/tmp/frugalvision-knn``). Queries: 100 stored rows and 100 rows of a fresh set around other centres
(seed 7: out-of-distribution queries, what an OOD score sees). k = 50. The reference is float64 brute force
(``exact_knn``, a chunked numpy scan); each configuration searches :class:`ReducedIndex` and re-ranks the
candidates by their exact cosine, as :func:`approximate_knn` does. Prints recall@50 (all, stored, fresh queries),
the largest error of the 50th cosine (what the score uses) and the search seconds. Timings on a shared CPU are
indicative; recall is deterministic (fixed seeds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from frugalvision.index.neighbours import ReducedIndex, exact_knn, unit_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import embedding_like


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    pcas = [
        None if v == "None" else int(v)
        for v in (sys.argv[2] if len(sys.argv) > 2 else "128,256,None").split(",")
    ]
    k = 50
    work = Path("/tmp/frugalvision-knn")
    work.mkdir(exist_ok=True)
    x = embedding_like(work / f"embeddings-{n}x1280.npy", n)
    rng = np.random.default_rng(5)
    stored = np.asarray(x[np.sort(rng.choice(n, 100, replace=False))])
    fresh = np.asarray(embedding_like(work / "fresh-1000x1280.npy", 1000, seed=7))[:100]
    q = unit_rows(np.vstack([stored, fresh]), 0, 200, "queries")
    t = time.perf_counter()
    exact_s, exact_i = exact_knn(q, x, k)
    print(f"{n:,} x 1280 rows, 200 queries, k={k}; exact search {time.perf_counter() - t:.1f} s", flush=True)
    print(
        "| PCA | lists | nprobe | candidates | recall@50 | stored | fresh | 50th cosine max error | search s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for pca in pcas:
        reduced = ReducedIndex(x, pca_dim=pca)
        nlist = reduced.index.nlist
        for nprobe in sorted({16, 64, 128 if n > 100_000 else nlist}):
            reduced.index.nprobe = min(nprobe, nlist)
            for cand in (2, 4, 8):
                t = time.perf_counter()
                _, found = reduced.index.search(reduced.reduce(q), cand * k)
                recalls, errors = [], []
                for i in range(len(q)):
                    ids = np.sort(found[i][found[i] >= 0])
                    sims = (np.asarray(x[ids], np.float32) @ q[i]) * reduced.inv_norm[ids]
                    order = np.argsort(-sims)[:k]
                    recalls.append(len(np.intersect1d(ids[order], exact_i[i])) / k)
                    errors.append(abs(float(sims[order[-1]]) - float(exact_s[i, k - 1])))
                print(f"| {pca} | {nlist} | {nprobe} | {cand} | {np.mean(recalls):.3f} | {np.mean(recalls[:100]):.3f} | "
                      f"{np.mean(recalls[100:]):.3f} | {max(errors):.4f} | {time.perf_counter() - t:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
