"""Data for the multi-label benchmark: long-tailed Caltech-101 mosaics, partial annotation, COCO-128 and BCCD.

No large real multi-label set is available offline, so three kinds of sets are built from ``../shared/data``
(relative to the repository root, or ``--data``; sources and licences in its README):

* **Mosaics** (:func:`build_mosaics`): ``grid x grid`` tiles of ``caltech101-dev`` photos (51 classes), each
  tile a different class, some tiles grey filler, so an image carries 1..grid*grid labels. Classes are
  drawn with Zipf-like probabilities over a fixed random class order (long tail). Each class's photos are
  split into train/val/test *before* tiling, so test mosaics hold photos never seen in training.
* **Partial annotation** (:func:`hide_annotations`): "random per annotation" simulation of Ben-Baruch et
  al., *Multi-label Classification with Partial Annotations using Class-aware Selective Loss*, CVPR 2022:
  every (image, class) annotation, positive or negative, is hidden independently with probability
  ``fraction`` and listed under ``"unknown"``.
* **Genuine multi-label sets** (:func:`coco128_manifests`, :func:`bccd_manifests`): image-level labels =
  the set of box classes of ``coco128`` (YOLO, 80 COCO classes) and ``bccd`` (PASCAL VOC, 3 cell types).

Manifests are JSON Lines readable by :func:`frugalvision.data.read_manifest`; pass it the ``classes.txt``
written beside them (``classes=read_class_names(...)``) so every split uses the same class order.

Run:  .venv/bin/python benchmarks/multilabel_data.py --out /tmp/mlbench [--seed 0] [--hide 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from frugalvision.data import load_image, read_class_names, read_manifest, read_yolo
from frugalvision.errors import DataError, FrugalVisionError

__all__ = [
    "COCO80",
    "DATA",
    "HIDE_MODES",
    "bccd_manifests",
    "build_mosaics",
    "class_label",
    "coco128_manifests",
    "format_table",
    "hide_annotations",
    "main",
    "manifest_stats",
    "zipf_probabilities",
]

#: ``../shared/data`` beside the repository (absent in a user's clone).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: The 80 COCO class names in YOLO class-id order (coco128 ships no names file).
COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()

HIDE_MODES = ("random_per_annotation", "positives_only")

SPLITS = ("train", "val", "test")
_PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Caltech-101's Faces_easy holds tighter crops of the photos in Faces, under the same file names: a
# twin's photos follow their original's split, and a mosaic never shows both crops of one photo.
_TWIN_OF = {"Faces_easy": "Faces"}
_FILLER_GREY = 128
_BUILD_FILE = "build.json"
# Bump when the rendering changes, so images of an older build are not reused.
_RENDER_VERSION = 1


# ----------------------------------------------------------------------------------------------- utilities
def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    _write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def _write_classes(path: Path, classes: Sequence[str]) -> Path:
    _write_text_atomic(path, "".join(f"{c}\n" for c in classes))
    return path


def _check_count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------- mosaics
def _list_photos(caltech_root: Path, classes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Class folder -> sorted photo file names. ``classes``: the class folders to use, relative to the root and
    possibly nested (``"Bengali/character01"``); default every top-level folder."""
    if not caltech_root.is_dir():
        raise DataError(f"caltech_root not found or not a folder: {caltech_root}")
    if classes is None:
        folders = [e.name for e in os.scandir(caltech_root) if e.is_dir() and not e.name.startswith(".")]
    else:
        folders = list(classes)
        for folder in folders:
            if not (caltech_root / folder).is_dir():
                raise DataError(f"class folder {folder!r} not found under {caltech_root}")
        if len(set(folders)) != len(folders):
            raise ValueError(f"classes must be distinct folders, got {folders}")
    photos: dict[str, list[str]] = {}
    for folder in sorted(folders):
        names = sorted(
            f
            for f in os.listdir(caltech_root / folder)
            if f.lower().endswith(_PHOTO_EXTENSIONS) and not f.startswith(".")
        )
        if names:
            photos[folder] = names
        elif classes is not None:
            raise DataError(f"class folder {folder!r} under {caltech_root} holds no .jpg/.jpeg/.png image")
    if len(photos) < 2:
        raise DataError(f"caltech_root {caltech_root} must hold at least 2 class folders of images")
    return photos


