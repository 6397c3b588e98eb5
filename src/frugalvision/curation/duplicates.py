"""Exact duplicates (same bytes) and near duplicates (embedding cosine similarity above a threshold).

Near duplicates are found with a faiss range search on L2-normalised embeddings (``IndexFlatIP``: exact, every
pair with cosine ``>= threshold`` is returned, however many), queries in blocks to bound memory. The exact search
is quadratic (100,000 x 1280-d took 138 s on a 2-core machine, so about 4 hours at 1M); from
:data:`APPROXIMATE_FROM` rows on, :func:`near_duplicates` switches to an approximate range search (PCA to 128
dimensions, an IVF index, every candidate checked with its exact cosine;
:func:`frugalvision.index.neighbours.similar_pairs`) and measures its pair recall against exact search on a
sample of rows. The step is the
de-duplication stage of curation pipelines such as DINOv2's (Oquab et al., "DINOv2: Learning Robust Visual
Features without Supervision", 2023, §3, which uses a copy-detection embedding); the quality of the result is
that of the embedding: a generic ImageNet backbone confuses very similar scenes more easily than a
copy-detection model, so check the pair grid before deleting anything.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import torch

from frugalvision.index import neighbours
from frugalvision.metrics.knn import as_embeddings

__all__ = [
    "APPROXIMATE_FROM",
    "NEAR_DUPLICATE_THRESHOLD",
    "DuplicatePairs",
    "duplicate_groups",
    "exact_duplicates",
    "file_digest",
    "near_duplicates",
    "save_pair_grid",
    "write_pairs_csv",
]

_QUERY_BLOCK = 4096

#: Default cosine threshold of :func:`near_duplicates`, calibrated for the offline EfficientNet-Lite0 features by
#: ``benchmarks/duplicates.py`` (0.85 before: it missed half the half-size JPEG copies).
NEAR_DUPLICATE_THRESHOLD = 0.81

#: :func:`near_duplicates` searches approximately from this many rows on (``method="auto"``).
APPROXIMATE_FROM = 200_000


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (streamed)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def exact_duplicates(paths: Sequence[str | os.PathLike[str]], algorithm: str = "sha256") -> list[list[int]]:
    """Groups of indices into ``paths`` whose files have identical bytes (groups of 2+, in path order).

    Files are first grouped by size, and only files sharing a size are hashed.
    """
    by_size: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        by_size.setdefault(os.path.getsize(p), []).append(i)
    groups: dict[str, list[int]] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for i in same_size:
            groups.setdefault(file_digest(paths[i], algorithm), []).append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs ``(first[i], second[i])`` with ``first < second``, most similar first.

    Attributes:
        first, second: ``(P,)`` int64 row indices.
        similarity: ``(P,)`` float32 cosine similarity.
        method: ``"exact"`` or ``"approximate"`` (how they were searched).
        recall: approximate search: ``{"recall", "exact_pairs", "sample_rows", "dense_rows"}``, the share of the exact pairs of
            a random sample of rows that were found (:func:`frugalvision.index.neighbours.pair_recall`);
            ``None`` for an exact search or when not measured.
    """

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray
    method: str = "exact"
    recall: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.first.shape[0])


