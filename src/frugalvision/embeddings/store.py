"""An on-disk store of embeddings: vectors, the image each came from, its labels and how it was made.

Layout of a store folder::

    info.json      format version, backbone spec, preprocessing, normalisation, classes, skipped files
    vectors.npy    float32 (N, D)
    items.jsonl    one line per row: {"path": "...", "labels": ["cat", ...]}
    parts/         only while an extraction is running or was interrupted: shards of finished batches

``save`` writes into a temporary sibling folder and renames it over the target (shards included: a saved
store is complete), so a killed process never leaves a half-written store. Shards in ``parts/`` let :func:`~frugalvision.embeddings.extract_embeddings`
resume where it stopped. What a killed save leaves beside the target (``.<name>.tmp-<pid>-*``, the folder being
written; ``.<name>.old-<pid>``, the previous store moved aside for the final rename) is cleaned, or put back, by
the next save or extraction (:func:`frugalvision._fs.recover_interrupted_save`). A write that fails (a full disk) raises
:class:`~frugalvision.errors.StoreError` naming the file and leaves the previous store as it was.

``info.json`` holds a ``checksum`` of the rows (paths, labels and vectors; :func:`frugalvision._integrity.rows_digest`),
so a store whose files were edited, reordered or mixed with another store's is refused at load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frugalvision._fs import read_json, recover_interrupted_save, replacing_dir
from frugalvision._integrity import row_chunks, rows_digest
from frugalvision.errors import StoreError

__all__ = ["STORE_FORMAT", "EmbeddingStore", "recover_interrupted_save"]

STORE_FORMAT = 2  # 2: info.json holds the rows' checksum


@dataclass
class EmbeddingStore:
    """Embeddings of a data set, row ``i`` belonging to image ``paths[i]``.

    Attributes:
        vectors: ``(N, D)`` float32.
        paths: image file of each row.
        labels: label names of each row (empty tuple: unlabeled).
        classes: all class names of the data set, in the data set's order.
        info: how the vectors were made: ``backbone`` (a :class:`~frugalvision.models.BackboneSpec` dict),
            ``data_config`` (preprocessing), ``normalized`` (L2), ``skipped`` (files that could not be read).
    """

    vectors: np.ndarray
    paths: list[str]
    labels: list[tuple[str, ...]]
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mapped = isinstance(self.vectors, np.memmap) and self.vectors.dtype == np.float32
        if not (mapped and self.vectors.flags.c_contiguous):  # a memory-mapped store stays mapped
            self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise StoreError(f"vectors must be 2-D (N, D), got shape {self.vectors.shape}")
        if not (len(self.paths) == len(self.labels) == self.vectors.shape[0]):
            raise StoreError(
                f"store is inconsistent: {self.vectors.shape[0]} vectors, {len(self.paths)} paths, "
                f"{len(self.labels)} label rows"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def normalized(self) -> bool:
        return bool(self.info.get("normalized", False))

    def label_ids(self) -> np.ndarray:
        """``(N,)`` int64 index into :attr:`classes` of each row's first label; -1 for unlabeled rows."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(lab[0], -1) if lab else -1 for lab in self.labels], dtype=np.int64)

    def __repr__(self) -> str:
        model = self.info.get("backbone", {}).get("name", "?")
        return (
            f"EmbeddingStore({len(self)} x {self.dim}, model={model!r}, classes={len(self.classes)}, "
            f"normalized={self.normalized})"
        )

    def checksum(self) -> str:
        """``"sha256:..."`` of the rows' paths, labels and vectors (saved in ``info.json``, checked at load)."""
        return rows_digest(self.paths, [list(lab) for lab in self.labels], row_chunks(self.vectors))

    # ------------------------------------------------------------------------------------------------ disk
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the store to ``directory`` atomically (see the module docstring). Returns the folder.

        Raises:
            StoreError: a file could not be written (disk full, no permission...); the message names it, and the
                previous store in ``directory``, if any, is unchanged.
        """
        target = Path(directory)
        current = target.parent
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with replacing_dir(target) as tmp:  # cleans what killed saves left first
                current = target / "vectors.npy"
                np.save(tmp / "vectors.npy", self.vectors)
                current = target / "items.jsonl"
                with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
                    for p, lab in zip(self.paths, self.labels, strict=True):
                        f.write(json.dumps({"path": p, "labels": list(lab)}, ensure_ascii=False) + "\n")
                info = {
                    **self.info,
                    "format": STORE_FORMAT,
                    "count": len(self),
                    "dim": self.dim,
                    "classes": self.classes,
                    "checksum": self.checksum(),
                }
                current = target / "info.json"
                (tmp / "info.json").write_text(
                    json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8"
                )
                current = target
        except OSError as e:
            kept = f"; the previous store in {target} is unchanged" if self.exists(target) else ""
            raise StoreError(f"cannot write {current}: {e.strerror or e}{kept}") from e
        return target

    @classmethod
    def exists(cls, directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / "info.json").is_file() and (Path(directory) / "vectors.npy").is_file()

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = False) -> EmbeddingStore:
        """Read a store written by :meth:`save`; raises :class:`StoreError` naming what is wrong.

        ``mmap=True``: :attr:`vectors` is a read-only ``np.memmap`` of ``vectors.npy`` and the checks read it in
        chunks, so a store larger than memory opens (for consumers that read it in chunks, such as
        :func:`frugalvision.index.build_on_disk`).
        """
        d = Path(directory)
        if not d.is_dir():
            raise StoreError(
                f"no embedding store at {d} (folder missing); create one with `frugalvision embed`"
            )
        for name in ("info.json", "vectors.npy", "items.jsonl"):
            if not (d / name).is_file():
                raise StoreError(f"{d} is not a complete embedding store: {name} is missing")
        info_file, vectors_file = d / "info.json", d / "vectors.npy"
        info = read_json(info_file)
        if not isinstance(info, dict):
            raise StoreError(f"{info_file} must hold a JSON object, got {type(info).__name__}")
        if info.get("format") != STORE_FORMAT:
            hint = "; re-run `frugalvision embed` with --overwrite" if info.get("format") == 1 else ""
            raise StoreError(
                f"{d} has store format {info.get('format')!r}; this version reads {STORE_FORMAT}{hint}"
            )
        try:
            vectors = np.load(vectors_file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise StoreError(f"{vectors_file} is not a readable numpy array ({e})") from e
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            raise StoreError(
                f"{vectors_file} must hold a 2-D (N, D) array, got shape {getattr(vectors, 'shape', None)}"
            )
        if vectors.dtype != np.float32:
            raise StoreError(f"{vectors_file} must hold float32 vectors, got {vectors.dtype}")
        if info.get("dim") != vectors.shape[1]:
            raise StoreError(
                f"{vectors_file} holds {vectors.shape[1]}-d vectors but {info_file} says dim {info.get('dim')!r}"
            )
        bad = sum(int((~np.isfinite(chunk)).sum()) for chunk in row_chunks(vectors))
        if bad:
            raise StoreError(f"{vectors_file} holds {bad} NaN or infinite value(s)")
        paths: list[str] = []
        labels: list[tuple[str, ...]] = []
        with open(d / "items.jsonl", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    item = json.loads(line)
                    paths.append(str(item["path"]))
                    labels.append(tuple(str(x) for x in item.get("labels", [])))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise StoreError(f"{d / 'items.jsonl'}:{lineno}: malformed row ({e})") from e
        if vectors.shape[0] != len(paths) or info.get("count", len(paths)) != len(paths):
            raise StoreError(
                f"{d} is inconsistent: vectors.npy has {vectors.shape[0]} rows, items.jsonl {len(paths)}, "
                f"info.json says {info.get('count')}"
            )
        classes = [str(c) for c in info.pop("classes", [])]
        saved = info.pop("checksum", None)
        for key in ("format", "count", "dim"):
            info.pop(key, None)
        store = cls(vectors=vectors, paths=paths, labels=labels, classes=classes, info=info)
        if saved != store.checksum():
            raise StoreError(
                f"{d}: items.jsonl, vectors.npy and info.json do not belong together (the checksum of paths, "
                "labels and vectors differs from the one in info.json: a file was edited, reordered or copied "
                "from another store); embed again into a new folder"
            )
        return store

    def subset(self, rows: Sequence[int] | np.ndarray) -> EmbeddingStore:
        """A new store holding ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return EmbeddingStore(
            vectors=self.vectors[idx],
            paths=[self.paths[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            classes=list(self.classes),
            info=dict(self.info),
        )
