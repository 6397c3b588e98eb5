"""Embedding extraction: a backbone over a data set, batched, resumable, written to an :class:`EmbeddingStore`.

Resuming works by shards: every ``shard_size`` images, or every ``shard_seconds`` if that comes first, the
finished vectors are written to ``<out>/parts/part-NNNNN.npz`` (atomically). A re-run with the same model and
settings reads the store and the shards, embeds only the images not yet embedded, and finally writes the whole
store in the data set's order and removes the shards. Killing the process at any moment loses at most one shard
of work; what the killed process was writing is cleaned up by the next run.

Shards end on batch boundaries, so a resumed run meets the remaining images in the same batches as an
uninterrupted one, and its vectors are bit-identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from frugalvision._fs import process_running
from frugalvision.data import ImageDataset, collate_images
from frugalvision.embeddings.sharding import shard_layout, shard_rows
from frugalvision.embeddings.store import EmbeddingStore, recover_interrupted_save
from frugalvision.errors import DataWarning, StoreError

__all__ = [
    "DEFAULT_SHARD_SECONDS",
    "DEFAULT_SHARD_SIZE",
    "Embedder",
    "ExtractOptions",
    "ExtractionJob",
    "default_num_workers",
    "embed_images",
    "extract_embeddings",
    "resolve_device",
]

#: Images per resume shard. Small enough that a kill costs little (256 images are well under a second of a GPU
#: and seconds of a desktop CPU), large enough that writing a shard (1.3 MB and ~40 ms for 256 x 1280 float32
#: plus paths, measured on a busy 2-core machine) costs nothing next to the work it saves, and a million images
#: make 4,000 files, not 1,000,000.
DEFAULT_SHARD_SIZE = 256
#: Seconds between shards at most: where 256 images take minutes (a large model or a slow, busy CPU: this
#: project's shared 2-core test machine embedded 1.5 img/s with EfficientNet-Lite0), a kill loses about a
#: minute of work instead of all of it. Both rules together: at most min(256 images, ~60 s + one batch).
DEFAULT_SHARD_SECONDS = 60.0

_clock = time.monotonic  # read once per batch to decide on a time-based shard
_PART_TMP = re.compile(r"\.part-\d+\.tmp-(\d+)\.npz")  # a shard being written by process <pid>


class Embedder(Protocol):
    """What extraction needs: a :class:`~frugalvision.models.Backbone`, an
    :class:`~frugalvision.models.EmbeddingModel` (e.g. from ``frugalvision.load(bundle)``) or any module with the
    same face. ``spec.to_dict()`` is recorded as the store's ``info["backbone"]``;
    :func:`~frugalvision.bundle.embedder_from_spec` rebuilds the embedder from it."""

    @property
    def spec(self) -> Any: ...

    @property
    def data_config(self) -> dict[str, Any]: ...

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]: ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> Any: ...

    def eval(self) -> Any: ...


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return dev


def default_num_workers() -> int:
    """Data-loading worker processes: one per core, at most 8 (0 on a single core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 1 else min(8, cores)


@torch.inference_mode()
def embed_images(
    backbone: Embedder, images: torch.Tensor, *, normalize: bool = True, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Embed a preprocessed batch ``(B, 3, H, W)``; returns float32 ``(B, D)`` (L2-normalised if asked)."""
    out = backbone(images.to(device)).float()
    if normalize:
        out = F.normalize(out, dim=1)
    return out.cpu().numpy()


def _settings(backbone: Embedder, normalize: bool) -> dict[str, Any]:
    return {
        "backbone": backbone.spec.to_dict(),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
        "normalized": bool(normalize),
    }


def _layout(info: dict[str, Any]) -> dict[str, Any] | None:
    """The shard layout recorded in a store's or part's settings, without its per-run ``skipped_positions``."""
    found = info.get("shard")
    return {k: v for k, v in found.items() if k != "skipped_positions"} if isinstance(found, dict) else None


def _check_compatible(out: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key in ("backbone", "data_config", "normalized"):
        if key in found and json.loads(json.dumps(found[key])) != json.loads(json.dumps(wanted[key])):
            raise StoreError(
                f"{out} holds embeddings made with different settings ({key}: {found[key]} vs now {wanted[key]}). "
                "Use another output folder, or pass overwrite=True (CLI: --overwrite) to start again."
            )
    if _layout(found) != _layout(wanted):  # a shard resumed as another shard, or as the whole data set

        def name(layout: dict[str, Any] | None) -> str:
            return (
                "the whole data set"
                if layout is None
                else f"shard {layout['index']}/{layout['count']} ({layout['mode']})"
            )

        raise StoreError(
            f"{out} holds embeddings of {name(_layout(found))}, not of {name(_layout(wanted))} "
            "(or of another listing of the data). Use another output folder, or pass overwrite=True "
            "(CLI: --overwrite) to start again."
        )


def _read_shards(parts: Path, wanted: dict[str, Any]) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    done: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for shard in sorted(parts.glob("part-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                _check_compatible(parts.parent, meta["settings"], wanted)
                for vec, path, labels in zip(z["vectors"], meta["paths"], meta["labels"], strict=True):
                    done[path] = (vec, tuple(labels))
        except (OSError, KeyError, ValueError) as e:  # a shard cut short cannot happen (atomic), but be safe
            if isinstance(e, StoreError):
                raise
            warnings.warn(f"ignoring unreadable shard {shard}: {e}", DataWarning, stacklevel=3)
    return done


def _write_shard(
    parts: Path,
    number: int,
    vectors: list[np.ndarray],
    paths: list[str],
    labels: list[list[str]],
    settings: dict[str, Any],
) -> None:
    """Write ``parts/part-<number>.npz`` atomically; a failed write (full disk) leaves no partial file and raises
    :class:`StoreError` naming the shard."""
    final = parts / f"part-{number:05d}.npz"
    tmp = parts / f".part-{number:05d}.tmp-{os.getpid()}.npz"
    meta = json.dumps({"paths": paths, "labels": labels, "settings": settings})
    try:
        parts.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, vectors=np.stack(vectors).astype(np.float32), meta=np.array(meta))
        os.replace(tmp, final)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise StoreError(
                f"cannot write {final}: {e.strerror or e}; the shards written before it are kept, and the "
                "same command resumes from them once there is room"
            ) from e
        raise


def _clean_parts(parts: Path) -> None:
    """Remove shards that killed processes were writing (``.part-N.tmp-<pid>.npz``; only ours)."""
    if not parts.is_dir():
        return
    for entry in parts.iterdir():
        match = _PART_TMP.fullmatch(entry.name)
        if match is not None and entry.is_file() and not process_running(int(match[1])):
            entry.unlink(missing_ok=True)


def _next_shard_number(parts: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in parts.glob("part-*.npz") if p.stem.split("-")[1].isdigit()]
    return max(numbers, default=-1) + 1


class ExtractOptions(TypedDict, total=False):
    """How :func:`extract_embeddings` runs a model over a data set, as the functions built on it take and pass on
    these options (``**options: Unpack[ExtractOptions]``): their defaults are :func:`extract_embeddings`' own."""

    batch_size: int
    num_workers: int | None
    device: str | torch.device
    progress: bool


def extract_embeddings(
    backbone: Embedder,
    dataset: ImageDataset,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    normalize: bool = True,
    device: str | torch.device = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    shard_seconds: float | None = DEFAULT_SHARD_SECONDS,
    overwrite: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    shard_mode: str = "contiguous",
) -> EmbeddingStore:
    """Embed every image of ``dataset`` with ``backbone`` and write an :class:`EmbeddingStore` to ``out``.

    The backbone's own preprocessing (``backbone.transform()``) is applied; the data set's transform is
    replaced. Images already in ``out`` (a finished store or shards of an interrupted run) are not embedded
    again. Corrupt images follow the data set's ``on_corrupt`` policy; skipped ones are reported in one
    :class:`~frugalvision.errors.DataWarning` and listed in ``store.info["skipped"]``.

    Args:
        backbone: from :func:`~frugalvision.models.create_backbone`, or a trained model from
            ``frugalvision.load(bundle)`` (any :class:`Embedder`).
        dataset: from a reader in :mod:`frugalvision.data`.
        out: store folder (created if needed).
        batch_size: images per forward pass.
        num_workers: data-loading processes; ``None`` = one per core (at most 8).
        normalize: L2-normalise the vectors (then inner product = cosine similarity).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``...
        shard_size: images per resume shard: at most this many are lost when the process is killed.
        shard_seconds: also write a shard once this many seconds passed since the last one (``None``: by count
            only). Shards are written between batches, so a batch slower than this gives one shard per batch.
        overwrite: discard an existing store made with other settings instead of raising.
        progress: show a progress bar.
        shard: ``(I, N)``: embed only shard ``I`` of ``N`` (numbered from 0) of the data set, a deterministic slice
            (:mod:`frugalvision.embeddings.sharding`); the store records the layout, resumes like any store, and
            :func:`~frugalvision.embeddings.merge_shards` joins the N shards. ``None``: the whole data set.
        shard_mode: ``"contiguous"`` (blocks of the listing) or ``"strided"`` (every N-th image).

    Returns:
        The store, rows in the data set's order.

    Raises:
        StoreError: ``out`` holds embeddings made with another model/preprocessing/normalisation; a shard or
            the store could not be written (full disk...: the message names the file; finished work is kept).
        CorruptImageError, ImageFileMissingError: a bad image with ``on_corrupt="fail"``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if shard_seconds is not None and not shard_seconds > 0:
        raise ValueError(f"shard_seconds must be > 0 (or None: shards by count only), got {shard_seconds}")
    dev = resolve_device(device)
    job = ExtractionJob(backbone, dataset, out, normalize=normalize, overwrite=overwrite, shard=shard,
                        shard_mode=shard_mode)  # fmt: skip
    if job.todo:
        ds = dataset.with_transform(backbone.transform())
        workers = default_num_workers() if num_workers is None else num_workers
        loader = DataLoader(
            Subset(ds, job.todo),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_images,
            persistent_workers=False,
        )
        backbone = backbone.to(dev)
        backbone.eval()

        def batches() -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
            for batch in loader:
                vecs = None
                if batch["image"] is not None:
                    vecs = embed_images(backbone, batch["image"], normalize=normalize, device=dev)
                yield batch["index"].tolist(), vecs, batch["skipped"]

        job.consume(batches(), shard_size=shard_size, shard_seconds=shard_seconds, progress=progress)
    return job.finish()


class ExtractionJob:
    """The bookkeeping of one extraction into ``out``, shared by :func:`extract_embeddings` (a DataLoader) and
    :func:`~frugalvision.embeddings.ray_extract.extract_embeddings_ray` (Ray Data): what is already done (the
    store and its ``parts/``), which data-set rows remain (:attr:`todo`), the resume parts written as vectors
    arrive (:meth:`consume`, in any order), and the final store in the data set's order (:meth:`finish`).

    Raises (at construction):
        StoreError: ``out`` holds embeddings of other settings or another shard; an empty shard.
    """

    def __init__(
        self,
        backbone: Embedder,
        dataset: ImageDataset,
        out: str | os.PathLike[str],
        *,
        normalize: bool = True,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
        shard_mode: str = "contiguous",
    ) -> None:
        self.dataset = dataset
        self.out = out = Path(out)
        self.parts = parts = out / "parts"
        self.settings = settings = _settings(backbone, normalize)
        self.paths = paths = [str(p) for p in dataset.paths]
        self.shard = shard
        selected: Sequence[int] = range(len(paths))  # data-set rows this run embeds
        if shard is not None:
            settings["shard"] = shard_layout(paths, shard[0], shard[1], shard_mode)
            selected = shard_rows(len(paths), shard[0], shard[1], shard_mode).tolist()
            if not selected:
                raise StoreError(
                    f"shard {shard[0]}/{shard[1]} of {dataset!r} is empty ({len(paths)} images for {shard[1]} "
                    "shards); use fewer shards"
                )
        self.selected = selected
        recover_interrupted_save(out)  # a store moved aside by a killed save comes back; its temporaries go
        if overwrite and out.exists():
            shutil.rmtree(out)
        _clean_parts(parts)

        self.done: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
        if EmbeddingStore.exists(out):
            old = EmbeddingStore.load(out)
            _check_compatible(out, old.info, settings)
            self.done.update(
                {p: (v, lab) for p, v, lab in zip(old.paths, old.vectors, old.labels, strict=True)}
            )
        if parts.is_dir():
            self.done.update(_read_shards(parts, settings))
        #: data-set rows still to embed, ascending
        self.todo = [i for i in selected if paths[i] not in self.done]
        self.skipped: list[tuple[str, str]] = []

    def consume(
        self,
        batches: Iterable[tuple[Sequence[int], np.ndarray | None, Sequence[tuple[int, str]]]],
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        shard_seconds: float | None = DEFAULT_SHARD_SECONDS,
        progress: bool = True,
    ) -> None:
        """Record ``(rows, vectors (len(rows), D) or None, skipped [(row, message)])`` batches, writing a resume
        part every ``shard_size`` vectors or ``shard_seconds`` seconds (between batches) and at the end."""
        paths, dataset = self.paths, self.dataset
        shard_vecs: list[np.ndarray] = []
        shard_paths: list[str] = []
        shard_labels: list[list[str]] = []
        shard_no = _next_shard_number(self.parts)
        last_shard = _clock()
        bar = tqdm(total=len(self.todo), desc="embedding", unit="img", disable=not progress)
        for rows, vecs, skipped in batches:
            self.skipped.extend((paths[i], msg) for i, msg in skipped)
            if vecs is not None:
                for row, idx in enumerate(rows):
                    labels = dataset.label_names(idx)
                    self.done[paths[idx]] = (vecs[row], labels)
                    shard_vecs.append(vecs[row])
                    shard_paths.append(paths[idx])
                    shard_labels.append(list(labels))
            now = _clock()
            due = shard_seconds is not None and now - last_shard >= shard_seconds
            if shard_paths and (len(shard_paths) >= shard_size or due):
                _write_shard(self.parts, shard_no, shard_vecs, shard_paths, shard_labels, self.settings)
                shard_no += 1
                shard_vecs, shard_paths, shard_labels = [], [], []
                last_shard = now
            bar.update(len(rows) + len(skipped))
        bar.close()
        if shard_paths:
            _write_shard(self.parts, shard_no, shard_vecs, shard_paths, shard_labels, self.settings)

    def finish(self) -> EmbeddingStore:
        """Warn about skipped images, write the store (rows in the data set's order) and return it."""
        paths, done, skipped, out, parts = self.paths, self.done, self.skipped, self.out, self.parts
        if skipped:
            listed = "\n  ".join(m if p in m else f"{p}: {m}" for p, m in skipped[:20])
            more = f"\n  ... and {len(skipped) - 20} more (see info.json)" if len(skipped) > 20 else ""
            warnings.warn(
                f"skipped {len(skipped)} unreadable image(s):\n  {listed}{more}", DataWarning, stacklevel=3
            )
        rows = [paths[i] for i in self.selected if paths[i] in done]
        if self.shard is not None:
            self.settings["shard"]["skipped_positions"] = [i for i in self.selected if paths[i] not in done]
        if not rows:
            raise StoreError(f"no image of {self.dataset!r} could be embedded; nothing written to {out}")
        store = EmbeddingStore(
            vectors=np.stack([done[p][0] for p in rows]),
            paths=rows,
            labels=[done[p][1] for p in rows],
            classes=list(self.dataset.classes),
            info={
                **self.settings,
                "skipped": [{"path": p, "error": m} for p, m in skipped],
                "source": str(getattr(self.dataset, "source", "")),
            },
        )
        try:
            store.save(out)  # replaces the whole folder, shards included
        except StoreError as e:
            if any(parts.glob("part-*.npz")):
                raise StoreError(
                    f"{e}; the embeddings are kept in {parts} and the same command resumes"
                ) from e
            raise
        return store
