"""Embedding extraction on Ray Data (``pip install 'frugalvision[ray]'``): one machine or a Ray cluster.

The pipeline, in Ray Data's terms::

    from_numpy(rows to embed)                      data-set rows not yet in the store or its parts/
      .map_batches(decode, tasks)                  read + decode + preprocess: stateless tasks, anywhere
      .map_batches(_Embed, ActorPoolStrategy(W))   the backbone, loaded once per actor, W actors
      .iter_batches()                              the driver writes resume parts as batches finish

The driver feeds the finished batches, in whatever order they come, to the same
:class:`~frugalvision.embeddings.extract.ExtractionJob` as :func:`~frugalvision.embeddings.extract_embeddings`:
the result is the same store (rows in the data set's order), resumable the same way (a killed run keeps its
``parts/``), shardable the same way (``shard=(I, N)``).

``address=None`` starts a local Ray with ``num_cpus`` CPUs (stopped at the end); an address (``"auto"``,
``"ray://head:10001"``) joins a running cluster (a Ray already initialised in the process is used as it is), whose workers must read the image paths of the data set (a
shared file system) -- the store is written by the driver. Each backbone actor reserves ``worker_cpus`` CPUs
(default: 0.5 locally, so that decoding tasks fit beside W = 2 actors on 2 CPUs; 1 on a cluster) and runs
``max(1, floor(worker_cpus))`` torch threads.

Vectors equal the single-process run's up to float32 rounding: an image meets other images in its batch than in
the single-process run, and a CPU convolution's summation order may depend on the batch (observed differences
on this project's test backbone: below 1e-6).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from frugalvision.data import ImageDataset
from frugalvision.embeddings.extract import (
    DEFAULT_SHARD_SECONDS,
    DEFAULT_SHARD_SIZE,
    Embedder,
    ExtractionJob,
    embed_images,
    resolve_device,
)
from frugalvision.embeddings.store import EmbeddingStore
from frugalvision.errors import FrugalVisionError

__all__ = ["DECODE_CPUS", "extract_embeddings_ray"]

#: CPUs reserved per decoding task: a quarter, so that several decode beside the actors on a small machine
DECODE_CPUS = 0.25
_MAX_BLOCKS = 4096  # blocks of row numbers (each a few KB): enough to keep every actor fed


def _decode(batch: dict[str, np.ndarray], dataset: ImageDataset) -> dict[str, np.ndarray]:
    """A Ray task: rows -> preprocessed images ``(B, 3, H, W)`` float32, ``ok`` and the error of skipped rows."""
    images: list[np.ndarray | None] = []
    errors: list[str] = []
    for row in batch["row"].tolist():
        item = dataset[row]
        if item["image"] is None:
            images.append(None)
            errors.append(str(item.get("error", "unknown error")))
        else:
            images.append(item["image"].numpy())
            errors.append("")
    shape = next((im.shape for im in images if im is not None), (3, 1, 1))
    stacked = np.stack([im if im is not None else np.zeros(shape, np.float32) for im in images])
    return {
        "row": batch["row"],
        "image": stacked.astype(np.float32, copy=False),
        "ok": np.array([im is not None for im in images]),
        "error": np.array(errors, dtype=object),
    }


class _Embed:
    """A Ray actor holding the backbone: preprocessed images -> vectors ``(B, D)`` (zeros for skipped rows)."""

    def __init__(self, backbone: Embedder, normalize: bool, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.backbone = backbone.to(self.device)
        self.backbone.eval()
        self.normalize = normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = None
        if ok.any():
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
            found = embed_images(self.backbone, images, normalize=self.normalize, device=self.device)
            vectors = np.zeros((len(ok), found.shape[1]), np.float32)
            vectors[ok] = found
        else:
            vectors = np.zeros((len(ok), 1), np.float32)
        return {"row": batch["row"], "vector": vectors, "ok": ok, "error": batch["error"]}


def extract_embeddings_ray(
    backbone: Embedder,
    dataset: ImageDataset,
    out: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int = 2,
    num_cpus: int | None = 2,
    worker_cpus: float | None = None,
    batch_size: int = 64,
    normalize: bool = True,
    device: str = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    shard_seconds: float | None = DEFAULT_SHARD_SECONDS,
    overwrite: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    shard_mode: str = "contiguous",
) -> EmbeddingStore:
    """:func:`~frugalvision.embeddings.extract_embeddings` on Ray Data (see the module docstring).

    Args:
        backbone, dataset, out, batch_size, normalize, device, shard_size, shard_seconds, overwrite, progress,
            shard, shard_mode: as for :func:`~frugalvision.embeddings.extract_embeddings`.
        address: a Ray cluster to join (``"auto"``, ``"ray://host:10001"``); ``None``: start Ray on this machine.
        workers: backbone actors (W).
        num_cpus: CPUs of a local Ray (``None``: all); ignored with ``address``.
        worker_cpus: CPUs reserved per actor (default 0.5 locally, 1 on a cluster).

    Returns:
        The store, rows in the data set's order.

    Raises:
        FrugalVisionError: Ray is not installed, or cannot start / reach ``address``.
        StoreError: as :func:`~frugalvision.embeddings.extract_embeddings`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    job = ExtractionJob(
        backbone, dataset, out, normalize=normalize, overwrite=overwrite, shard=shard, shard_mode=shard_mode
    )
    if job.todo:
        ray, started_here = _start_ray(address, num_cpus)
        try:
            cpus = worker_cpus if worker_cpus is not None else (0.5 if address is None else 1.0)
            todo = np.asarray(job.todo, dtype=np.int64)
            blocks = max(1, min(math.ceil(len(todo) / batch_size), _MAX_BLOCKS))  # feeds every actor
            rows = ray.data.from_numpy(todo).rename_columns({"data": "row"}).repartition(blocks)
            decoded = rows.map_batches(
                _decode,
                fn_kwargs={"dataset": dataset.with_transform(backbone.transform())},
                batch_size=batch_size,
                num_cpus=DECODE_CPUS,  # differs from the actors': Ray keeps decoding in tasks (no fusion)
            )
            embedded = decoded.map_batches(
                _Embed,
                fn_constructor_kwargs={
                    "backbone": backbone,
                    "normalize": normalize,
                    "device": device,
                    "threads": max(1, math.floor(cpus)),
                },
                compute=ray.data.ActorPoolStrategy(size=workers),
                batch_size=batch_size,
                num_cpus=cpus,
                num_gpus=1 if str(device).startswith("cuda") else 0,
            )

            def batches() -> Iterator[tuple[Sequence[int], np.ndarray | None, list[tuple[int, str]]]]:
                for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                    ok = np.asarray(batch["ok"], dtype=bool)
                    all_rows = np.asarray(batch["row"], dtype=np.int64)
                    skipped = [
                        (int(r), str(e)) for r, e in zip(all_rows[~ok], batch["error"][~ok], strict=True)
                    ]
                    vectors = np.asarray(batch["vector"], dtype=np.float32)[ok] if ok.any() else None
                    yield all_rows[ok].tolist(), vectors, skipped

            job.consume(batches(), shard_size=shard_size, shard_seconds=shard_seconds, progress=progress)
        finally:
            if started_here:
                ray.shutdown()
    return job.finish()


def _start_ray(address: str | None, num_cpus: int | None) -> tuple[Any, bool]:
    """The ``ray`` module, initialised (a Ray already initialised in this process is used as it is), and whether
    this call started it (then the caller shuts it down)."""
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as e:
        raise FrugalVisionError(f"--ray needs the {e.name} package: pip install 'frugalvision[ray]'") from e
    if ray.is_initialized():
        return ray, False
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise FrugalVisionError(f"cannot start {where}: {' '.join(str(e).split())}") from e
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray, address is None