def class_label(folder: str) -> str:
    """The label of a class folder: its path relative to the root with ``/`` replaced by ``-``."""
    return folder.replace("/", "-")


def _split_photos(
    photos: dict[str, list[str]], fractions: tuple[float, float, float], seed: int
) -> dict[str, dict[str, list[str]]]:
    """Split -> class -> photo names. Each class's photos are shuffled and cut by ``fractions`` (val, test
    rounded, at least one each); a twin class (``_TWIN_OF``) follows its original's split photo by photo."""
    rng = np.random.default_rng([seed, 1])
    out: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    where: dict[str, dict[str, str]] = {}  # class -> photo -> split
    for cls in photos:  # originals first, in sorted order
        if cls in _TWIN_OF and _TWIN_OF[cls] in photos:
            continue
        names = photos[cls]
        if len(names) < 3:
            raise DataError(f"class {cls!r} has {len(names)} photo(s); at least 3 are needed (one per split)")
        order = [names[i] for i in rng.permutation(len(names))]
        n_val = max(1, round(fractions[1] * len(names)))
        n_test = max(1, round(fractions[2] * len(names)))
        n_train = len(names) - n_val - n_test
        if n_train < 1:
            raise DataError(f"class {cls!r}: {len(names)} photos leave none for training")
        cuts = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        where[cls] = {p: s for s, ps in cuts.items() for p in ps}
    for twin, original in _TWIN_OF.items():
        if twin not in photos or original not in photos:
            continue
        extra = [p for p in photos[twin] if p not in where[original]]
        if extra:
            raise DataError(f"{twin} photos {extra[:3]} have no counterpart in {original}")
        where[twin] = {p: where[original][p] for p in photos[twin]}
    for cls in photos:
        for split in SPLITS:
            out[split][cls] = [p for p in photos[cls] if where[cls][p] == split]  # sorted names
    return out


def _photo_key(cls: str, photo: str) -> tuple[str, str]:
    return (_TWIN_OF.get(cls, cls), photo)


class _PhotoCycle:
    """Endless stream of one class's photos: every photo once (random order) before any repeats."""

    def __init__(self, names: list[str], rng: np.random.Generator) -> None:
        self._names, self._rng = names, rng
        self._queue: list[str] = []

    def next(self, avoid: set[str]) -> str:
        for _ in range(2 * len(self._names) + 1):
            if not self._queue:
                self._queue = [self._names[i] for i in self._rng.permutation(len(self._names))]
            name = self._queue.pop()
            if name not in avoid:
                return name
        raise DataError(f"no usable photo among {len(self._names)}")  # only if every photo is avoided


