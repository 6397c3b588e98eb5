"""Large-collection search on one machine: faiss index kinds, approximate near duplicates and kNN-OOD.

Question: what does each index kind cost (build time, size on disk, resident memory, queries/s) and how much does it
lose (recall@10 against exact search) on 1M (and 10M) vectors; and do near-duplicate search and the kNN OOD score
finish in minutes on 1M embeddings, with which recall against exact search?

Data (synthetic, generated in chunks into memory-mapped ``.npy`` files under ``--work``, never held whole):

* index part: ``N x 128`` unit vectors around 4,096 random centres (centre + 0.6 x Gaussian noise per dimension,
  normalised), metric ``ip``; two sets of 1,000 queries (not indexed): ``same``, drawn around the same centres
  (queries like the indexed rows), and ``fresh``, drawn around 4,096 other centres (queries unlike anything indexed:
  their neighbours are spread over many clusters at nearly equal similarity, the hard case; before the search
  defaults were chosen this was the only query set, as seed 99 also drew new centres).
* curation part: ``N x 1280`` "embedding-like" rows: per-dimension scale ``i^-1/2`` (a decaying spectrum, as pooled
  CNN features have), around ``N / 200`` centres, so distinct rows of one centre sit at cosine about 0.5; 2 % of the
  rows are replaced by copies of another row of their chunk plus noise of 5-50 % of its norm (cosine 0.87-1.0) --
  the planted near duplicates. Threshold 0.81 (the library's default).

Index rows, one function per backend (``bench_<name>`` returning a :class:`Row`; a new backend -- pgvector -- adds
one function and one entry of ``INDEX_BACKENDS``):

* ``flat``: ``IndexFlatIP`` (exact; its results are the ground truth of the recall column).
* ``ivf``: ``IndexIVFFlat``, ``--nlist`` lists, the library's default nprobe (:func:`frugalvision.index.default_nprobe`).
* ``ivfpq``: :func:`frugalvision.index.build_on_disk` (lists merged on disk, memory-mapped), 32 bytes/vector
  (``--pq-m``),
  default nprobe; ``ivfpq+rerank``: the same plus ``vectors.npy`` re-ranking the default number of candidates
  (:func:`frugalvision.index.default_rerank_factor` x 10).
* ``hnsw``: ``IndexHNSWFlat``, M 32, the library's default efConstruction and efSearch
  (:func:`frugalvision.index.default_ef_search`).

Columns: build s (wall clock, including training and, for ivfpq, writing), disk MB (the saved folder), RSS MB (the
growth of the process's resident memory while building and searching, from ``/proc/self/status`` VmRSS -- pages of
memory-mapped files count while they are cached), qps at batch 1 (100 queries one by one) and batch 64 (1,000
queries) of the ``same`` queries, recall@10 of each query set against exact search, and the search settings used.

Curation rows: ``near_duplicates(method="approximate")`` (PCA to 128 + IVF, 32 candidates per row, exact check) with
its pair recall on ``--recall-rows`` random rows (brute force), and, where ``N <= --exact-max``, the exact search
for comparison (time and pair-set equality); ``knn_score_report(method="approximate")`` of 2,000 queries (half
planted rows, half fresh rows) against the ``N`` rows, ``k = 50``, recall@50 and k-th similarity error on 200 of
them, and exact ``knn_score`` time.

Timings are from a shared, busy 2-core machine (other jobs ran at the same time): indicative only. Quality numbers
are deterministic (fixed seeds).

Run:  python benchmarks/scale.py [--index-sizes 1000000] [--curation-sizes 100000 1000000] [--work /tmp/fv-scale]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from frugalvision.curation import near_duplicates
from frugalvision.index import EmbeddingIndex, build_on_disk
from frugalvision.ood import knn_score, knn_score_report

CHUNK = 65_536


# ------------------------------------------------------------------------------------------------- data
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def index_vectors(
    path: Path, n: int, dim: int = 128, seed: int = 0, centres_seed: int | None = None
) -> np.ndarray:
    """``n x dim`` clustered unit vectors in a memory-mapped ``.npy`` (generated once, chunk by chunk); the centres
    are drawn first from ``seed`` (or from ``centres_seed``)."""
    if not path.exists():
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((4096, dim)).astype(np.float32)
        if centres_seed is not None:
            centres = np.random.default_rng(centres_seed).standard_normal((4096, dim)).astype(np.float32)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal(
                (m, dim), dtype=np.float32
            )
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def file_chunks(x: np.memmap) -> Iterator[np.ndarray]:
    """The rows of a memory-mapped ``.npy`` in blocks of ``CHUNK``, read from the file: slicing the map would leave
    its pages mapped, counted in this process's resident memory (the RSS column) for the rest of the run."""
    width = x.shape[1] * x.dtype.itemsize
    for start in range(0, len(x), CHUNK):
        m = min(CHUNK, len(x) - start)
        rows = np.fromfile(x.filename, dtype=x.dtype, count=m * x.shape[1], offset=x.offset + start * width)
        yield rows.reshape(m, x.shape[1])


