"""``select_backbones``: rank candidate backbones on the user's labelled images, with their cost beside.

Cache layout (``cache_dir``), one folder per candidate named by :meth:`Candidate.key`::

    <key>/features/    an EmbeddingStore of the raw pooled features (resumable: a killed run loses one shard)
    <key>/model.json   what the candidate is: spec, feature size, parameter count, preprocessing
    <key>/onnx/        its ONNX export (a deploy bundle), only when speed is measured
    <key>/speed.json   images/s by thread count and batch size, measured once per thread count

A candidate whose features already cover every image of the data set is not built at all (no weights loaded,
nothing embedded), so adding a candidate to a list embeds with that one only. The scores are recomputed on
every run from the cached features (seconds), on the images every candidate could read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from frugalvision._fs import write_text_atomic
from frugalvision.data import ImageDataset
from frugalvision.embeddings import EmbeddingStore, extract_embeddings
from frugalvision.errors import DataError
from frugalvision.models import create_backbone
from frugalvision.selection.candidates import Candidate, check_candidate
from frugalvision.selection.cost import SPEED_BATCHES, export_for_speed, measure_speed, parameter_count
from frugalvision.selection.scores import SCORES, check_labels, feature_scores

__all__ = ["ModelReport", "SelectionResult", "labelled_subset", "pareto_front", "select_backbones"]


@dataclass
class ModelReport:
    """One candidate's scores and cost.

    Attributes:
        model: the candidate as written (:attr:`Candidate.label`).
        key: its cache folder name.
        backbone: its :class:`~frugalvision.models.BackboneSpec` as a dict.
        dim: feature size.
        parameters: parameter count.
        scores: :data:`~frugalvision.selection.scores.SCORES` -> value (``None`` where undefined).
        speed: batch size (as a string) -> ONNX Runtime images/s; empty when not measured.
        embedded: images embedded by this run (0 when every feature came from the cache).
        pareto: on the quality/cost Pareto front (see :func:`pareto_front`).
    """

    model: str
    key: str
    backbone: dict[str, Any]
    dim: int
    parameters: int
    scores: dict[str, float | None]
    speed: dict[str, float] = field(default_factory=dict)
    embedded: int = 0
    pareto: bool = False


@dataclass
class SelectionResult:
    """The ranking: ``models`` sorted by ``rank_by``, best first (``None`` scores last)."""

    data: str
    images: int
    classes: int
    rank_by: str
    threads: int
    models: list[ModelReport]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "images": self.images,
            "classes": self.classes,
            "rank_by": self.rank_by,
            "speed_threads": self.threads,
            "models": [
                {"rank": i + 1, **{k: v for k, v in vars(m).items()}} for i, m in enumerate(self.models)
            ],
        }

    def table(self) -> str:
        """A plain-text table, one row per model, best first; ``*`` marks the Pareto front."""
        head = ["rank", "model", "R@1", "MAP@R", "probe", "LogME", "params", "img/s@1", "img/s@32", "pareto"]
        rows = []
        for i, m in enumerate(self.models):
            s = m.scores
            rows.append(
                [
                    str(i + 1),
                    m.model,
                    *(_fmt(s.get(k)) for k in SCORES),
                    f"{m.parameters / 1e6:.2f}M",
                    *(_fmt(m.speed.get(str(b)), ".1f") for b in SPEED_BATCHES),
                    "*" if m.pareto else "",
                ]
            )
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines = ["  ".join(v.ljust(w) if c == 1 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths, strict=True)))
                 for r in [head, *rows]]  # fmt: skip
        return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def pareto_front(quality: Sequence[float | None], speed: Sequence[float]) -> list[bool]:
    """Which points no other point dominates, both axes higher-is-better.

    Point ``j`` dominates ``i`` when ``quality[j] >= quality[i]`` and ``speed[j] >= speed[i]`` with at least one
    strict. A point with ``quality None`` is never on the front.
    """
    if len(quality) != len(speed):
        raise ValueError(f"quality and speed must have the same length, got {len(quality)} and {len(speed)}")
    front = []
    for i, (qi, si) in enumerate(zip(quality, speed, strict=True)):
        if qi is None:
            front.append(False)
            continue
        dominated = any(
            qj is not None and qj >= qi and sj >= si and (qj > qi or sj > si)
            for j, (qj, sj) in enumerate(zip(quality, speed, strict=True))
            if j != i
        )
        front.append(not dominated)
    return front


def labelled_subset(
    dataset: ImageDataset, *, per_class: int | None = None, seed: int = 0
) -> tuple[ImageDataset, np.ndarray]:
    """The single-label images of ``dataset`` (unlabelled ones left out), at most ``per_class`` of each class
    (drawn with ``seed``), and their class ids.

    Raises:
        DataError: an image with several labels; fewer than 2 classes; a class with a single image.
    """
    source = str(getattr(dataset, "source", "") or repr(dataset))
    keep: list[int] = []
    for i, sample in enumerate(dataset.samples):
        if len(sample.labels) > 1:
            raise DataError(
                f"{source}: image {sample.path} has {len(sample.labels)} labels; backbone selection scores "
                "single-label classification data"
            )
        if sample.labels:
            keep.append(i)
    rows = np.asarray(keep, dtype=np.int64)
    primary = dataset.primary_labels()[rows] if rows.size else np.zeros(0, np.int64)
    if per_class is not None:
        if per_class < 2:
            raise ValueError(f"per_class must be >= 2, got {per_class}")
        rng = np.random.default_rng(seed)
        chosen = [
            np.sort(rng.permutation(np.flatnonzero(primary == c))[:per_class]) for c in np.unique(primary)
        ]
        picked = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        rows, primary = rows[picked], primary[picked]
    names = [dataset.classes[c] for c in primary]
    ids = check_labels(names, source)
    return dataset.subset(rows), ids


def _cache_name(candidate: Candidate, seed: int) -> str:
    """The candidate's cache folder; random weights (``pretrained=False``, no file) depend on ``seed`` too."""
    random_weights = not candidate.pretrained and candidate.weights is None
    return candidate.key() + (f"-seed{seed}" if random_weights else "")


