"""An on-disk store of embeddings: vectors, the image each came from, its labels and how it was made.

Layout of a store folder::

    info.json      format version, backbone spec, preprocessing, normalisation, classes, skipped files
    vectors.npy    float32 (N, D)
    items.jsonl    one line per row: {"path": "...", "labels": ["cat", ...]}
    parts/         only while an extraction is running or was interrupted: shards of finished batches

``save`` writes into a temporary sibling folder and renames it over the target (shards included: a saved
store is complete), so a killed process never leaves a half-written store. Shards in ``parts/`` let :func:`~frugalvision.embeddings.extract_embeddings`
resume where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frugalvision.errors import StoreError

__all__ = ["STORE_FORMAT", "EmbeddingStore", "atomic_replace_dir"]

STORE_FORMAT = 1


def atomic_replace_dir(tmp: Path, target: Path) -> None:
    """Move the complete folder ``tmp`` to ``target``, replacing an old ``target`` only at the very end."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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

    # ------------------------------------------------------------------------------------------------ disk
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the store to ``directory`` atomically (see the module docstring). Returns the folder."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            np.save(tmp / "vectors.npy", self.vectors)
            with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
                for p, lab in zip(self.paths, self.labels, strict=True):
                    f.write(json.dumps({"path": p, "labels": list(lab)}, ensure_ascii=False) + "\n")
            info = {
                **self.info,
                "format": STORE_FORMAT,
                "count": len(self),
                "dim": self.dim,
                "classes": self.classes,
            }
            (tmp / "info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
            atomic_replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def exists(cls, directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / "info.json").is_file() and (Path(directory) / "vectors.npy").is_file()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EmbeddingStore:
        """Read a store written by :meth:`save`; raises :class:`StoreError` naming what is wrong."""
        d = Path(directory)
        if not d.is_dir():
            raise StoreError(
                f"no embedding store at {d} (folder missing); create one with `frugalvision embed`"
            )
        for name in ("info.json", "vectors.npy", "items.jsonl"):
            if not (d / name).is_file():
                raise StoreError(f"{d} is not a complete embedding store: {name} is missing")
        try:
            info = json.loads((d / "info.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise StoreError(f"{d / 'info.json'} is not valid JSON: {e}") from e
        if info.get("format") != STORE_FORMAT:
            raise StoreError(
                f"{d} has store format {info.get('format')!r}; this version reads {STORE_FORMAT}"
            )
        vectors = np.load(d / "vectors.npy", allow_pickle=False)
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
        for key in ("format", "count", "dim"):
            info.pop(key, None)
        return cls(vectors=vectors, paths=paths, labels=labels, classes=classes, info=info)

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