def embedding_like(path: Path, n: int, dim: int = 1280, seed: int = 1, copies: float = 0.02) -> np.ndarray:
    """``n x dim`` rows with a decaying spectrum, clustered, with planted near-duplicate copies (see above)."""
    if not path.exists():
        rng = np.random.default_rng(seed)
        scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
        centres = rng.standard_normal((max(2, n // 200), dim), dtype=np.float32) * scale
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x = (
                centres[rng.integers(0, len(centres), m)]
                + rng.standard_normal((m, dim), dtype=np.float32) * scale
            )
            k = int(copies * m)
            rows = rng.permutation(m)
            src, dst = rows[:k], rows[k : 2 * k]
            noise = rng.standard_normal((k, dim), dtype=np.float32)
            noise *= (
                rng.uniform(0.05, 0.5, k) * np.linalg.norm(x[src], axis=1) / np.linalg.norm(noise, axis=1)
            )[:, None]
            x[dst] = x[src] + noise
            out[start : start + m] = x
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


# ------------------------------------------------------------------------------------------------- index
@dataclass
class Row:
    name: str
    n: int
    build_s: float
    disk_mb: float
    rss_mb: float
    qps1: float
    qps64: float
    recall: float
    note: str = ""
    recall_fresh: float = float("nan")


def _du_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _qps(
    search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray
) -> tuple[float, float, np.ndarray]:
    one = queries[:100]
    t0 = time.perf_counter()
    for i in range(len(one)):
        search(one[i : i + 1], 10)
    qps1 = len(one) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids = np.vstack([search(queries[s : s + 64], 10) for s in range(0, len(queries), 64)])
    return qps1, len(queries) / (time.perf_counter() - t0), ids


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(np.intersect1d(a, b)) for a, b in zip(ids, truth, strict=True)]) / truth.shape[1]
    )


def _measure(name: str, n: int, build: Callable[[], tuple[Callable, Path, str]], queries: np.ndarray,
             fresh: np.ndarray) -> tuple[Row, np.ndarray, np.ndarray]:  # fmt: skip
    before = rss_mb()
    t0 = time.perf_counter()
    search, folder, note = build()
    build_s = time.perf_counter() - t0
    qps1, qps64, ids = _qps(search, queries)
    fresh_ids = np.vstack([search(fresh[s : s + 64], 10) for s in range(0, len(fresh), 64)])
    grown = rss_mb() - before
    return Row(name, n, build_s, _du_mb(folder), grown, qps1, qps64, float("nan"), note), ids, fresh_ids


