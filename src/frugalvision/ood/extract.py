"""What the OOD scores read from a model, extracted once per image and cached on disk.

For a timm classifier one forward pass gives the penultimate features (pooled pre-logits, ``(D,)``), the
logits (``(C,)``, when the backbone keeps a classifier) and the FeatureNorm of every block
(:func:`~frugalvision.ood.scores.block_feature_norm` of each map of timm's ``forward_intermediates`` plus the
final map, ``(B,)``). The three are concatenated into one vector per image and cached with
:func:`~frugalvision.embeddings.extract_embeddings` (unnormalised), so re-runs and interrupted runs resume.
Models without a classifier (DINOv2, open_clip image towers) give features only.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from frugalvision.data import ImageDataset, collate_images
from frugalvision.embeddings import EmbeddingStore, default_num_workers, extract_embeddings, resolve_device
from frugalvision.errors import StoreError
from frugalvision.models import Backbone
from frugalvision.ood.scores import block_feature_norm, jigsaw

__all__ = ["OODInputs", "extract_ood_inputs", "jigsaw_block_norms"]


@dataclass
class OODInputs:
    """Per-image model outputs for OOD scoring.

    Attributes:
        features: ``(N, D)`` penultimate features (pooled pre-logits), float32.
        logits: ``(N, C)`` classifier logits, or ``None`` without a classifier.
        block_norms: ``(N, B)`` FeatureNorm of each block, shallow to deep, or ``None``.
        paths: image file of each row.
        labels: ``(N,)`` int64 class id of each row in ``classes``, ``-1`` where unlabeled.
        classes: class names of the data set.
    """

    features: np.ndarray
    logits: np.ndarray | None
    block_norms: np.ndarray | None
    paths: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray | list[int]) -> OODInputs:
        """The rows ``rows``, in that order."""
        idx = np.asarray(rows, dtype=np.int64)
        return OODInputs(
            features=self.features[idx],
            logits=None if self.logits is None else self.logits[idx],
            block_norms=None if self.block_norms is None else self.block_norms[idx],
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
        )


class _OODOutputs(Backbone):
    """Wraps a backbone so that ``forward`` returns ``[features | logits | block norms]`` per image."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone.model, backbone.spec, backbone.data_config)
        self.inner = backbone
        model: Any = backbone.model
        self.timm = hasattr(model, "forward_head") and hasattr(model, "forward_features")
        self.has_logits = self.timm and backbone.spec.num_classes > 0
        self.has_intermediates = self.timm and hasattr(model, "forward_intermediates")
        self._layout: dict[str, int] | None = None  # widths of the three parts, known after a forward

    @property
    def layout(self) -> dict[str, int]:
        """``{"features": D, "logits": C, "blocks": B}``; runs one probe image if nothing was embedded yet."""
        if self._layout is None:
            size = tuple(self.data_config.get("input_size", (3, 224, 224)))
            with torch.inference_mode():
                self._parts(torch.zeros(1, *size, device=next(self.model.parameters()).device))
        assert self._layout is not None
        return self._layout

    def transform(self, training: bool = False) -> Any:
        return self.inner.transform(training)

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = x.new_zeros(x.shape[0], 0)
        if not self.timm:  # e.g. an open_clip image tower: pooled features only
            feats = self.inner(x).float()
            self._layout = self._layout or {"features": feats.shape[1], "logits": 0, "blocks": 0}
            return feats, empty, empty
        model: Any = self.model
        maps: list[torch.Tensor] = []
        final = None
        if self.has_intermediates:
            try:
                final, inter = model.forward_intermediates(x)
                maps = [m for m in inter if m.ndim == 4]
            except (TypeError, NotImplementedError, RuntimeError, AssertionError):
                final, maps = None, []
        if final is None:
            final = model.forward_features(x)
        if final.ndim == 4 and getattr(model, "output_fmt", "NCHW") == "NCHW":
            maps.append(final)  # CNNs: the last conv block (e.g. EfficientNet's conv_head)
        feats = model.forward_head(final, pre_logits=True).float()
        logits = model.forward_head(final).float() if self.has_logits else empty
        norms = torch.stack([block_feature_norm(m) for m in maps], dim=1) if maps else empty
        if self._layout is None:
            self._layout = {"features": feats.shape[1], "logits": logits.shape[1], "blocks": norms.shape[1]}
        return feats, logits, norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._parts(x), dim=1)