def zipf_probabilities(n: int, a: float) -> np.ndarray:
    """``p_r ∝ (r + 1)^-a`` for ranks ``r = 0..n-1`` (Zipf's law with exponent ``a``), float64 summing to 1."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -float(a)
    return p / p.sum()


def _plan_split(
    n_images: int,
    classes: list[str],
    probs: np.ndarray,
    photos: dict[str, list[str]],
    *,
    cells: int,
    min_tiles: int,
    max_tiles: int,
    rng: np.random.Generator,
) -> list[list[tuple[int, str, str]]]:
    """For each mosaic: ``[(cell, class, photo), ...]`` sorted by cell."""
    cycles = {c: _PhotoCycle(photos[c], rng) for c in classes}
    plans = []
    for _ in range(n_images):
        k = int(rng.integers(min_tiles, max_tiles + 1))
        picked = rng.choice(len(classes), size=k, replace=False, p=probs)
        where = rng.permutation(cells)[:k]
        used: set[tuple[str, str]] = set()
        tiles = []
        for cell, ci in zip(where.tolist(), picked.tolist(), strict=True):
            cls = classes[ci]
            avoid = {p for (owner, p) in used if owner == _TWIN_OF.get(cls, cls)}
            photo = cycles[cls].next(avoid)
            used.add(_photo_key(cls, photo))
            tiles.append((cell, cls, photo))
        plans.append(sorted(tiles))
    return plans


def _tile_image(path: Path, tile: int) -> Image.Image:
    """Centre square crop of the photo, resized to ``tile x tile`` (bicubic)."""
    img = load_image(path)
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((tile, tile), Image.Resampling.BICUBIC)


def _render(
    tiles: list[tuple[int, str, str]], caltech_root: Path, grid: int, tile: int, cache: dict
) -> Image.Image:
    canvas = Image.new("RGB", (grid * tile, grid * tile), (_FILLER_GREY,) * 3)
    for cell, cls, photo in tiles:
        key = (cls, photo)
        if key not in cache:
            cache[key] = _tile_image(caltech_root / cls / photo, tile)
        row, col = divmod(cell, grid)
        canvas.paste(cache[key], (col * tile, row * tile))
    return canvas


def build_mosaics(
    caltech_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_train: int = 1500,
    n_val: int = 400,
    n_test: int = 800,
    grid: int = 2,
    tile: int = 112,
    zipf_a: float = 1.0,
    min_tiles: int = 1,
    max_tiles: int | None = None,
    photo_split: tuple[float, float, float] = (0.5, 0.2, 0.3),
    hide_fraction: float = 0.0,
    classes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Build a long-tailed multi-label set of ``grid x grid`` photo mosaics.

    Each mosaic holds ``k ~ Uniform{min_tiles..max_tiles}`` tiles in random cells (the other cells grey,
    RGB 128), each tile the centre square crop of a photo resized to ``tile x tile``; the ``k`` classes are
    distinct, drawn without replacement with probabilities ``p_r ∝ (r+1)^-zipf_a`` over a random class order
    fixed by ``seed`` (rank 0 = head). Labels = the set of tile classes. Within a split a class's photos are
    all used once (random order) before any repeats; photos never cross splits.

    Writes under ``out_dir``: ``images/{split}/NNNNNN.jpg`` (JPEG quality 90, ``grid*tile`` pixels square),
    ``{split}.jsonl`` (``{"path": "images/train/000001.jpg", "labels": [...]}``, labels in class order),
    ``tiles/{split}.jsonl`` (provenance: cell, class and source photo of each tile), ``classes.txt`` (all
    classes, sorted) and ``build.json`` (the settings). The same settings give byte-identical manifests;
    images already written by a build with the same settings are reused, others are rewritten.

    Args:
        caltech_root: class-per-folder photos (``../shared/data/caltech101-dev``).
        out_dir: output folder.
        seed: fixes the photo split, class order and every draw.
        n_train, n_val, n_test: number of mosaics per split.
        grid: tiles per side. tile: tile side in pixels.
        zipf_a: Zipf exponent of the class distribution (0 = uniform).
        min_tiles, max_tiles: range of labels per image (``max_tiles`` default ``grid*grid``).
        photo_split: fractions of each class's photos for train/val/test.
        hide_fraction: if > 0, also write ``train_partial.jsonl`` with :func:`hide_annotations`
            (``"random_per_annotation"``, same ``seed``).
        classes: the class folders to use, relative to ``caltech_root`` and possibly nested (Omniglot's
            ``"Bengali/character01"``); default every top-level folder. A class's label is its folder with ``/``
            replaced by ``-`` (:func:`class_label`).

    Returns:
        ``{"train": ..., "val": ..., "test": ..., "classes": ..., ["train_partial": ...]}`` paths.
    """
    root = Path(caltech_root).resolve()
    out = Path(out_dir)
    seed = _check_count(seed, "seed", 0)
    grid = _check_count(grid, "grid", 1)
    tile = _check_count(tile, "tile", 4)
    cells = grid * grid
    max_tiles = cells if max_tiles is None else _check_count(max_tiles, "max_tiles", 1)
    min_tiles = _check_count(min_tiles, "min_tiles", 1)
    if not min_tiles <= max_tiles <= cells:
        raise ValueError(
            f"need 1 <= min_tiles ({min_tiles}) <= max_tiles ({max_tiles}) <= grid*grid ({cells})"
        )
    sizes = {
        "train": _check_count(n_train, "n_train", 1),
        "val": _check_count(n_val, "n_val", 0),
        "test": _check_count(n_test, "n_test", 0),
    }
    if not isinstance(zipf_a, (int, float)) or isinstance(zipf_a, bool) or not 0 <= zipf_a < 20:
        raise ValueError(f"zipf_a must be a number in [0, 20), got {zipf_a!r}")
    if len(photo_split) != 3 or min(photo_split) <= 0 or not math.isclose(sum(photo_split), 1.0):
        raise ValueError(f"photo_split must be 3 positive fractions summing to 1, got {photo_split!r}")
    fractions = (float(photo_split[0]), float(photo_split[1]), float(photo_split[2]))
    hide_fraction = _check_fraction(hide_fraction, "hide_fraction")

    photos = _list_photos(root, classes)
    classes = sorted(photos, key=class_label)  # class folders, in the order of their labels
    labels = {c: class_label(c) for c in classes}
    if max_tiles > len(classes):
        raise ValueError(f"max_tiles ({max_tiles}) exceeds the number of classes ({len(classes)})")
    split_photos = _split_photos(photos, fractions, seed)
    rank = np.random.default_rng([seed, 2]).permutation(len(classes))  # rank[i] = Zipf rank of classes[i]
    probs = zipf_probabilities(len(classes), zipf_a)[rank]

    settings = {
        "render_version": _RENDER_VERSION,
        "caltech_root": str(root),
        "photos_per_class": {c: len(v) for c, v in photos.items()},
        "seed": seed,
        "sizes": sizes,
        "grid": grid,
        "tile": tile,
        "zipf_a": float(zipf_a),
        "min_tiles": min_tiles,
        "max_tiles": max_tiles,
        "photo_split": list(fractions),
        "jpeg_quality": 90,
        "class_rank": {c: int(r) for c, r in zip(classes, rank, strict=True)},
    }
    if any(labels[c] != c for c in classes):
        settings["labels"] = labels
    build_file = out / _BUILD_FILE
    reuse = False
    if build_file.is_file():
        try:
            reuse = json.loads(build_file.read_text(encoding="utf-8")) == settings
        except json.JSONDecodeError:
            reuse = False
        if not reuse:
            build_file.unlink()  # images are rewritten; the file comes back once they all are

    paths: dict[str, Path] = {"classes": _write_classes(out / "classes.txt", [labels[c] for c in classes])}
    for i, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 3, i])
        plans = _plan_split(
            sizes[split],
            classes,
            probs,
            split_photos[split],
            cells=cells,
            min_tiles=min_tiles,
            max_tiles=max_tiles,
            rng=rng,
        )
        image_dir = out / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{j + 1:06d}.jpg" for j in range(len(plans))]
        if not reuse:  # drop stale images of an earlier, larger build
            keep = set(names)
            for f in image_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].jpg"):
                if f.name not in keep:
                    f.unlink()
        cache: dict[tuple[str, str], Image.Image] = {}
        rows, provenance = [], []
        for name, tiles in zip(names, plans, strict=True):
            target = image_dir / name
            if not (reuse and target.is_file()):
                fd, tmp = tempfile.mkstemp(dir=image_dir, prefix=f".{name}.", suffix=".jpg")
                os.close(fd)
                _render(tiles, root, grid, tile, cache).save(tmp, format="JPEG", quality=90)
                os.replace(tmp, target)
            rel = f"images/{split}/{name}"
            present = {cls for _, cls, _ in tiles}
            rows.append({"path": rel, "labels": [labels[c] for c in classes if c in present]})
            provenance.append(
                {
                    "path": rel,
                    "tiles": [
                        {"cell": c, "class": labels[cls], "photo": f"{cls}/{p}"} for c, cls, p in tiles
                    ],
                }
            )
        paths[split] = _write_jsonl(out / f"{split}.jsonl", rows)
        _write_jsonl(out / "tiles" / f"{split}.jsonl", provenance)
    _write_text_atomic(build_file, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    if hide_fraction > 0:
        paths["train_partial"] = out / "train_partial.jsonl"
        hide_annotations(
            paths["train"],
            paths["train_partial"],
            fraction=hide_fraction,
            seed=seed,
            classes=[labels[c] for c in classes],
        )
    return paths


# ------------------------------------------------------------------------------------- partial annotation
def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, {"path", "labels", "unknown"})`` of a JSON Lines manifest, with clear errors."""
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at {where}: {exc.msg}") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
                raise DataError(f"{where}: expected an object with a string field 'path'")
            if "labels" in obj:
                labels = obj["labels"] or []
            elif "label" in obj:
                labels = [obj["label"]] if obj["label"] else []
            else:
                labels = []
            unknown = obj.get("unknown") or []
            for field, value in (("labels", labels), ("unknown", unknown)):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise DataError(
                        f"{where}: field '{field}' must be a list of non-empty strings, got {value!r}"
                    )
            rows.append((n, {"path": obj["path"], "labels": list(labels), "unknown": list(unknown)}))
    if not rows:
        raise DataError(f"manifest {path} lists no images")
    return rows


def hide_annotations(
    manifest_in: str | os.PathLike[str],
    manifest_out: str | os.PathLike[str],
    *,
    fraction: float,
    seed: int,
    mode: str = "random_per_annotation",
    classes: Sequence[str] | None = None,
    negative_fraction: float | None = None,
) -> dict[str, int]:
    """Simulate partial annotation by moving annotations of a JSON Lines manifest to an ``"unknown"`` list.

    ``"random_per_annotation"`` (Ben-Baruch et al., CVPR 2022, Sec. 5; the official code calls it
    ``random_per_sample``): every (image, class) annotation, positive or negative, is hidden independently
    with probability ``fraction``. The negatives of an image are the ``classes`` it does not list, so both
    kinds are hidden at the same rate and being unknown says nothing about being present:
    ``P(present | unknown) = P(present)``.

    ``"positives_only"``: only positives are hidden (each with probability ``fraction``). This leaks: every
    unknown entry is a positive (``P(present | unknown) = 1``), so a method that treats unknowns as positives
    recovers the full labels; use it only as the "missing positives" contrast. With the same ``seed`` and
    ``fraction`` both modes hide exactly the same positives (one uniform draw per image and class), so the
    two outputs differ only by the hidden negatives.

    Input lines ``{"path", "labels"|"label", ["unknown"]}``; output lines ``{"path", "labels": [kept
    positives], "unknown": [hidden positives and negatives, plus those already unknown]}`` in ``classes``
    order. Relative paths are rewritten if ``manifest_out`` lives in another folder. Each image draws one
    uniform number per class from ``numpy.random.default_rng(seed)`` in file order, so the result depends only
    on the manifest, ``classes``, ``fraction`` and ``seed``.

    Args:
        manifest_in, manifest_out: JSON Lines files (must differ).
        fraction: probability of hiding each annotation, in [0, 1].
        seed: random seed.
        mode: one of :data:`HIDE_MODES`.
        classes: the full class list (required for ``"random_per_annotation"``; default for
            ``"positives_only"``: the sorted labels of the manifest).
        negative_fraction: ``"random_per_annotation"`` only: hide negatives with this probability instead of
            ``fraction`` -- e.g. 0.5 of the positives and 0.95 of the negatives imitates Open Images, where most
            classes are never checked for an image (unknown entries are then mostly, but not all, absent).

    Returns:
        Counts ``{"images", "positives", "negatives", "hidden_positives", "hidden_negatives"}``.

    Raises:
        DataError: a malformed manifest, or a label missing from ``classes`` (names file and line).
    """
    src, dst = Path(manifest_in), Path(manifest_out)
    fraction = _check_fraction(fraction, "fraction")
    if negative_fraction is not None:
        negative_fraction = _check_fraction(negative_fraction, "negative_fraction")
    seed = _check_count(seed, "seed", 0)
    if mode not in HIDE_MODES:
        raise ValueError(f"mode must be one of {HIDE_MODES}, got {mode!r}")
    if src.resolve() == dst.resolve():
        raise ValueError(f"manifest_out must differ from manifest_in ({src}): the full labels would be lost")
    rows = _read_rows(src)
    if classes is None:
        if mode == "random_per_annotation":
            raise ValueError(
                "classes is required for mode 'random_per_annotation': negatives are the other classes"
            )
        classes = sorted({c for _, r in rows for c in (*r["labels"], *r["unknown"])})
    if isinstance(classes, str) or len(set(classes)) != len(classes) or not classes:
        raise ValueError("classes must be a non-empty sequence of distinct class names")
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    moved = os.path.abspath(src.parent) != os.path.abspath(dst.parent)
    counts = dict.fromkeys(("images", "positives", "negatives", "hidden_positives", "hidden_negatives"), 0)
    out_rows = []
    for line, row in rows:
        for field in ("labels", "unknown"):
            bad = [c for c in row[field] if c not in index]
            if bad:
                raise DataError(f"{src}:{line}: label {bad[0]!r} (field '{field}') is not in classes")
        state = np.zeros(len(classes), dtype=np.int8)  # 1 positive, 0 negative, -1 unknown
        state[[index[c] for c in row["labels"]]] = 1
        state[[index[c] for c in row["unknown"]]] = -1
        draw = rng.random(len(classes))
        hide = draw < fraction
        if mode == "positives_only":
            hide &= state == 1
        elif negative_fraction is not None:
            hide = np.where(state == 1, hide, draw < negative_fraction)
        counts["images"] += 1
        counts["positives"] += int((state == 1).sum())
        counts["negatives"] += int((state == 0).sum())
        counts["hidden_positives"] += int((hide & (state == 1)).sum())
        counts["hidden_negatives"] += int((hide & (state == 0)).sum())
        state[hide] = -1
        path = row["path"]
        if moved and not os.path.isabs(path):
            path = Path(os.path.relpath(src.parent / path, dst.parent)).as_posix()
        out_rows.append(
            {
                "path": path,
                "labels": [classes[i] for i in np.flatnonzero(state == 1)],
                "unknown": [classes[i] for i in np.flatnonzero(state == -1)],
            }
        )
    _write_jsonl(dst, out_rows)
    return counts


# ------------------------------------------------------------------------------- genuine multi-label sets
def coco128_manifests(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    val_fraction: float = 0.3,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Image-level labels of ``coco128`` (the set of box classes; no boxes -> ``[]``), randomly split.

    Reads ``root/images`` + ``root/labels`` with :func:`frugalvision.data.read_yolo` and :data:`COCO80`.
    Writes ``out_dir/{train,val}.jsonl`` with absolute image paths (nothing copied) and ``classes.txt`` (all
    80 names; many have no image). ``round(val_fraction * N)`` images go to val.
    """
    base = Path(root) if root is not None else DATA / "coco128"
    seed = _check_count(seed, "seed", 0)
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    ds = read_yolo(base / "images", classes=COCO80, on_corrupt="fail")
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = round(val_fraction * len(ds))
    parts = {"train": sorted(order[n_val:].tolist()), "val": sorted(order[:n_val].tolist())}
    out = Path(out_dir)
    paths = {"classes": _write_classes(out / "classes.txt", COCO80)}
    for split, idx in parts.items():
        rows = [
            {"path": str(ds.paths[i].resolve()), "labels": [COCO80[c] for c in ds.samples[i].labels]}
            for i in idx
        ]
        paths[split] = _write_jsonl(out / f"{split}.jsonl", rows)
    return paths