def bench_flat(
    x: np.ndarray, work: Path, args: argparse.Namespace
) -> Callable[[], tuple[Callable, Path, str]]:
    def build() -> tuple[Callable, Path, str]:
        index = faiss.IndexFlatIP(x.shape[1])
        for chunk in file_chunks(x):
            index.add(chunk)
        faiss.write_index(index, str(work / "flat.faiss"))
        return (lambda q, k: index.search(q, k)[1]), work / "flat.faiss", "exact"

    return build


def _library(kind: str, **options: object) -> Callable:
    def factory(
        x: np.ndarray, work: Path, args: argparse.Namespace
    ) -> Callable[[], tuple[Callable, Path, str]]:
        def build() -> tuple[Callable, Path, str]:
            folder = work / kind
            if kind == "ivfpq":
                pq = {} if args.pq_m is None else {"pq_m": args.pq_m}
                index = build_on_disk(
                    x, folder, nlist=args.nlist, train_size=args.train_size, recall_queries=0, **pq, **options
                )  # type: ignore[arg-type]
            else:
                extra = {"nlist": args.nlist} if kind == "ivf" else {}
                rows = np.vstack(list(file_chunks(x)))  # in memory, as these kinds keep them
                index = EmbeddingIndex.build(rows, kind=kind, recall_queries=0, **extra, **options)  # type: ignore[arg-type]
                del rows
                index.save(folder)
                index = EmbeddingIndex.load(folder)
            used = {**index.params, **index.effective(10)}
            note = ", ".join(
                f"{key} {value}" for key, value in used.items() if key not in ("pq_nbits", "hnsw_m")
            )
            return (lambda q, k: index.search(q, k).ids), folder, note

        return build

    return factory


INDEX_BACKENDS: dict[str, Callable] = {
    "flat": bench_flat,
    "ivf": _library("ivf"),
    "ivfpq": _library("ivfpq"),
    "ivfpq+rerank": _library("ivfpq", rerank=True),
    "hnsw": _library("hnsw"),
}


def index_part(n: int, args: argparse.Namespace) -> list[Row]:
    work = args.work / f"index-{n}"
    work.mkdir(parents=True, exist_ok=True)
    x = index_vectors(args.work / f"vectors-{n}x128.npy", n)
    # same centres (seed 0) as the rows, other noise; fresh: other centres (what seed 99 drew before)
    queries = np.ascontiguousarray(
        index_vectors(args.work / "queries-same-1000x128.npy", 1000, seed=5, centres_seed=0)
    )
    fresh = np.ascontiguousarray(index_vectors(args.work / "queries-1000x128.npy", 1000, seed=99))
    from faiss.contrib.exhaustive_search import knn_ground_truth

    both = np.vstack([queries, fresh])  # exact neighbours by a chunked scan (float32 brute force)
    truth = knn_ground_truth(both, file_chunks(x), 10, metric_type=faiss.METRIC_INNER_PRODUCT)[1]
    rows = []
    for name in args.backends:
        if name == "flat" and n > args.flat_max:
            continue
        t0 = time.perf_counter()
        row, ids, fresh_ids = _measure(name, n, INDEX_BACKENDS[name](x, work, args), queries, fresh)
        row.recall, row.recall_fresh = _recall(ids, truth[:1000]), _recall(fresh_ids, truth[1000:])
        rows.append(row)
        print(f"  {name} {n}: {time.perf_counter() - t0:.0f} s", flush=True)
        shutil.rmtree(work / name, ignore_errors=True)
    return rows


def print_index_table(rows: list[Row]) -> None:
    print(
        "\n| kind | settings | N | build s | disk MB | RSS MB | qps b=1 | qps b=64 | recall@10 same | recall@10 fresh |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.note} | {r.n:,} | {r.build_s:.1f} | {r.disk_mb:.0f} | {r.rss_mb:.0f} | {r.qps1:.0f} | "
              f"{r.qps64:.0f} | {r.recall:.3f} | {r.recall_fresh:.3f} |")  # fmt: skip