def near_duplicates(
    embeddings: np.ndarray | torch.Tensor,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    *,
    block: int = _QUERY_BLOCK,
    method: Literal["auto", "exact", "approximate"] = "auto",
    pca_dim: int | None = neighbours.DEFAULT_PCA_DIM,
    nprobe: int = neighbours.DEFAULT_NPROBE,
    candidates: int = neighbours.DEFAULT_CANDIDATES,
    recall_sample: int = 1000,
    seed: int = 0,
) -> DuplicatePairs:
    """Every pair of rows with cosine similarity ``>= threshold`` (exact faiss range search), or, on large inputs,
    nearly every such pair (approximate search, exact similarities).

    Args:
        embeddings: ``(N, D)``; normalised here, so cosine similarity is the inner product. The approximate
            search reads them in chunks, so a ``numpy.memmap`` is never loaded whole.
        threshold: in ``(-1, 1]``. The default, :data:`NEAR_DUPLICATE_THRESHOLD` = 0.81, is calibrated for the
            offline EfficientNet-Lite0 (pooled ImageNet features, the default model of ``frugalvision curate
            duplicates``) by ``benchmarks/duplicates.py``: the best F1 on half-size, JPEG-50-75, 80-90 % crop,
            mirrored and colour-jittered copies of Caltech-101 photos against distinct photos of the same class
            (F1 0.926 on the classes it was chosen on, 0.892 on the other classes, 0.956 on COCO-128; 0.85 gave
            0.891 / 0.854 / 0.977). Half-size JPEG copies are the hard case (recall about 0.6: some fall to cosine
            0.6 while distinct photos of one class reach 0.9), and on look-alike images such as blood smears
            (BCCD) distinct images reach 0.93, so no threshold separates them there. Vectors need not be
            L2-normalised (they are normalised here). Other embeddings have other scales (DINOv2/CLIP: distinct
            photos are closer): run the benchmark with ``--model`` or look at the pair grid and tune it.
        block: queries per range search (bounds memory when many pairs match).
        method: ``"exact"``; ``"approximate"`` (:func:`frugalvision.index.neighbours.similar_pairs`: PCA to
            ``pca_dim`` dimensions, which never loses a pair, an IVF index scanning ``nprobe`` lists, which may,
            then the exact cosine of the ``candidates`` nearest rows of each row); ``"auto"``: approximate from :data:`APPROXIMATE_FROM` rows.
        pca_dim: approximate: dimensions kept by PCA when ``D`` is larger (``None``: none).
        nprobe: approximate: IVF lists scanned per row; more finds more pairs, slower.
        candidates: approximate: nearest rows checked per row (a row with more rows than this inside the radius
            gets a range search instead; ``recall["dense_rows"]`` counts such rows).
        recall_sample: approximate: rows whose exact pairs are found by brute force to measure the recall
            (``sample x N x D`` multiply-adds; 0 = skip).
        seed: approximate: training sample and recall sample.

    Returns:
        :class:`DuplicatePairs`, each unordered pair once, sorted by decreasing similarity, with ``method`` and
        (approximate) the measured ``recall``.
    """
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (-1, 1], got {threshold}")
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approximate', got {method!r}")
    count = int(embeddings.shape[0]) if hasattr(embeddings, "shape") and len(embeddings.shape) == 2 else 0
    if method == "approximate" or (method == "auto" and count >= APPROXIMATE_FROM):
        return _approximate(embeddings, threshold, block, pca_dim, nprobe, candidates, recall_sample, seed)
    x = torch.nn.functional.normalize(as_embeddings(embeddings), dim=1).numpy()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    # faiss keeps results with similarity strictly above the radius; the float32 margin below accepts
    # pairs at exactly ``threshold`` too, and they are filtered with >= afterwards.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2.0)))
    firsts, seconds, sims = [], [], []
    for start in range(0, x.shape[0], block):
        lims, dist, ids = index.range_search(x[start : start + block], radius)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), (lims[1:] - lims[:-1]).astype(np.int64))
        keep = (ids > rows) & (dist >= np.float32(threshold))
        firsts.append(rows[keep])
        seconds.append(ids[keep].astype(np.int64))
        sims.append(np.minimum(dist[keep], 1.0))
    a, b, s = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims).astype(np.float32)
    return _sorted_pairs(a, b, s, "exact", None)


def _sorted_pairs(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, method: str, recall: dict[str, Any] | None
) -> DuplicatePairs:
    order = np.lexsort((b, a, -s))
    return DuplicatePairs(first=a[order], second=b[order], similarity=s[order], method=method, recall=recall)


def _approximate(
    embeddings: np.ndarray | torch.Tensor,
    threshold: float,
    block: int,
    pca_dim: int | None,
    nprobe: int,
    candidates: int,
    recall_sample: int,
    seed: int,
) -> DuplicatePairs:
    source: Any = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
    if not isinstance(source, np.ndarray):
        source = as_embeddings(source).numpy()
    a, b, s, capped = neighbours.similar_pairs(
        source, threshold, candidates=candidates, pca_dim=pca_dim, nprobe=nprobe, block=block, seed=seed
    )
    recall = None
    if recall_sample > 0:
        recall = neighbours.pair_recall(source, threshold, a, b, sample=recall_sample, seed=seed)
        recall["dense_rows"] = capped
    return _sorted_pairs(a, b, s, "approximate", recall)


def duplicate_groups(pairs: DuplicatePairs, count: int) -> list[list[int]]:
    """Connected components of the duplicate graph (groups of 2+ rows, each sorted, ordered by first row)."""
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in zip(pairs.first.tolist(), pairs.second.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def write_pairs_csv(
    pairs: DuplicatePairs, paths: Sequence[str], out: str | os.PathLike[str], kind: str = "near"
) -> Path:
    """CSV ``kind,similarity,path_a,path_b``, one line per pair."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["kind", "similarity", "path_a", "path_b"])
        for a, b, s in zip(pairs.first, pairs.second, pairs.similarity, strict=True):
            w.writerow([kind, f"{s:.4f}", paths[a], paths[b]])
    return target


def save_pair_grid(
    pairs: DuplicatePairs,
    paths: Sequence[str],
    out: str | os.PathLike[str],
    *,
    max_pairs: int = 32,
    thumb: int = 112,
) -> Path:
    """PNG of the ``max_pairs`` most similar pairs, two pairs per row, captioned with their similarity."""
    from frugalvision.curation._draw import save_contact_sheet

    n = min(len(pairs), max_pairs)
    if n == 0:
        raise ValueError("no pairs to draw")
    rows, caps = [], []
    for start in range(0, n, 2):
        row, cap = [], []
        for i in range(start, min(start + 2, n)):
            a, b, s = int(pairs.first[i]), int(pairs.second[i]), float(pairs.similarity[i])
            row += [paths[a], paths[b]]
            cap += [
                f"#{i + 1} A  cos {s:.3f}\n{Path(paths[a]).name[:16]}",
                f"#{i + 1} B\n{Path(paths[b]).name[:16]}",
            ]
        rows.append(row)
        caps.append(cap)
    return save_contact_sheet(rows, out, captions=caps, thumb=thumb)
