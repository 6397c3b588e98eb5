"""A second detection set, to confirm on data not tuned on what was chosen on BCCD: MNIST digits on CIFAR-10 scenes.

BCCD (blood cells: three classes, many similar round objects of a few sizes on one kind of background) is the set
the detector's options were tuned on. The only other real detection set offline, ``coco128``, has 96 images for
80 classes -- too few to tell two options apart. So the confirmation set is built from real pixels with exactly
known boxes, differing from BCCD in what matters to a detector:

* **backgrounds**: a CIFAR-10 test photo (``../shared/data/cifar10-test``), upscaled to ``size x size`` -- cluttered,
  blurry natural scenes of every colour instead of a smear of cells;
* **objects**: 1-6 handwritten MNIST digits (``../shared/data/mnist-test``), 10 classes, thin strokes, sides drawn
  log-uniformly in ``[min_side, max_side]`` (20-140 px at 320: small to large, a 7x range, BCCD's is ~4x), aspect
  jittered by up to 1.3x, each painted in a random colour that differs from the background under it; digits
  overlap little (IoU <= 0.1 with those already placed);
* **boxes**: the tight box of the digit's ink (alpha >= 0.5 after resizing), exact, not hand-drawn.

It is written once in PASCAL-VOC layout (``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/{train,val,test}.txt``)
so ``frugalvision train --task detection --data FOLDER`` and ``benchmarks/detection_table.py --data digits`` read
it like BCCD. Splits draw from disjoint halves of both source sets (digits and photos of ``test`` never appear
in ``train`` / ``val``). Deterministic for a seed.

Usage::

    python benchmarks/detection_sets.py --out runs/digit-scenes        # 240 / 60 / 120 images at 320 px
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import DATA, read_mnist

CLASSES = tuple(f"digit{d}" for d in range(10))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def compose(
    background: Image.Image,
    glyphs: list[np.ndarray],
    rng: np.random.Generator,
    size: int,
    min_side: float,
    max_side: float,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: ``(RGB uint8 (size, size, 3), [(glyph index, box xyxy in pixels)])``.

    A box is ``[x0, y0, x1, y1]`` with ``x0`` the first and ``x1 - 1`` the last column where the resized glyph's
    alpha is >= 0.5 (the same for rows). Glyphs that find no place overlapping the others by IoU <= 0.1 in 30
    draws are skipped, so a scene may carry fewer digits than asked (never none: the first always fits)."""
    canvas = np.asarray(background.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
    placed: list[tuple[int, np.ndarray]] = []
    for index, glyph in enumerate(glyphs):
        side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
        aspect = float(np.exp(rng.uniform(-np.log(1.3), np.log(1.3))))
        w, h = max(8, round(side * np.sqrt(aspect))), max(8, round(side / np.sqrt(aspect)))
        w, h = min(w, size), min(h, size)
        alpha = (
            np.asarray(Image.fromarray(glyph).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
        )
        rows, cols = np.nonzero(alpha >= 0.5)
        if rows.size == 0:
            continue
        for _ in range(30):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array(
                [x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1], np.float64
            )
            if all(_iou(box, other) <= 0.1 for _, other in placed):
                break
        else:
            continue
        under = canvas[y : y + h, x : x + w].reshape(-1, 3).mean(0)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - under).sum() < 200:  # visible against what lies under it
            colour = rng.uniform(0, 255, 3)
        patch = canvas[y : y + h, x : x + w]
        canvas[y : y + h, x : x + w] = patch * (1 - alpha[..., None]) + colour * alpha[..., None]
        placed.append((index, box))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), placed


def _voc_xml(name: str, size: int, objects: list[tuple[str, np.ndarray]]) -> str:
    """PASCAL-VOC annotation; VOC boxes are 1-based inclusive, so ``xmin = x0 + 1``, ``xmax = x1``."""
    parts = [f"<annotation><filename>{name}</filename>",
             f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"]  # fmt: skip
    for label, b in objects:
        parts.append(
            f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{int(b[0]) + 1}</xmin>"
            f"<ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>\n"


def digit_scenes(
    out: Path,
    *,
    data: Path = DATA,
    counts: tuple[int, int, int] = (240, 60, 120),
    size: int = 320,
    min_side: float | None = None,
    max_side: float | None = None,
    max_digits: int = 6,
    seed: int = 0,
) -> Path:
    """Write the set to ``out`` (PASCAL-VOC layout, see the module docstring) unless it is already there with the
    same parameters; returns ``out``.

    Args:
        counts: images in train / val / test.
        min_side, max_side: digit sides in pixels (default ``size / 16`` and ``size * 7 / 16``).
    """
    params = {"counts": list(counts), "size": size, "min_side": min_side, "max_side": max_side,
              "max_digits": max_digits, "seed": seed, "version": 1}  # fmt: skip
    marker = out / "digit_scenes.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return out
    lo, hi = min_side or size / 16, max_side or size * 7 / 16
    digits, labels = read_mnist(data / "mnist-test")
    photos = sorted(
        p for p in (data / "cifar10-test").rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    if not photos:
        raise SystemExit(f"no CIFAR-10 images under {data / 'cifar10-test'} (see ../shared/data/README.md)")
    rng = np.random.default_rng(seed)
    digit_order, photo_order = rng.permutation(len(digits)), rng.permutation(len(photos))
    # test draws from the second half of each source, train / val from the first
    pools = {
        "train": (digit_order[: len(digits) // 2], photo_order[: len(photos) // 2]),
        "test": (digit_order[len(digits) // 2 :], photo_order[len(photos) // 2 :]),
    }
    pools["val"] = pools["train"]
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        digit_pool, photo_pool = pools[split]
        split_rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        ids = []
        for i in range(count):
            chosen = split_rng.choice(digit_pool, int(split_rng.integers(1, max_digits + 1)), replace=False)
            background = Image.open(photos[int(split_rng.choice(photo_pool))])
            image, placed = compose(background, [digits[j] for j in chosen], split_rng, size, lo, hi)
            name = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / "JPEGImages" / f"{name}.jpg", quality=92)
            objects = [(CLASSES[int(labels[chosen[k]])], box) for k, box in placed]
            (out / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", size, objects))
            ids.append(name)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    marker.write_text(json.dumps(params))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digit-scenes"))
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder holding mnist-test/ and cifar10-test/"
    )
    parser.add_argument(
        "--counts", type=int, nargs=3, default=[240, 60, 120], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = digit_scenes(args.out, data=args.data, counts=tuple(args.counts), size=args.size, seed=args.seed)
    print(f"wrote {out} ({sum(args.counts)} images, PASCAL-VOC layout)")


if __name__ == "__main__":
    main()
