"""Zero-shot labeling of images from class names (CLIP-style), with a manifest and a review queue.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(https://arxiv.org/abs/2103.00020): the probability of class ``c`` for image ``x`` is

    p(c | x) = softmax_c( s · cos(f(x), w_c) )

with ``f`` the image encoder, ``w_c`` the ensembled text embedding of class ``c``
(:func:`~frugalvision.foundation.prompts.text_classifier`) and ``s`` the model's learnt logit scale (100 for
OpenAI CLIP). An image's **score** is its top-1 probability and its **margin** the top-1 minus the top-2
probability; images below ``min_score`` / ``min_margin`` stay unlabeled and head the review queue.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frugalvision._checks import check_embedding_batch, check_positive
from frugalvision._fs import write_text_atomic
from frugalvision.data import ImageDataset
from frugalvision.embeddings import extract_embeddings
from frugalvision.foundation.features import FeatureModel
from frugalvision.foundation.prompts import DEFAULT_TEMPLATES, resolve_templates, text_classifier

__all__ = [
    "ZeroShotResult",
    "write_label_manifest",
    "write_review_queue",
    "zero_shot_classify",
    "zero_shot_probs",
]


def zero_shot_probs(
    image_features: torch.Tensor, class_embeddings: torch.Tensor, logit_scale: float = 100.0
) -> torch.Tensor:
    """Class probabilities ``softmax(s · cos(image, class))``.

    Args:
        image_features: ``(N, D)`` image embeddings (normalised here).
        class_embeddings: ``(C, D)`` class embeddings (normalised here).
        logit_scale: ``s``, the model's ``logit_scale.exp()``.

    Returns:
        ``(N, C)`` float32 probabilities, rows summing to 1.
    """
    check_embedding_batch(image_features, "image_features")
    check_embedding_batch(class_embeddings, "class_embeddings", dim=image_features.shape[1])
    check_positive(logit_scale, "logit_scale")
    logits = (
        logit_scale
        * F.normalize(image_features.float(), dim=1)
        @ F.normalize(class_embeddings.float(), dim=1).T
    )
    return logits.softmax(dim=1)


@dataclass
class ZeroShotResult:
    """Zero-shot probabilities of a set of images.

    Attributes:
        paths: image files, ``N``.
        classes: class names, ``C``.
        probs: ``(N, C)`` float32 probabilities.
    """

    paths: list[str]
    classes: list[str]
    probs: np.ndarray

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if self.probs.shape != (len(self.paths), len(self.classes)):
            raise ValueError(
                f"probs must have shape (N, C) = ({len(self.paths)}, {len(self.classes)}), got {self.probs.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.probs, axis=1, kind="stable")
        return order, np.take_along_axis(self.probs, order, axis=1)

    @property
    def prediction(self) -> np.ndarray:
        """``(N,)`` index of the most probable class."""
        return self._sorted()[0][:, 0]

    @property
    def score(self) -> np.ndarray:
        """``(N,)`` top-1 probability."""
        return self._sorted()[1][:, 0]

    @property
    def margin(self) -> np.ndarray:
        """``(N,)`` top-1 minus top-2 probability (the top-1 probability when there is one class)."""
        p = self._sorted()[1]
        return p[:, 0] - (p[:, 1] if p.shape[1] > 1 else 0.0)

    def labels(self, min_score: float = 0.0, min_margin: float = 0.0) -> list[str | None]:
        """The predicted class name of each image, ``None`` where score < ``min_score`` or margin < ``min_margin``."""
        keep = (self.score >= min_score) & (self.margin >= min_margin)
        return [self.classes[int(c)] if k else None for c, k in zip(self.prediction, keep, strict=True)]


@torch.inference_mode()
def zero_shot_classify(
    model: FeatureModel,
    dataset: ImageDataset,
    classes: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    *,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ZeroShotResult:
    """Class probabilities of every image of ``dataset`` from class names and prompt templates.

    Image features are extracted with :func:`~frugalvision.embeddings.extract_embeddings` into ``cache`` (kept,
    so labeling again with other class names does not re-embed the images) or into a temporary folder.
    Images that cannot be read are skipped with a warning and are absent from the result.

    Args:
        model: a CLIP-like :class:`~frugalvision.foundation.FeatureModel` (``model.has_text``).
        dataset: the images (labels, if any, are ignored).
        classes: class names; prompts read ``_`` as a space.
        templates: ``"default"``, ``"simple"``, a templates file, or a sequence of templates with ``{}``.
        cache: folder of the image-feature store (resumable), or ``None`` for a temporary one.
        batch_size, num_workers, device, progress: as in :func:`~frugalvision.embeddings.extract_embeddings`.
    """
    if not model.has_text:
        raise ValueError(
            f"zero-shot labeling needs a model with a text tower; {model.spec.name!r} has none. Use an "
            "open_clip model, e.g. 'open_clip:ViT-B-32/laion2b_s34b_b79k'"
        )
    names = list(classes)
    weights = text_classifier(model.to(device), names, resolve_templates(templates))
    kwargs = {"batch_size": batch_size, "num_workers": num_workers, "device": device, "progress": progress}
    if cache is not None:
        store = extract_embeddings(model, dataset, cache, **kwargs)  # type: ignore[arg-type]
    else:
        with tempfile.TemporaryDirectory(prefix="frugalvision-zeroshot-") as tmp:
            store = extract_embeddings(model, dataset, Path(tmp) / "store", **kwargs)  # type: ignore[arg-type]
    probs = zero_shot_probs(torch.from_numpy(store.vectors).to(weights.device), weights, model.logit_scale)
    return ZeroShotResult(paths=list(store.paths), classes=names, probs=probs.cpu().numpy())


def _relative(path: str, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def _write_csv(out: Path, header: list[str], rows: list[list[object]]) -> Path:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(out, text.getvalue())


def write_label_manifest(
    result: ZeroShotResult,
    out: str | os.PathLike[str],
    *,
    min_score: float = 0.0,
    min_margin: float = 0.0,
) -> Path:
    """Write a CSV manifest ``path,label,prediction,score,margin`` readable by :func:`~frugalvision.data.read_manifest`.

    ``label`` is empty (unlabeled) where score < ``min_score`` or margin < ``min_margin``; ``prediction`` always
    holds the top-1 class. Paths are relative to the manifest's folder. Written atomically.
    """
    target = Path(out)
    if target.suffix.lower() != ".csv":
        raise ValueError(f"the manifest must be a .csv file, got {target}")
    labels = result.labels(min_score, min_margin)
    base = target.resolve().parent
    rows: list[list[object]] = [
        [_relative(p, base), lab or "", result.classes[int(c)], f"{s:.4f}", f"{m:.4f}"]
        for p, lab, c, s, m in zip(
            result.paths, labels, result.prediction, result.score, result.margin, strict=True
        )
    ]
    return _write_csv(target, ["path", "label", "prediction", "score", "margin"], rows)


def write_review_queue(
    result: ZeroShotResult,
    out: str | os.PathLike[str],
    *,
    sheet: str | os.PathLike[str] | None = None,
    sheet_size: int = 40,
    top_k: int = 3,
    min_score: float = 0.0,
    min_margin: float = 0.0,
) -> Path:
    """Write the review queue: every image, most uncertain (smallest margin) first, with its top-``k`` classes.

    Columns: ``rank,path,labeled,margin,class1,prob1,...,classK,probK`` (absolute paths). With ``sheet``, also
    a PNG contact sheet of the ``sheet_size`` most uncertain images, captioned with their two best classes.
    """
    top_k = max(1, min(int(top_k), len(result.classes)))
    order = np.argsort(result.margin, kind="stable")
    cls_order, probs = result._sorted()
    labeled = [lab is not None for lab in result.labels(min_score, min_margin)]
    header = ["rank", "path", "labeled", "margin"] + [
        f"{k}{i + 1}" for i in range(top_k) for k in ("class", "prob")
    ]
    rows: list[list[object]] = []
    for rank, i in enumerate(order, 1):
        tops = [v for j in range(top_k) for v in (result.classes[int(cls_order[i, j])], f"{probs[i, j]:.4f}")]
        rows.append([rank, result.paths[i], int(labeled[i]), f"{result.margin[i]:.4f}", *tops])
    written = _write_csv(Path(out), header, rows)
    if sheet is not None and len(result):
        from frugalvision.curation import save_contact_sheet

        chosen = order[: max(1, sheet_size)]
        per_row = 8
        groups = [chosen[s : s + per_row] for s in range(0, len(chosen), per_row)]

        def caption(i: int) -> str:
            second = (
                f"\n{result.classes[int(cls_order[i, 1])][:14]} {probs[i, 1]:.2f}"
                if probs.shape[1] > 1
                else ""
            )
            return f"{result.classes[int(cls_order[i, 0])][:14]} {probs[i, 0]:.2f}{second}"

        save_contact_sheet(
            [[result.paths[i] for i in g] for g in groups],
            sheet,
            captions=[[caption(int(i)) for i in g] for g in groups],
        )
    return written
