"""Near-duplicate threshold: precision / recall / F1 of the cosine threshold on real transformed copies.

Question: from which cosine similarity of two embeddings are two images copies of one photo? Calibrated on real
photos and the edits that make copies in practice, against distinct photos of the same class (the hard negatives:
same kind of object, same photographer's style, often the same background).

Originals (``../shared/data`` relative to the repository root, or ``--data``; sources in its README):

* ``caltech-tune``: ``--per-class`` photos of each class of a random half of the ``caltech101-dev`` classes
  (``Faces_easy`` left out: its photos are tighter crops of those in ``Faces``). The threshold is chosen here.
* ``caltech-confirm``: the same from the other half of the classes (never used to choose).
* ``coco128``: ``--coco`` random COCO-128 images (street, kitchen and animal scenes; negatives = every other photo).
* ``bccd``: ``--bccd`` random BCCD blood-smear images (every photo looks alike: the hardest negatives here).

Copies: one per original and transformation, with parameters drawn from a fixed seed:

========== =======================================================================================
half       resized to half its width and height (bicubic), saved losslessly (PNG)
jpeg       re-compressed as JPEG at quality 50-75
half+jpeg  half size, then JPEG at quality 50-75 (the copy the old default missed at cosine 0.761)
crop       a random 80-90 % crop of each side (anywhere in the image), PNG
hflip      mirrored left-right, PNG
jitter     brightness, contrast and saturation each x0.7-1.3 and hue shifted by up to 5 %, PNG
========== =======================================================================================

Embeddings: ``--model`` (default the offline EfficientNet-Lite0 of ``frugalvision curate duplicates``: pooled
ImageNet features, 1280-d), extracted as that command does (:func:`~frugalvision.foundation.open_images` +
:func:`~frugalvision.embeddings.extract_embeddings`) and cached under ``--work``.

Scores, per set and transformation: the pool is the originals plus their copies of that transformation; a
positive is (original, its copy), every other pair is a negative. :func:`frugalvision.curation.near_duplicates`
runs on the pool at each threshold: precision = true pairs found / pairs found, recall = true pairs found /
originals, F1. Row ``all``: the originals plus every copy, positives (original, copy) -- pairs of two copies of
one original count neither way. ``max neg`` is the highest cosine between distinct photos of one class (caltech)
or of the set (coco128, bccd); ``min pos`` the lowest between an original and its copy.

The threshold is chosen on ``caltech-tune``'s ``all`` pool: the one of highest F1 on a 0.01 grid (the middle of
the range when several tie).

Run:  python benchmarks/duplicates.py [--per-class 6] [--coco 48] [--bccd 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from frugalvision.curation import NEAR_DUPLICATE_THRESHOLD, near_duplicates
from frugalvision.data import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "tf_efficientnet_lite0.in1k_offline"
#: The default before it was calibrated here.
OLD_THRESHOLD = 0.85
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------ transformations
def _half(img: Image.Image) -> Image.Image:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    fw, fh = rng.uniform(0.8, 0.9, size=2)
    w, h = max(1, round(img.width * fw)), max(1, round(img.height * fh))
    left = int(rng.integers(0, img.width - w + 1))
    top = int(rng.integers(0, img.height - h + 1))
    return img.crop((left, top, left + w, top + h))


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    b, c, s = rng.uniform(0.7, 1.3, size=3)
    out = ImageEnhance.Brightness(img).enhance(b)
    out = ImageEnhance.Contrast(out).enhance(c)
    out = ImageEnhance.Color(out).enhance(s)
    shift = rng.uniform(-0.05, 0.05)
    hsv = np.asarray(out.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(shift * 256)) % 256  # PIL's hue channel is 0..255 for 0..360 degrees
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


@dataclass(frozen=True)
class Transform:
    """One way of making a copy: ``apply(img, rng)`` -> (image, JPEG quality or ``None`` for PNG)."""

    name: str
    apply: Callable[[Image.Image, np.random.Generator], tuple[Image.Image, int | None]]


def _quality(rng: np.random.Generator) -> int:
    return int(rng.integers(50, 76))


TRANSFORMS: tuple[Transform, ...] = (
    Transform("half", lambda img, rng: (_half(img), None)),
    Transform("jpeg", lambda img, rng: (img, _quality(rng))),
    Transform("half+jpeg", lambda img, rng: (_half(img), _quality(rng))),
    Transform("crop", lambda img, rng: (_crop(img, rng), None)),
    Transform("hflip", lambda img, rng: (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), None)),
    Transform("jitter", lambda img, rng: (_jitter(img, rng), None)),
)


@dataclass(frozen=True)
class Item:
    """An image of a pool: ``origin`` indexes the originals, ``transform`` is ``""`` for the original itself."""

    path: Path
    origin: int
    group: str
    transform: str


def make_copies(
    originals: Sequence[tuple[Path, str]],
    out_dir: Path,
    *,
    seed: int = 0,
    transforms: Sequence[Transform] = TRANSFORMS,
) -> list[Item]:
    """Copy each ``(photo, group)`` into ``out_dir`` (bytes unchanged) and write one transformed copy per
    transformation; parameters depend only on ``seed``, the original's position and the transformation."""
    listing = "".join(f"{src}\t{group}\n" for src, group in originals) + f"seed {seed}\n"
    record = out_dir / "originals.txt"
    if out_dir.exists() and (not record.is_file() or record.read_text(encoding="utf-8") != listing):
        shutil.rmtree(out_dir)  # made from other originals: its copies and embeddings would be stale
        shutil.rmtree(out_dir.parent / f"{out_dir.name}-store", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(listing, encoding="utf-8")
    items: list[Item] = []
    for i, (src, group) in enumerate(originals):
        base = out_dir / f"{i:05d}_orig{src.suffix.lower()}"
        if not base.is_file():
            shutil.copyfile(src, base)
        items.append(Item(base, i, group, ""))
        img = load_image(src)
        for k, t in enumerate(transforms):
            rng = np.random.default_rng([seed, i, k])
            copy, quality = t.apply(img, rng)
            name = t.name.replace("+", "_")
            target = out_dir / f"{i:05d}_{name}.{'jpg' if quality else 'png'}"
            if not target.is_file():
                tmp = target.with_name(f".{target.name}.tmp")
                if quality:
                    copy.convert("RGB").save(tmp, format="JPEG", quality=quality)
                else:
                    copy.save(tmp, format="PNG")
                tmp.replace(target)
            items.append(Item(target, i, group, t.name))
    return items


# ------------------------------------------------------------------------------------------------ scores
@dataclass(frozen=True)
class PairScores:
    """Pair counts at one threshold: found true pairs ``tp``, found other pairs ``fp``, missed true pairs ``fn``."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _pool(items: Sequence[Item], transform: str | None) -> np.ndarray:
    """Rows of the originals and of the copies of ``transform`` (``None``: every copy)."""
    return np.array([j for j, it in enumerate(items) if it.transform in ("", transform) or transform is None])


def _is_positive(a: Item, b: Item) -> bool | None:
    """True: an original and its copy; None: two copies of one original (not counted); False: a negative."""
    if a.origin != b.origin:
        return False
    return True if "" in (a.transform, b.transform) else None


def score_pairs(
    vectors: np.ndarray, items: Sequence[Item], threshold: float, transform: str | None = None
) -> PairScores:
    """Precision / recall counts of :func:`~frugalvision.curation.near_duplicates` at ``threshold`` on the pool of
    ``transform`` (see the module docstring)."""
    rows = _pool(items, transform)
    pool = [items[j] for j in rows]
    pairs = near_duplicates(vectors[rows], threshold)
    tp = fp = 0
    for a, b in zip(pairs.first.tolist(), pairs.second.tolist(), strict=True):
        kind = _is_positive(pool[a], pool[b])
        tp += kind is True
        fp += kind is False
    positives = sum(1 for it in pool if it.transform)
    return PairScores(tp, fp, positives - tp)


def similarity_extremes(
    vectors: np.ndarray, items: Sequence[Item], transform: str | None = None
) -> tuple[float, float]:
    """(lowest cosine of an original and its copy, highest cosine of two different originals' images in one
    group), on the pool of ``transform``; float64 from the normalised vectors."""
    rows = _pool(items, transform)
    x = vectors[rows].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = x @ x.T
    origin = np.array([items[j].origin for j in rows])
    group = np.array([items[j].group for j in rows])
    is_orig = np.array([items[j].transform == "" for j in rows])
    same = origin[:, None] == origin[None, :]
    pos = same & (is_orig[:, None] ^ is_orig[None, :])
    neg = ~same & (group[:, None] == group[None, :])
    return float(cos[pos].min()), float(cos[neg].max()) if neg.any() else float("nan")


def choose_threshold(
    vectors: np.ndarray, items: Sequence[Item], grid: Sequence[float] | None = None
) -> tuple[float, dict[float, PairScores]]:
    """The threshold of highest F1 on the ``all`` pool (the middle of the best range on ties) and every score."""
    grid = [round(t, 2) for t in np.arange(0.50, 0.991, 0.01)] if grid is None else list(grid)
    scores = {t: score_pairs(vectors, items, t) for t in grid}
    best = max(s.f1 for s in scores.values())
    ties = [t for t, s in scores.items() if s.f1 == best]
    return ties[len(ties) // 2], scores


# -------------------------------------------------------------------------------------------------- data
def caltech_halves(
    root: Path, per_class: int, seed: int
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``per_class`` random photos of each class, classes split at random into a tune and a confirm half."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "Faces_easy")
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(classes))
    tune = {classes[i] for i in order[: len(classes) // 2]}
    halves: tuple[list[tuple[Path, str]], list[tuple[Path, str]]] = ([], [])
    for c in classes:
        photos = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS)
        pick = rng.choice(len(photos), size=min(per_class, len(photos)), replace=False)
        halves[0 if c in tune else 1].extend((photos[j], c) for j in sorted(pick.tolist()))
    return halves


def flat_set(folder: Path, n: int | None, seed: int, group: str) -> list[tuple[Path, str]]:
    """``n`` random images of ``folder`` (all when ``None``), in one group."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS)
    if n is not None and n < len(photos):
        pick = np.random.default_rng([seed, 2]).choice(len(photos), size=n, replace=False)
        photos = [photos[j] for j in sorted(pick.tolist())]
    return [(p, group) for p in photos]


def embed(items: Sequence[Item], folder: Path, model: str, batch_size: int) -> np.ndarray:
    """Embeddings of ``items`` (all in ``folder``) as ``frugalvision curate duplicates`` computes them."""
    from frugalvision.embeddings import extract_embeddings
    from frugalvision.foundation import create_feature_model, open_images

    fm = create_feature_model(model, pretrained=True)
    store = extract_embeddings(
        fm, open_images(folder), folder.parent / f"{folder.name}-store", batch_size=batch_size, progress=False
    )
    row = {str(Path(p).resolve()): j for j, p in enumerate(store.paths)}
    return np.asarray(store.vectors, dtype=np.float32)[[row[str(it.path.resolve())] for it in items]]


# -------------------------------------------------------------------------------------------------- main
def _fmt(s: PairScores) -> str:
    return f"{s.precision:.3f} / {s.recall:.3f} / {s.f1:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/frugalvision-bench/duplicates"))
    parser.add_argument("--per-class", type=int, default=6, help="caltech originals per class")
    parser.add_argument("--coco", type=int, default=48, help="COCO-128 originals")
    parser.add_argument("--bccd", type=int, default=48, help="BCCD originals")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"this benchmark reads real images from {args.data}, which is missing")
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tune, confirm = caltech_halves(args.data / "caltech101-dev", args.per_class, args.seed)
    sources = {
        "caltech-tune": tune,
        "caltech-confirm": confirm,
        "coco128": flat_set(args.data / "coco128" / "images", args.coco, args.seed, "coco128"),
        "bccd": flat_set(args.data / "bccd" / "JPEGImages", args.bccd, args.seed, "bccd"),
    }
    sets: dict[str, tuple[list[Item], np.ndarray]] = {}
    for name, originals in sources.items():
        folder = args.work / args.model.replace("/", "_").replace(":", "_") / name
        items = make_copies(originals, folder, seed=args.seed)
        start = time.perf_counter()
        vectors = embed(items, folder, args.model, args.batch_size)
        sets[name] = (items, vectors)
        print(
            f"  {name}: {len(originals)} originals, {len(items)} images, embedded in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    tune_items, tune_vectors = sets["caltech-tune"]
    chosen, sweep = choose_threshold(tune_vectors, tune_items)
    print(f"\nmodel {args.model}; threshold of best F1 on caltech-tune (all copies): {chosen:.2f}")
    every5 = [f"{t:.2f}: {s.f1:.3f}" for t, s in sweep.items() if round(t * 100) % 5 == 0]
    print("F1 on caltech-tune by threshold: " + ", ".join(every5))
    print(f"default in the library: {NEAR_DUPLICATE_THRESHOLD}; before: {OLD_THRESHOLD}\n")
    header = [
        "set",
        "copy",
        "pairs",
        f"P / R / F1 @ {OLD_THRESHOLD} (old)",
        f"P / R / F1 @ {NEAR_DUPLICATE_THRESHOLD} (new)",
        "min pos",
        "max neg",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, (items, vectors) in sets.items():
        for t in [*(t.name for t in TRANSFORMS), None]:
            old = score_pairs(vectors, items, OLD_THRESHOLD, t)
            new = score_pairs(vectors, items, NEAR_DUPLICATE_THRESHOLD, t)
            lo, hi = similarity_extremes(vectors, items, t)
            cells = [name, t or "all", str(old.tp + old.fn), _fmt(old), _fmt(new), f"{lo:.3f}", f"{hi:.3f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
