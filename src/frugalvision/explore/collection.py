"""What the explorer shows: the rows of an embedding store or index, their map layout, thumbnails and scores.

:class:`Collection` opens either an embedding store (``frugalvision embed``) or an index (``frugalvision index``).
Neighbour search always goes through an :class:`~frugalvision.index.EmbeddingIndex`: the index itself, or for a
store an exact in-memory one built the way ``frugalvision index`` builds it (inner product for normalised vectors,
else L2), so the explorer's neighbours are ``frugalvision search``'s.

Caches live beside the data, in ``<store or index>/.explore/<checksum>/`` (the checksum of the rows, so a store
written again gets fresh caches and never shows a stale map): ``layout-<method>.npy`` (computed once, written
atomically) and ``thumbs/<row>.jpg`` (made on first request, written atomically). Saving the store or index again
replaces its folder, caches included.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from frugalvision._pixels import to_rgb
from frugalvision.embeddings import EmbeddingStore
from frugalvision.errors import StoreError
from frugalvision.explore.layout import compute_layout, resolve_method
from frugalvision.index import EmbeddingIndex

__all__ = ["CACHE_DIR", "THUMB_SIZE", "Collection"]

CACHE_DIR = ".explore"
THUMB_SIZE = 160  # longest side of a gallery thumbnail, pixels


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary sibling renamed into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(data):x}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Collection:
    """The rows of a store or index, with the index that answers neighbour queries.

    Attributes:
        source: the store or index folder.
        paths: ``N`` image paths, as recorded (relative ones resolve against the folder the explorer runs in).
        labels: ``N`` label strings (several labels joined by ``|``; ``""`` unlabeled).
        index: the faiss index over the ``N`` vectors (row ``i`` has id ``i``).
        info: how the vectors were made (backbone, preprocessing, normalisation).
        checksum: the rows' checksum recorded by the store or index (names the cache folder).
    """

    source: Path
    paths: list[str]
    labels: list[str]
    index: EmbeddingIndex
    info: dict[str, Any]
    checksum: str
    _real: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def open(cls, source: str | os.PathLike[str]) -> Collection:
        """Open a store (``info.json`` + ``vectors.npy``) or an index (``meta.json`` + ``index.faiss``).

        Raises:
            StoreError: neither, or the files are unreadable or inconsistent (the message names the file).
        """
        root = Path(source)
        if (root / "meta.json").is_file() or (root / "index.faiss").is_file():
            idx = EmbeddingIndex.load(root)
            if idx.paths is None:
                raise StoreError(f"index {root} stores no image paths; the explorer needs them")
            checksum = json.loads((root / "meta.json").read_text(encoding="utf-8"))["checksum"]
            labels = idx.labels if idx.labels is not None else [""] * len(idx)
            return cls(root, list(idx.paths), list(labels), idx, dict(idx.info), str(checksum))
        if not EmbeddingStore.exists(root):
            raise StoreError(
                f"{root} is neither an embedding store (info.json, vectors.npy) nor an index (meta.json, "
                "index.faiss); make one with `frugalvision embed` or `frugalvision index`"
            )
        store = EmbeddingStore.load(root)
        checksum = json.loads((root / "info.json").read_text(encoding="utf-8"))["checksum"]
        labels = ["|".join(lab) for lab in store.labels]
        idx = EmbeddingIndex.build(  # as `frugalvision index` builds it, exact
            store.vectors,
            paths=store.paths,
            labels=labels,
            metric="ip" if store.normalized else "l2",
            kind="flat",
            info={k: store.info[k] for k in ("backbone", "data_config", "normalized") if k in store.info},
        )
        del store  # the index holds the only copy of the vectors
        return cls(root, idx.paths or [], labels, idx, dict(idx.info), str(checksum))

    # ----------------------------------------------------------------------------------------- vectors
    def vectors(self) -> np.ndarray:
        """All ``(N, D)`` float32 vectors (a copy read from the index)."""
        return self.index.reconstruct(np.arange(len(self)))

    @property
    def cache(self) -> Path:
        """``<source>/.explore/<checksum>``."""
        digest = re.sub(r"[^0-9a-f]", "", self.checksum.split(":")[-1])[:16] or "nochecksum"
        return self.source / CACHE_DIR / digest

    def layout(self, method: str = "auto", *, seed: int = 0) -> tuple[np.ndarray, str]:
        """The ``(N, 2)`` float32 map positions, from the cache or computed once and cached; and the method."""
        used = resolve_method(method)
        path = self.cache / f"layout-{used}.npy"
        if path.is_file():
            try:
                xy = np.load(path, allow_pickle=False)
                if xy.shape == (len(self), 2) and xy.dtype == np.float32 and np.isfinite(xy).all():
                    return xy, used
            except (ValueError, OSError, EOFError):
                pass  # a damaged cache is computed again
        xy, used = compute_layout(self.vectors(), used, seed=seed)
        import io

        buf = io.BytesIO()
        np.save(buf, xy)
        try:
            _atomic_write_bytes(self.cache / f"layout-{used}.npy", buf.getvalue())
        except OSError:
            pass  # a read-only store still gets its map, computed again next time
        return xy, used

    # ------------------------------------------------------------------------------------------- images
    def image_file(self, row: int) -> Path | None:
        """The file of ``row`` (``None`` for a row that does not exist or a file that is gone)."""
        if not 0 <= row < len(self):
            return None
        path = Path(self.paths[row])
        return path if path.is_file() else None

    def thumbnail(self, row: int) -> Path | None:
        """A JPEG of ``row`` at most :data:`THUMB_SIZE` px on its longest side (cached); ``None`` if unreadable."""
        src = self.image_file(row)
        if src is None:
            return None
        out = self.cache / "thumbs" / f"{row}.jpg"
        if out.is_file():
            return out
        try:
            with Image.open(src) as img:
                img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
                small = to_rgb(ImageOps.exif_transpose(img))
                small.thumbnail((THUMB_SIZE, THUMB_SIZE))
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        import io

        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=85)
        try:
            _atomic_write_bytes(out, buf.getvalue())
        except OSError:
            return None
        return out

    def rows_of(self, files: list[str]) -> np.ndarray:
        """The row of each file (compared as resolved paths), ``-1`` where it is not in the collection."""
        if not self._real:
            self._real = {os.path.realpath(p): i for i, p in enumerate(self.paths)}
        return np.array([self._real.get(os.path.realpath(f), -1) for f in files], dtype=np.int64)

    # ------------------------------------------------------------------------------------- neighbours
    def neighbours(self, row: int, k: int) -> list[dict[str, Any]]:
        """The ``k`` nearest rows of ``row`` (itself left out), as ``frugalvision search`` lists them."""
        found = self.index.search_by_id([row], k=min(k, max(1, len(self) - 1)), exclude_self=True)
        return self.hits(found.ids[0], found.scores[0])

    def hits(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """``[{"rank", "id", "path", "label", "score"}, ...]`` of search hits (missing ``-1`` hits dropped)."""
        return [
            {"rank": r + 1, "id": int(i), "path": self.paths[i], "label": self.labels[i], "score": float(s)}
            for r, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True))
            if i >= 0
        ]