def _features(
    candidate: Candidate,
    dataset: ImageDataset,
    folder: Path,
    *,
    speed: bool,
    threads: int,
    speed_seconds: float,
    remeasure: bool,
    seed: int,
    embed_kwargs: dict[str, Any],
) -> tuple[EmbeddingStore, dict[str, Any], dict[str, float], int]:
    """The candidate's features of ``dataset`` (from the cache where possible), its model record, its speed, and
    how many images were embedded now."""
    store_dir, record_file, onnx_dir, speed_file = (
        folder / "features",
        folder / "model.json",
        folder / "onnx",
        folder / "speed.json",
    )
    wanted = {str(p) for p in dataset.paths}
    store = EmbeddingStore.load(store_dir) if EmbeddingStore.exists(store_dir) else None
    covered = (
        set() if store is None else set(store.paths) | {s["path"] for s in store.info.get("skipped", [])}
    )
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    speeds_all: dict[str, dict[str, float]] = (
        json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    )
    speed_now = speeds_all.get(str(threads)) if not remeasure else None
    need_model = store is None or not wanted <= covered or record is None
    need_export = speed and speed_now is None and not (onnx_dir / "deploy.json").is_file()

    backbone = None
    embedded = 0
    if need_model or need_export:
        # random weights (no pretrained, no file) are drawn from ``seed``, so the cache and a re-run agree
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = create_backbone(
                candidate.name, pretrained=candidate.pretrained, weights=candidate.weights
            )
        record = {
            "model": candidate.label,
            "backbone": backbone.spec.to_dict(),
            "dim": int(backbone.num_features),
            "parameters": parameter_count(backbone),
            "data_config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()
            },
        }
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record_file, json.dumps(record, indent=2))
    if need_model:
        assert backbone is not None
        store = extract_embeddings(backbone, dataset, store_dir, normalize=False, **embed_kwargs)
        embedded = len(set(store.paths) - covered)
    assert store is not None and record is not None
    if speed and speed_now is None:
        if need_export:
            assert backbone is not None
            export_for_speed(backbone, onnx_dir)
        speed_now = measure_speed(onnx_dir, threads=threads, seconds=speed_seconds)
        speeds_all[str(threads)] = speed_now
        write_text_atomic(speed_file, json.dumps(speeds_all, indent=2))
    return store, record, dict(speed_now or {}) if speed else {}, embedded