def bccd_manifests(
    out_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = SPLITS,
) -> dict[str, Path]:
    """Image-level labels of ``bccd`` (the set of object names in each VOC XML), on its own splits.

    Split ``s`` lists the ids of ``root/ImageSets/Main/{s}.txt``; labels come from
    ``root/Annotations/{id}.xml``, images are ``root/JPEGImages/{id}.jpg`` (absolute paths, nothing copied).
    Writes ``out_dir/{split}.jsonl`` and ``classes.txt`` (sorted names found in the splits).
    """
    base = Path(root) if root is not None else DATA / "bccd"
    labels: dict[str, dict[str, list[str]]] = {}
    for split in splits:
        list_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"BCCD split list not found: {list_file}")
        ids = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels[split] = {}
        for image_id in ids:
            xml_file = base / "Annotations" / f"{image_id}.xml"
            image = base / "JPEGImages" / f"{image_id}.jpg"
            if not xml_file.is_file() or not image.is_file():
                raise DataError(f"{list_file}: id {image_id!r} has no {xml_file.name} or {image.name}")
            try:
                tree = ET.parse(xml_file)
            except ET.ParseError as exc:
                raise DataError(f"malformed XML {xml_file}: {exc}") from exc
            names = set()
            for obj in tree.getroot().iter("object"):
                name = (obj.findtext("name") or "").strip()
                if not name:
                    raise DataError(f"{xml_file}: an <object> has no <name>")
                names.add(name)
            labels[split][str(image.resolve())] = sorted(names)
    seen: dict[str, str] = {}
    for split, rows in labels.items():
        for path in rows:
            if path in seen:
                raise DataError(f"BCCD image {path} is in both split {seen[path]!r} and {split!r}")
            seen[path] = split
    classes = sorted({c for rows in labels.values() for names in rows.values() for c in names})
    out = Path(out_dir)
    paths = {"classes": _write_classes(out / "classes.txt", classes)}
    for split, rows in labels.items():
        paths[split] = _write_jsonl(
            out / f"{split}.jsonl", [{"path": p, "labels": v} for p, v in rows.items()]
        )
    return paths