# ---------------------------------------------------------------------------------------------- curation
def curation_part(n: int, args: argparse.Namespace) -> list[str]:
    x = embedding_like(args.work / f"embeddings-{n}x1280.npy", n)
    lines = []
    before = rss_mb()
    t0 = time.perf_counter()
    pairs = near_duplicates(x, 0.81, method="approximate", recall_sample=1)  # tiny sample: dense_rows only
    approx_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    from frugalvision.index.neighbours import pair_recall

    rec = pair_recall(x, 0.81, pairs.first, pairs.second, sample=args.recall_rows)
    dense = neighbours_dense(pairs)
    recall_s = time.perf_counter() - t0
    exact = ""
    if n <= args.exact_max:
        t0 = time.perf_counter()
        e = near_duplicates(np.asarray(x), 0.81, method="exact")
        same = set(zip(e.first.tolist(), e.second.tolist(), strict=True)) == set(
            zip(pairs.first.tolist(), pairs.second.tolist(), strict=True)
        )
        exact = f"{time.perf_counter() - t0:.0f} s, {len(e)} pairs, {'same' if same else 'different'} set"
    lines.append(
        f"| near duplicates | {n:,} | {approx_s:.0f} | {len(pairs):,} | "
        f"{rec['recall']:.4f} ({rec['exact_pairs']} pairs of {rec['sample_rows']} rows, {recall_s:.0f} s; "
        f"{dense} dense rows) | "
        f"{rss_mb() - before:.0f} | {exact or 'not run'} |"
    )
    print(lines[-1], flush=True)
    rng = np.random.default_rng(5)
    queries = np.vstack([np.asarray(x[np.sort(rng.choice(n, 1000, replace=False))]),
                         np.asarray(embedding_like(args.work / "fresh-1000x1280.npy", 1000, seed=7))])  # fmt: skip
    before = rss_mb()
    t0 = time.perf_counter()
    _, report = knn_score_report(queries, x, 50, method="approximate", recall_sample=200)
    approx_s = time.perf_counter() - t0
    assert report is not None
    exact = ""
    if n <= args.exact_max:
        t0 = time.perf_counter()
        knn_score(queries, np.asarray(x), 50, method="exact")
        exact = f"{time.perf_counter() - t0:.0f} s"
    lines.append(
        f"| kNN-OOD (2,000 queries, k=50) | {n:,} | {approx_s:.0f} | - | "
        f"{report['recall_at_k']:.4f} (k-th cosine error <= {report['kth_similarity_max_error']:.4f}, "
        f"200 queries) | {rss_mb() - before:.0f} | {exact or 'not run'} |"
    )
    print(lines[-1], flush=True)
    return lines


def neighbours_dense(pairs: object) -> int:
    recall = getattr(pairs, "recall", None)
    return int(recall["dense_rows"]) if recall else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-sizes", type=int, nargs="*", default=[1_000_000])
    ap.add_argument("--curation-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--backends", nargs="*", default=list(INDEX_BACKENDS), choices=list(INDEX_BACKENDS))
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists of the ivf / ivfpq rows")
    ap.add_argument(
        "--pq-m", type=int, default=None, help="ivfpq bytes per vector [default: the library's, 32 at 128-d]"
    )
    ap.add_argument("--flat-max", type=int, default=1_000_000)
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest N of the exact curation runs")
    ap.add_argument("--recall-rows", type=int, default=500)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fv-scale"))
    ap.add_argument("--train-size", type=int, default=None, help="ivfpq training sample [default: 64 nlist]")
    ap.add_argument(
        "--threads", type=int, default=1, help="faiss threads (1: OpenMP barriers stall on a busy machine)"
    )
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for n in args.index_sizes:
        rows += index_part(n, args)
    if rows:
        print_index_table(rows)
    lines: list[str] = []
    for n in args.curation_sizes:
        lines += curation_part(n, args)
    if lines:
        print("\n| task | N | approximate s | pairs | recall vs exact (sample) | RSS MB | exact |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