def _split(store: EmbeddingStore, layout: dict[str, int]) -> OODInputs:
    d, c, b = layout["features"], layout["logits"], layout["blocks"]
    v = store.vectors
    return OODInputs(
        features=np.ascontiguousarray(v[:, :d]),
        logits=np.ascontiguousarray(v[:, d : d + c]) if c else None,
        block_norms=np.ascontiguousarray(v[:, d + c : d + c + b]) if b else None,
        paths=list(store.paths),
        labels=store.label_ids(),
        classes=list(store.classes),
    )


def extract_ood_inputs(
    backbone: Backbone,
    dataset: ImageDataset,
    *,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> OODInputs:
    """Features, logits and block norms of every image of ``dataset`` (see the module docstring).

    Args:
        backbone: from :func:`~frugalvision.models.create_backbone` (pass ``num_classes`` to keep a
            classifier: logits are only available then) or :func:`~frugalvision.foundation.create_feature_model`.
        dataset: the images; their labels are kept (for Mahalanobis).
        cache: folder of the cache (a store of the concatenated vectors, resumable), or ``None`` for a
            temporary one. A cache holds one model's outputs: another model or layout raises ``StoreError``.
        batch_size, num_workers, device, progress: as in :func:`~frugalvision.embeddings.extract_embeddings`.
    """
    dev = resolve_device(device)
    wrapper = _OODOutputs(backbone.to(dev).eval())
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "normalize": False,
        "device": dev,
        "progress": progress,
    }
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="frugalvision-ood-") as tmp:
            store = extract_embeddings(wrapper, dataset, Path(tmp) / "store", **kwargs)
            return _split(store, wrapper.layout)
    found = EmbeddingStore.load(cache).info.get("ood_layout") if EmbeddingStore.exists(cache) else None
    if EmbeddingStore.exists(cache) and found is None:
        raise StoreError(
            f"{cache} holds vectors of another kind (an embedding store, not cached OOD inputs); "
            "use a separate cache folder for OOD inputs"
        )
    store = extract_embeddings(wrapper, dataset, cache, **kwargs)  # raises if another model made the cache
    layout = wrapper._layout or found or wrapper.layout
    if store.dim != sum(layout.values()):
        raise StoreError(f"{cache} holds {store.dim}-dim vectors, expected {sum(layout.values())} ({layout})")
    if store.info.get("ood_layout") != layout:
        store.info["ood_layout"] = layout
        store.save(cache)
    return _split(store, layout)


@torch.inference_mode()
def jigsaw_block_norms(
    backbone: Backbone,
    dataset: ImageDataset,
    *,
    grid: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Block norms of ``dataset``'s images and of their jigsaw puzzles (for NormRatio block selection).

    Each preprocessed image is cut into ``grid × grid`` tiles and shuffled (:func:`~frugalvision.ood.scores.jigsaw`,
    one seeded permutation per image). Unreadable images are skipped.

    Returns:
        ``(id_norms (N, B), jigsaw_norms (N, B))``, rows paired.
    """
    dev = resolve_device(device)
    wrapper = _OODOutputs(backbone.to(dev).eval())
    if not wrapper.layout["blocks"]:
        raise ValueError(f"model {backbone.spec.name!r} exposes no block feature maps; NormRatio needs them")
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(
        dataset.with_transform(wrapper.transform()),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
    )
    gen = torch.Generator().manual_seed(seed)
    ids, jigs = [], []
    for batch in loader:
        if batch["image"] is None:
            continue
        x = batch["image"].to(dev)
        ids.append(wrapper._parts(x)[2].cpu())
        jigs.append(wrapper._parts(jigsaw(x.cpu(), grid, generator=gen).to(dev))[2].cpu())
    if not ids:
        raise ValueError(f"no image of {dataset!r} could be read")
    return torch.cat(ids).numpy(), torch.cat(jigs).numpy()