# ------------------------------------------------------------------------------------------------ summary
def manifest_stats(
    manifest: str | os.PathLike[str], classes: Sequence[str], train_classes: set[str] | None = None
) -> dict[str, Any]:
    """Statistics of a manifest read back with :func:`frugalvision.data.read_manifest`.

    Returns ``images``, ``classes`` (with >= 1 positive) / ``n_classes``, ``labels_mean`` (positives per
    image), ``empty`` (images without a positive), ``pos_min/median/max`` (positives per class, over the
    classes present), ``unknown_frac`` (share of the N x C targets that are -1), ``present`` (names of the
    classes with a positive) and ``not_in_train`` (present classes missing from ``train_classes``).
    """
    ds = read_manifest(manifest, classes=list(classes))
    t = ds.target_matrix()
    pos = (t == 1).sum(axis=0)
    present = pos > 0
    counts = pos[present] if present.any() else np.zeros(1, dtype=pos.dtype)
    names = [c for c, p in zip(ds.classes, present, strict=True) if p]
    return {
        "images": len(ds),
        "classes": int(present.sum()),
        "n_classes": len(ds.classes),
        "labels_mean": float((t == 1).sum(axis=1).mean()),
        "empty": int(((t == 1).sum(axis=1) == 0).sum()),
        "pos_min": int(counts.min()),
        "pos_median": float(np.median(counts)),
        "pos_max": int(counts.max()),
        "unknown_frac": float((t == -1).mean()),
        "present": names,
        "not_in_train": [] if train_classes is None else [c for c in names if c not in train_classes],
    }


