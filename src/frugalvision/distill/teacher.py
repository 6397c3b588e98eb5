"""The teacher: a model name, a model bundle or an embedding store, and its embeddings of the clean images
(computed once, cached on disk)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from frugalvision.bundle import is_bundle
from frugalvision.data import ImageDataset
from frugalvision.distill.config import DistillConfig
from frugalvision.embeddings import EmbeddingStore, ExtractOptions
from frugalvision.errors import DataError
from frugalvision.models.embedding_model import jsonable_data_config
from frugalvision.train.cache import extract_once, rows_in_order
from frugalvision.train.config import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Teacher", "resolve_teacher", "teacher_embeddings"]


@dataclass
class Teacher:
    """The resolved teacher: a model to run once over the images, or a store of its embeddings.

    Attributes:
        kind: ``"model"`` (timm / offline / open_clip name), ``"bundle"`` or ``"store"``.
        name: the name or folder given.
        model: the embedder (``None`` for a store).
        store: the embedding store (``None`` otherwise).
        params: the model's parameter count (``None`` for a store).
    """

    kind: Literal["model", "bundle", "store"]
    name: str
    model: Any | None = None
    store: EmbeddingStore | None = None
    params: int | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the teacher (kept in the student's bundle)."""
        if self.store is not None:
            return {
                "kind": "store",
                "path": str(Path(self.name).expanduser().resolve()),
                "made_by": self.store.info.get("backbone"),
                "data_config": self.store.info.get("data_config"),
                "dim": self.store.dim,
            }
        assert self.model is not None
        return {
            "kind": self.kind,
            "name": self.name,
            "spec": self.model.spec.to_dict(),
            "data_config": jsonable_data_config(self.model.data_config),
            "params": self.params,
        }


def resolve_teacher(config: DistillConfig) -> Teacher:
    """The teacher ``config.teacher`` names: an embedding store folder, a model bundle folder, or a model name.

    Raises:
        ConfigError: a path that is neither a store nor a bundle, ``teacher_weights`` with a store or bundle.
        ValueError: an unknown model name. WeightsError: pretrained weights that cannot be loaded.
    """
    name = config.teacher
    path = Path(name).expanduser()
    if EmbeddingStore.exists(path):
        if config.teacher_weights or config.teacher_input_size:
            raise ConfigError(
                f"teacher {name} is an embedding store: teacher_weights and teacher_input_size only apply to a "
                "teacher model name"
            )
        return Teacher("store", name, store=EmbeddingStore.load(path))
    if is_bundle(path):
        if config.teacher_weights:
            raise ConfigError(f"teacher {name} is a model bundle and holds its weights; drop teacher_weights")
        from frugalvision.bundle import load

        model: Any = load(path)
    elif path.exists():
        hint = (
            " (it holds parts/ of an interrupted `frugalvision embed`: run that command again to finish it)"
            if (path / "parts").is_dir()
            else ""
        )
        raise ConfigError(
            f"teacher {name} is neither an embedding store (info.json + vectors.npy, from `frugalvision embed`) nor "
            f"a model bundle (config.json + model.safetensors){hint}"
        )
    elif os.sep in name or name.startswith((".", "~")):
        raise ConfigError(f"teacher {name}: no such store or bundle folder (and not a model name)")
    else:
        from frugalvision.foundation import create_feature_model

        model = create_feature_model(
            name, pretrained=config.teacher_pretrained, weights=config.teacher_weights
        )
    if config.teacher_input_size is not None:
        size = int(config.teacher_input_size)
        model.data_config = {**dict(model.data_config), "input_size": (3, size, size)}
    kind: Literal["model", "bundle"] = "bundle" if is_bundle(path) else "model"
    return Teacher(kind, name, model=model, params=sum(p.numel() for p in model.parameters()))


def _lookup(paths: Sequence[str]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for i, p in enumerate(paths):
        rows.setdefault(p, i)
        rows.setdefault(str(Path(p).expanduser().resolve()), i)
    return rows


def teacher_embeddings(
    teacher: Teacher,
    dataset: ImageDataset,
    *,
    source: str,
    cache_root: str | os.PathLike[str],
    wait_s: float = 3600.0,
    **loader: Unpack[ExtractOptions],
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's embedding of every image of ``dataset`` (its own preprocessing, no augmentation).

    A teacher model runs once per image: the result is an :class:`~frugalvision.embeddings.EmbeddingStore`
    (L2-normalised rows) under ``cache_root/<key>``, the key hashing the teacher (name, weights file, bundle id),
    its preprocessing and ``source``, so a second run (or a resumed one) reads it back. A randomly initialised
    teacher (``pretrained=False``, for tests) is not told apart by the key. A teacher store is looked up by image
    path (as given, or resolved). ``loader`` (``batch_size``, ``num_workers``, ``device``, ``progress``) is passed
    to :func:`~frugalvision.embeddings.extract_embeddings`, whose defaults apply.

    Returns:
        ``(vectors (N', D) float32, kept (N,) bool)``: ``kept[i]`` is False for images that could not be read
        (left out of ``vectors``, which follows the data set's order).

    Raises:
        DataError: a teacher store without an embedding for some readable image of ``dataset``.
    """
    paths = [str(p) for p in dataset.paths]
    if teacher.store is not None:
        store = teacher.store
        rows = _lookup(store.paths)
        # images the store's extraction could not read are left out, as the student could not read them either
        skipped = _lookup(
            [str(s.get("path")) for s in store.info.get("skipped", []) if isinstance(s, Mapping)]
        )
        resolved = [str(Path(p).expanduser().resolve()) for p in paths]
        index = np.array([rows.get(p, rows.get(r, -1)) for p, r in zip(paths, resolved, strict=True)])
        missing = [
            p
            for p, r, i in zip(paths, resolved, index, strict=True)
            if i < 0 and p not in skipped and r not in skipped
        ]
        if missing:
            listed = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DataError(
                f"the teacher store {teacher.name} has no embedding for {len(missing)} of the {len(paths)} images of "
                f"{source} (e.g. {listed}); embed these images with the teacher into the store "
                f"(`frugalvision embed {source} --model TEACHER --out {teacher.name}`) or pass the teacher model"
            )
        kept = index >= 0
        return store.vectors[index[kept]], kept
    model = teacher.model
    assert model is not None
    settings: dict[str, Any] = {
        "teacher": model.spec.to_dict(),
        "data_config": jsonable_data_config(model.data_config),
        "source": str(source),
    }
    weights = settings["teacher"].get("weights")
    if weights and Path(weights).is_file():  # a weights file replaced in place gives new embeddings
        stat = Path(weights).stat()
        settings["weights_file"] = [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cache_root) / key
    found = extract_once(
        model, dataset, folder, what="teacher cache", wait_s=wait_s, normalize=True, **loader
    )
    return rows_in_order(found, paths)
