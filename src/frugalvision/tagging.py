"""Tagging images with a trained multi-label model bundle (torch), and evaluating it on labelled images.

``frugalvision train --task multilabel`` writes a bundle whose model outputs one logit per class and whose
``config.json`` holds the class names and the per-class decision thresholds tuned on validation images::

    from frugalvision.tagging import Tagger
    tagger = Tagger("runs/tags/model")
    for p in tagger.predict(["a.jpg", "b.jpg"]):
        print(p.labels, p.scores)            # the classes whose probability reaches their threshold

Exported to ONNX (``frugalvision export``), the same decisions come from the torch-free
:class:`frugalvision.runtime.Predictor`; both return :class:`~frugalvision.runtime.Prediction`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from frugalvision._fs import list_images
from frugalvision.bundle import BundleRunner
from frugalvision.data import ImageDataset
from frugalvision.errors import FrugalVisionError
from frugalvision.runtime.predictor import Prediction

__all__ = ["Tagger", "decide", "evaluate_tagger", "expand_images"]

ImageLike = str | os.PathLike[str] | Image.Image


class Tagger(BundleRunner):
    """A multi-label model bundle, ready to tag images.

    Args:
        bundle: model bundle folder written by ``frugalvision train --task multilabel``.
        device: where the model runs.
        thresholds: override the bundle's per-class thresholds: one float for every class, or one per class.

    Raises:
        StoreError: not a bundle; FrugalVisionError: a bundle of another task (an embedding model has no classes).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        thresholds: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            bundle,
            device,
            "multilabel",
            "tagging needs a multilabel bundle (frugalvision train --task multilabel). Embedding models are used "
            "with `frugalvision search`.",
        )
        saved = self.model.config.get("thresholds") or [0.5] * len(self.classes)
        self.thresholds = _thresholds(saved if thresholds is None else thresholds, len(self.classes))

    def __repr__(self) -> str:
        return f"Tagger({len(self.classes)} classes, bundle={self.model.bundle_path!r})"

    @torch.inference_mode()
    def probabilities(self, images: Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """``(N, C)`` float32 sigmoid probabilities for image files or PIL images (unreadable files raise
        :class:`~frugalvision.errors.CorruptImageError` naming the file)."""
        probabilities: np.ndarray = torch.sigmoid(
            torch.from_numpy(self.raw_outputs(images, batch_size))
        ).numpy()
        return probabilities

    def decide(self, probabilities: np.ndarray, top_k: int | None = None) -> list[Prediction]:
        """A :class:`~frugalvision.runtime.Prediction` per row (see :func:`decide`)."""
        return decide(probabilities, self.classes, self.thresholds, top_k)

    def predict(
        self, images: Sequence[ImageLike], top_k: int | None = None, batch_size: int = 32
    ) -> list[Prediction]:
        """Tags for each image (see :meth:`decide`)."""
        return self.decide(self.probabilities(images, batch_size=batch_size), top_k=top_k)

    def dataset_probabilities(
        self, dataset: ImageDataset, batch_size: int = 32, num_workers: int = 0, progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (N', C), kept (N,) bool)`` for a data set; unreadable images are skipped with one
        :class:`~frugalvision.errors.DataWarning` listing them (``kept`` is False for them)."""
        logits, kept = self.dataset_outputs(dataset, batch_size, num_workers, progress, desc="tagging")
        return torch.sigmoid(torch.from_numpy(logits)).numpy(), kept


def decide(
    probabilities: np.ndarray,
    classes: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray,
    top_k: int | None = None,
) -> list[Prediction]:
    """Multi-label decisions: per row of ``probabilities (N, C)``, the classes whose probability reaches their
    threshold, most probable first (may be empty); with ``top_k``, the ``top_k`` most probable instead."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    limits = _thresholds(thresholds, len(classes))
    out = []
    for row in np.asarray(probabilities, dtype=np.float32):
        order = np.argsort(-row, kind="stable")
        chosen = order[:top_k] if top_k is not None else order[row[order] >= limits[order]]
        out.append(Prediction.of(row, chosen, classes))
    return out


def _thresholds(value: float | Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = np.full(n, float(value), dtype=np.float32)
    else:
        out = np.asarray(value, dtype=np.float32).reshape(-1)
        if out.shape != (n,):
            raise ValueError(f"thresholds must be one number or one per class ({n}), got {len(out)}")
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError("thresholds are probabilities and must lie in [0, 1]")
    return out


def evaluate_tagger(
    tagger: Tagger,
    dataset: ImageDataset,
    *,
    top_k: int = 3,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Multi-label metrics of ``tagger`` on labelled images: mAP, and CP/CR/CF1, OP/OR/OF1 at the bundle's
    thresholds, at 0.5 and at top-k, plus a per-class report.

    The data set's classes are matched to the model's by name (classes the data set does not name are absent from
    its images; unknown entries, target -1, are left out of every metric).

    Returns:
        ``{"images": N, "metrics": {"map": ..., "cf1": ..., "cf1@0.5": ..., "cf1@top3": ...},
        "per_class": [{"class": ..., "ap": ..., ...}]}``.

    Raises:
        FrugalVisionError: the data set names classes the model does not know, or has no positive label.
    """
    from frugalvision.metrics import multilabel_metrics, per_class_report

    mapping = tagger.class_index(dataset, "labels")
    targets = np.zeros((len(dataset), len(tagger.classes)), dtype=np.float32)
    targets[:, mapping] = dataset.target_matrix()
    probs, kept = tagger.dataset_probabilities(
        dataset, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    targets = targets[kept]
    if not (targets == 1).any():
        raise FrugalVisionError(f"{dataset.source} has no positive label: nothing to evaluate")
    k = min(top_k, len(tagger.classes))
    tuned = multilabel_metrics(probs, targets, thresholds=tagger.thresholds, top_k=k)
    half = multilabel_metrics(probs, targets, thresholds=0.5, top_k=k)
    metrics = {name: float(v) for name, v in tuned.items()}
    metrics.update({f"{name}@0.5": float(half[name]) for name in ("cp", "cr", "cf1", "op", "or", "of1")})
    return {
        "images": int(kept.sum()),
        "metrics": metrics,
        "per_class": per_class_report(probs, targets, tagger.classes, tagger.thresholds),
    }


def expand_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += list_images(p)
        else:
            out.append(p)
    return out
