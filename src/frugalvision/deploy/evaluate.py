"""Compare the precisions of a deploy bundle: accuracy on a labelled set next to speed, so the user can choose.

For each precision (``fp32``, ``int8``...) the images are run through :class:`~frugalvision.runtime.Predictor`
(the runtime's own preprocessing), then:

* embedding models: Recall@1 and MAP@R, leave-one-out over the labelled images
  (:func:`frugalvision.metrics.retrieval_metrics`; Musgrave et al., ECCV 2020, §3.2);
* classification: top-1 accuracy against each image's first label;
* multilabel: :func:`frugalvision.metrics.mean_average_precision`, the mean over classes of
  ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds (tied scores form one step), as
  scikit-learn's ``average_precision_score``.

Speed: images per second of the model alone (no decoding) at batch 1 and 32 on random inputs, each measured for
a bounded time; and the agreement of each precision's outputs with fp32's (:func:`output_agreement`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from frugalvision.deploy.export import output_agreement
from frugalvision.errors import DataError
from frugalvision.metrics import mean_average_precision
from frugalvision.runtime.config import read_deploy_config
from frugalvision.runtime.predictor import Predictor

__all__ = ["compare_precisions", "mean_average_precision", "throughput"]


def throughput(predictor: Predictor, batch_size: int, seconds: float = 2.0, seed: int = 0) -> float:
    """Images per second of ``predictor.run`` on random ``(batch_size, 3, H, W)`` inputs (one warm-up call, then
    repeated calls for about ``seconds``)."""
    if batch_size < 1 or seconds <= 0:
        raise ValueError(f"batch_size must be >= 1 and seconds > 0, got {batch_size} and {seconds}")
    batch = (
        np.random.default_rng(seed).standard_normal((batch_size, *predictor.input_size)).astype(np.float32)
    )
    predictor.run(batch)
    calls, start = 0, time.perf_counter()
    while True:
        predictor.run(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch_size / elapsed


def compare_precisions(
    deploy_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    max_images: int = 2000,
    speed_seconds: float = 2.0,
    batch_sizes: Sequence[int] = (1, 32),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy and speed of each precision of a deploy bundle on a labelled data set.

    Args:
        deploy_dir: the deploy bundle.
        data: a labelled data set (class folders, manifest, COCO, YOLO: :func:`frugalvision.data.open_dataset`).
        precisions: which models (default: all of the bundle's that run on this CPU).
        threads: ONNX Runtime threads.
        max_images: labelled images used at most (drawn at random with ``seed``).
        speed_seconds: time spent measuring each batch size (0 skips the speed measurement).
        batch_sizes: batch sizes of the speed measurement.

    Returns:
        One dict per precision: ``precision``, the accuracy metrics (``recall@1``, ``map@r`` for embeddings;
        ``accuracy`` for classification; ``mAP`` for multilabel), ``images/s@b<N>`` and the agreement with fp32.
    """
    from frugalvision.data import open_dataset
    from frugalvision.runtime.predictor import bf16_fastmath_available

    config = read_deploy_config(deploy_dir)
    dataset = open_dataset(data)
    labelled = [s for s in dataset.samples if s.labels]
    if len(labelled) < 2:
        raise DataError(f"{data}: {len(labelled)} labelled images; comparing precisions needs at least 2")
    if len(labelled) > max_images:
        rng = np.random.default_rng(seed)
        labelled = [labelled[i] for i in sorted(rng.choice(len(labelled), size=max_images, replace=False))]
    paths = [s.path for s in labelled]
    names = dataset.classes
    if precisions is None:
        precisions = [p for p in config.models if p != "bf16" or bf16_fastmath_available()]

    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    batch: np.ndarray | None = None
    for precision in precisions:
        predictor = Predictor(deploy_dir, precision=precision, threads=threads)
        if batch is None:
            batch = predictor.preprocess(paths)
        outputs = predictor.run(batch)
        row: dict[str, Any] = {"precision": precision, "images": len(paths)}
        row.update(_accuracy(predictor, outputs, labelled, names))
        for b in batch_sizes if speed_seconds > 0 else ():
            row[f"images/s@b{b}"] = throughput(predictor, b, speed_seconds, seed)
        if reference is None:
            reference = outputs
        else:
            agreement = output_agreement(reference, outputs)
            row["min_cosine_vs_first"] = agreement["min_cosine"]
            row["mean_cosine_vs_first"] = agreement["mean_cosine"]
        rows.append(row)
    return rows


def _accuracy(
    predictor: Predictor, outputs: np.ndarray, samples: Sequence[Any], names: Sequence[str]
) -> dict[str, float]:
    task = predictor.task
    if task == "embedding":
        import torch

        from frugalvision.metrics import retrieval_metrics

        labels = torch.as_tensor([s.labels[0] for s in samples], dtype=torch.int64)
        metric: Literal["cosine", "l2"] = (
            "cosine" if predictor.config.normalization in ("l2", "none") else "l2"
        )
        result = retrieval_metrics(
            torch.from_numpy(outputs), labels, k=1, metric=metric, include=("recall", "map_at_r")
        )
        return {"recall@1": result["recall@1"], "map@r": result["map@r"]}
    index = {c: i for i, c in enumerate(predictor.classes)}
    unknown = sorted({names[label] for s in samples for label in s.labels} - set(index))
    if unknown:
        raise DataError(
            f"labels {unknown[:5]} of the data set are not classes of this model ({len(index)} classes)"
        )
    if task == "classification":
        predicted = outputs.argmax(axis=1)
        truth = np.array([index[names[s.labels[0]]] for s in samples])
        return {"accuracy": float((predicted == truth).mean())}
    targets = np.zeros(outputs.shape, dtype=bool)
    for i, s in enumerate(samples):
        targets[i, [index[names[label]] for label in s.labels]] = True
    return {"mAP": mean_average_precision(predictor.probabilities(outputs), targets)}
