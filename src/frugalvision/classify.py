"""Classifying images with a trained single-label model bundle (torch), and evaluating it on labelled images.

``frugalvision train --task classification`` writes a bundle whose model outputs one logit per class and whose
``config.json`` holds the class names and the temperature ``T`` fitted on validation images; the calibrated
probabilities are ``softmax(logits / T)``::

    from frugalvision.classify import Classifier
    clf = Classifier("runs/cls/model")
    for p in clf.predict(["a.jpg", "b.jpg"], top_k=3):
        print(p.labels, p.scores)            # the 3 most probable classes and their calibrated probabilities

Exported to ONNX (``frugalvision export``), the same probabilities come from the torch-free
:class:`frugalvision.runtime.Predictor` (the graph outputs ``logits / T``); both return
:class:`~frugalvision.runtime.Prediction`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from frugalvision.bundle import BundleRunner
from frugalvision.data import ImageDataset
from frugalvision.errors import FrugalVisionError
from frugalvision.runtime.predictor import Prediction

__all__ = ["Classifier", "evaluate_classifier", "top_k_predictions"]

ImageLike = str | os.PathLike[str] | Image.Image
N_BINS = 15


class Classifier(BundleRunner):
    """A classification model bundle, ready to classify images.

    Args:
        bundle: model bundle folder written by ``frugalvision train --task classification``.
        device: where the model runs.
        temperature: override the bundle's temperature (``1.0``: the raw softmax).

    Raises:
        StoreError: not a bundle; FrugalVisionError: a bundle of another task.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        temperature: float | None = None,
    ) -> None:
        super().__init__(
            bundle,
            device,
            "classification",
            "this needs a classification bundle (frugalvision train --task classification)",
        )
        saved = self.model.config.get("temperature")
        t = float(saved or 1.0) if temperature is None else float(temperature)
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = t

    def __repr__(self) -> str:
        return f"Classifier({len(self.classes)} classes, T={self.temperature:.4g}, bundle={self.model.bundle_path!r})"

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """``(N, C)`` float32 ``softmax(logits / T)``, computed in float64."""
        from frugalvision.metrics.classification import softmax

        z = np.asarray(logits, dtype=np.float64)
        if z.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return softmax(z, self.temperature).astype(np.float32)

    def logits(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 32) -> np.ndarray:
        """``(N, C)`` float32 raw logits for image files or PIL images (unreadable files raise
        :class:`~frugalvision.errors.CorruptImageError` naming the file)."""
        logits: np.ndarray = self.raw_outputs(images, batch_size)  # type: ignore[arg-type]
        return logits

    def probabilities(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 32) -> np.ndarray:
        """``(N, C)`` calibrated probabilities ``softmax(logits / T)``."""
        return self.calibrate(self.logits(images, batch_size=batch_size))

    def predict(
        self, images: Sequence[ImageLike] | ImageLike, top_k: int = 5, batch_size: int = 32
    ) -> list[Prediction]:
        """The ``top_k`` most probable classes of each image with their calibrated probabilities."""
        return top_k_predictions(self.probabilities(images, batch_size=batch_size), self.classes, top_k)

    def dataset_logits(
        self, dataset: ImageDataset, batch_size: int = 32, num_workers: int = 0, progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (N', C), kept (N,) bool)`` for a data set; unreadable images are skipped with one
        :class:`~frugalvision.errors.DataWarning` listing them (``kept`` is False for them)."""
        logits, kept = self.dataset_outputs(dataset, batch_size, num_workers, progress, desc="classifying")
        return logits, kept


def top_k_predictions(probabilities: np.ndarray, classes: Sequence[str], top_k: int = 5) -> list[Prediction]:
    """Per row of ``probabilities (N, C)``: the ``top_k`` most probable classes (ties: lower class index first)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    out = []
    for row in np.asarray(probabilities, dtype=np.float32):
        chosen = np.argsort(-row, kind="stable")[:top_k]
        out.append(Prediction.of(row, chosen, classes))
    return out


def evaluate_classifier(
    classifier: Classifier,
    dataset: ImageDataset,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Single-label metrics of ``classifier`` on labelled images (each image's first label; unlabelled images are
    left out): top-1 / top-k accuracy, balanced accuracy, macro-F1, and ECE / NLL of the raw softmax and of the
    calibrated probabilities, with a per-class report and the confusion matrix.

    The data set's classes are matched to the model's by name.

    Returns:
        ``{"images": N, "metrics": {"top1", "top5", "balanced_accuracy", "macro_f1", "ece", "nll", "ece_raw",
        "nll_raw"}, "per_class": [...], "confusion_matrix": (C, C) list}``.

    Raises:
        FrugalVisionError: the data set names classes the model does not know, or has no labelled image.
    """
    from frugalvision.metrics.classification import (
        classification_report,
        expected_calibration_error,
        softmax,
        topk_accuracy,
    )

    mapping = classifier.class_index(dataset)
    own = dataset.primary_labels()
    labelled = np.flatnonzero(own >= 0)
    if labelled.size == 0:
        raise FrugalVisionError(f"{dataset.source} has no labelled image: nothing to evaluate")
    subset = dataset.subset(labelled) if labelled.size < len(dataset) else dataset
    logits, kept = classifier.dataset_logits(
        subset, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    labels = mapping[own[labelled][kept]]
    if labels.size == 0:
        raise FrugalVisionError(f"{dataset.source}: no labelled image could be read")
    c = len(classifier.classes)
    z = logits.astype(np.float64)
    calibrated, raw = softmax(z, classifier.temperature), softmax(z)
    rows = np.arange(len(labels))
    report = classification_report(labels, z.argmax(axis=1), c, classifier.classes)
    k = int(top_k)
    metrics = {
        **topk_accuracy(z, labels, k=sorted({1, k})),
        "balanced_accuracy": report["balanced_accuracy"],
        "macro_f1": report["macro_f1"],
        "ece": expected_calibration_error(calibrated, labels, N_BINS),
        "nll": float(np.mean(-np.log(np.clip(calibrated[rows, labels], 1e-300, None)))),
        "ece_raw": expected_calibration_error(raw, labels, N_BINS),
        "nll_raw": float(np.mean(-np.log(np.clip(raw[rows, labels], 1e-300, None)))),
        "temperature": classifier.temperature,
    }
    return {
        "images": len(labels),
        "metrics": metrics,
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
    }