def select_backbones(
    dataset: ImageDataset,
    candidates: Sequence[Candidate],
    cache_dir: str | os.PathLike[str],
    *,
    rank_by: str = "linear_probe",
    per_class: int | None = None,
    folds: int = 5,
    seed: int = 0,
    speed: bool = True,
    threads: int = 2,
    speed_seconds: float = 2.0,
    remeasure: bool = False,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> SelectionResult:
    """Score every candidate backbone on the labelled images of ``dataset`` and rank them.

    For each candidate: embed the images once (cached in ``cache_dir``, resumable), then
    :func:`~frugalvision.selection.scores.feature_scores` (kNN Recall@1, MAP@R, cross-validated linear probe,
    LogME) and the cost: parameters and ONNX Runtime images/s at batch 1 and 32 with ``threads`` threads. All
    candidates are scored on the same images: those every candidate could read.

    Args:
        dataset: labelled images (single-label; unlabelled ones are left out).
        candidates: from :func:`~frugalvision.selection.parse_candidates`.
        cache_dir: folder of the per-candidate caches (created).
        rank_by: the score that orders the result and the Pareto front, one of ``SCORES``.
        per_class: score at most this many images per class (drawn with ``seed``); ``None``: all.
        folds: cross-validation folds of the linear probe (fewer when a class is smaller).
        seed: the linear probe's folds, the ``per_class`` draw, and random weights (``pretrained=False``).
        speed: export to ONNX and measure images/s (cached per thread count); ``False``: parameters only.
        threads: ONNX Runtime threads for the speed.
        speed_seconds: time spent measuring each batch size.
        remeasure: measure the speed again even if cached.
        batch_size, num_workers, device, progress: of the embedding.

    Returns:
        :class:`SelectionResult`; the Pareto front is over ``rank_by`` and images/s at batch 32 (or, without
        ``speed``, fewer parameters).

    Raises:
        ValueError: unknown model names (before anything is embedded), unknown ``rank_by``.
        DataError: fewer than 2 classes, a class with one image, multi-label images.
        WeightsError: pretrained weights cannot be loaded (e.g. offline and not cached).
    """
    if rank_by not in SCORES:
        raise ValueError(f"rank_by must be one of {', '.join(SCORES)}, got {rank_by!r}")
    if not candidates:
        raise ValueError("no candidate backbone to score")
    for cand in candidates:
        check_candidate(cand)
    subset, _ = labelled_subset(dataset, per_class=per_class, seed=seed)
    cache = Path(cache_dir)
    embed_kwargs = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": device,
        "progress": progress,
    }

    found = []
    bar = tqdm(candidates, desc="candidates", unit="model", disable=not progress or len(candidates) < 2)
    for cand in bar:
        bar.set_postfix_str(cand.label)
        found.append(
            (
                cand,
                *_features(
                    cand,
                    subset,
                    cache / _cache_name(cand, seed),
                    speed=speed,
                    threads=threads,
                    speed_seconds=speed_seconds,
                    remeasure=remeasure,
                    seed=seed,
                    embed_kwargs=embed_kwargs,
                ),
            )
        )
    bar.close()

    # the images every candidate could read, in data-set order, with their labels
    common = set.intersection(*(set(store.paths) for _, store, *_ in found))
    paths = [str(p) for p in subset.paths if str(p) in common]
    label_of = dict(zip(found[0][1].paths, found[0][1].labels, strict=True))
    ids = check_labels([label_of[p][0] for p in paths], str(getattr(dataset, "source", "") or "the data set"))

    reports = []
    for cand, store, record, speeds, embedded in tqdm(found, desc="scoring", disable=not progress):
        row = {p: i for i, p in enumerate(store.paths)}
        feats = store.vectors[[row[p] for p in paths]]
        scores = feature_scores(feats, ids, folds=folds, seed=seed, name=cand.label)
        reports.append(
            ModelReport(
                model=cand.label,
                key=_cache_name(cand, seed),
                backbone=record["backbone"],
                dim=int(record["dim"]),
                parameters=int(record["parameters"]),
                scores=scores,
                speed=speeds,
                embedded=embedded,
            )
        )

    # cost axis of the front, higher is better: images/s at the largest batch, or fewer parameters
    def cost(m: ModelReport) -> float:
        return m.speed.get(str(SPEED_BATCHES[-1]), 0.0) if speed else -float(m.parameters)

    # best score first; a tie goes to the cheaper model, so rank 1 is always on the Pareto front
    reports.sort(key=lambda m: (m.scores[rank_by] is None, -(m.scores[rank_by] or 0.0), -cost(m)))
    front = pareto_front([m.scores[rank_by] for m in reports], [cost(m) for m in reports])
    for m, on_front in zip(reports, front, strict=True):
        m.pareto = on_front
    return SelectionResult(
        data=str(getattr(dataset, "source", "") or ""),
        images=len(paths),
        classes=len(np.unique(ids)),
        rank_by=rank_by,
        threads=threads,
        models=reports,
    )
