"""Exact duplicates (same bytes) and near duplicates (embedding cosine similarity above a threshold).

Near duplicates are found with a faiss range search on L2-normalised embeddings (``IndexFlatIP``: exact, every
pair with cosine ``>= threshold`` is returned, however many), queries in blocks to bound memory. The step is the
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

import faiss
import numpy as np
import torch

from frugalvision.metrics.knn import as_embeddings

__all__ = [
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
    """

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return int(self.first.shape[0])


def near_duplicates(
    embeddings: np.ndarray | torch.Tensor,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    *,
    block: int = _QUERY_BLOCK,
) -> DuplicatePairs:
    """Every pair of rows with cosine similarity ``>= threshold`` (exact faiss range search).

    Args:
        embeddings: ``(N, D)``; normalised here, so cosine similarity is the inner product.
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

    Returns:
        :class:`DuplicatePairs`, each unordered pair once, sorted by decreasing similarity.
    """
    x = torch.nn.functional.normalize(as_embeddings(embeddings), dim=1).numpy()
    if not -1.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (-1, 1], got {threshold}")
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
    order = np.lexsort((b, a, -s))
    return DuplicatePairs(first=a[order], second=b[order], similarity=s[order])


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