def format_table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table of :func:`manifest_stats` results, one row per split."""
    head = "| split | images | classes | labels/img | empty | pos/class min / median / max | unknown | not in train |"
    lines = [f"### {title}", "", head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for split, s in rows.items():
        missing = ", ".join(s["not_in_train"]) if s["not_in_train"] else "-"
        lines.append(
            f"| {split} | {s['images']} | {s['classes']}/{s['n_classes']} | {s['labels_mean']:.2f} | {s['empty']} | "
            f"{s['pos_min']} / {s['pos_median']:g} / {s['pos_max']} | {s['unknown_frac']:.3f} | {missing} |"
        )
    return "\n".join(lines)


def _unknown_positive_share(full: Path, partial: Path, classes: list[str]) -> float:
    """Share of the unknown entries of ``partial`` that are positives in ``full`` (the leak measure)."""
    t_full = read_manifest(full, classes=classes).target_matrix()
    t_part = read_manifest(partial, classes=classes).target_matrix()
    unknown = t_part == -1
    return float((t_full[unknown] == 1).mean()) if unknown.any() else float("nan")


def _report(title: str, paths: dict[str, Path], hide_extra: dict[str, Path] | None = None) -> Iterator[str]:
    classes = read_class_names(paths["classes"])
    stats: dict[str, dict[str, Any]] = {s: manifest_stats(paths[s], classes) for s in SPLITS if s in paths}
    train_classes = set(stats["train"]["present"])
    for s in stats:
        if s != "train":
            stats[s] = manifest_stats(paths[s], classes, train_classes)
    for name, p in (hide_extra or {}).items():
        stats[name] = manifest_stats(p, classes)
    yield format_table(title, stats)
    for name, p in (hide_extra or {}).items():
        share = _unknown_positive_share(paths["train"], p, classes)
        base = stats["train"]["labels_mean"] / len(classes)
        yield f"- {name}: {share:.3f} of unknown entries are positives (positive rate of train: {base:.3f})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--data", type=Path, default=DATA, help=f"shared data folder (default {DATA})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hide", type=float, default=0.0, help="fraction of annotations hidden in train sets"
    )
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-val", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=800)
    parser.add_argument("--grid", type=int, default=2)
    parser.add_argument("--tile", type=int, default=112)
    parser.add_argument("--zipf-a", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 0 <= args.hide <= 1:
        parser.error(f"--hide must be a fraction in [0, 1], got {args.hide}")
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (it ships beside the repository as ../shared/data)")
    try:
        _run(args)
    except (FrugalVisionError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")


def _run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    sets = {
        "mosaic": build_mosaics(
            args.data / "caltech101-dev",
            args.out / "mosaic",
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            grid=args.grid,
            tile=args.tile,
            zipf_a=args.zipf_a,
            hide_fraction=args.hide,
        ),
        "coco128": coco128_manifests(args.out / "coco128", seed=args.seed, root=args.data / "coco128"),
        "bccd": bccd_manifests(args.out / "bccd", root=args.data / "bccd"),
    }
    built = time.perf_counter() - t0
    print(f"data from {args.data}, written to {args.out} in {built:.1f} s\n")
    for name, paths in sets.items():
        extra: dict[str, Path] = {}
        if args.hide > 0:
            classes = read_class_names(paths["classes"])
            for mode, suffix in (("random_per_annotation", "partial"), ("positives_only", "posonly")):
                key = f"train_{suffix}"
                if mode == "random_per_annotation" and key in paths:
                    extra[key] = paths[key]
                    continue
                target = paths["train"].with_name(f"{key}.jsonl")
                hide_annotations(
                    paths["train"], target, fraction=args.hide, seed=args.seed, mode=mode, classes=classes
                )
                extra[key] = target
        grid_note = f", {args.grid}x{args.grid} mosaics of caltech101-dev" if name == "mosaic" else ""
        print("\n".join(_report(f"{name}{grid_note}", paths, extra)))
        print()
    n_images = sum(len(read_manifest(p)) for ps in sets.values() for k, p in ps.items() if k in SPLITS)
    print(
        f"{n_images} images in the train/val/test manifests: ~{n_images / 25:.0f} s of feature extraction at "
        f"25 img/s; this run took {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
