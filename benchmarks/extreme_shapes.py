"""Peak memory of decoding + preprocessing tiny, very long images (1 x N PNGs of under 150 bytes).

Usage::

    python benchmarks/extreme_shapes.py                 # both paths, 1x2000, 1x6000, 1x30000 and a normal photo
    python benchmarks/extreme_shapes.py --cap-gb 8      # address-space cap of each child process (default 8 GiB)

Each case runs in a fresh child process under ``RLIMIT_AS`` (so an unbounded allocation fails there instead of
taking the machine down) and reports the child's peak resident memory (``ru_maxrss`` from ``os.wait4``) and what
happened. Two paths, with EfficientNet-Lite0's preprocessing (input 224, crop_pct 0.875: shorter side to 256):

* ``runtime``: the torch-free :class:`~frugalvision.runtime.Preprocessor` (what ``frugalvision serve`` runs);
* ``embed``: :func:`~frugalvision.embeddings.extract_embeddings` with the offline backbone over a data set of one
  normal photo and the test image (``on_corrupt="skip"``, no worker processes).

The "normal" row (a 640x480 photo) is the baseline each path costs anyway; the ratio column divides by it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from PIL import Image

LITE0 = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "crop_mode": "center",
}

_CHILD = r"""
import json, sys, tempfile, warnings
path, normal, which = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.loads(sys.argv[4])
try:
    if which == "runtime":
        from frugalvision.runtime import Preprocessor
        out = Preprocessor(config)(path)
        result = f"ok {tuple(out.shape)}"
    else:
        from frugalvision.data import ImageDataset, Sample
        from frugalvision.embeddings import extract_embeddings
        from frugalvision.models import create_backbone
        backbone = create_backbone("tf_efficientnet_lite0.in1k_offline")
        ds = ImageDataset([Sample(normal), Sample(path)], [], on_corrupt="skip")
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = extract_embeddings(backbone, ds, tmp, num_workers=0, progress=False)
        skipped = store.info["skipped"]
        result = f"{len(store)} embedded, {len(skipped)} skipped" + (f": {skipped[0]['error']}" if skipped else "")
except MemoryError as e:
    result = f"MemoryError {e}"
except Exception as e:
    result = f"{type(e).__name__}: {e}"
print(json.dumps(result))
"""


def run_child(image: Path, normal: Path, which: str, cap_bytes: int) -> tuple[float, str]:
    """Run one case in a child under ``RLIMIT_AS = cap_bytes``; ``(peak RSS in MiB, outcome)``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: cap the address space, then exec Python with stdout to the pipe
        os.close(read_fd)
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
        os.dup2(write_fd, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.environ["OMP_NUM_THREADS"] = "1"
        args = [sys.executable, "-c", _CHILD, str(image), str(normal), which, json.dumps(LITE0)]
        os.execv(sys.executable, args)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    peak_mb = usage.ru_maxrss / 1024
    lines = text.strip().splitlines()
    if not lines:
        return peak_mb, f"no output (wait status {status})"
    return peak_mb, json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-gb", type=float, default=8.0, help="address-space cap of each child, GiB")
    parser.add_argument("--paths", default="runtime,embed", help="comma-separated: runtime, embed")
    args = parser.parse_args()
    cap = int(args.cap_gb * 2**30)
    with tempfile.TemporaryDirectory(prefix="frugalvision-shapes-") as tmp:
        root = Path(tmp)
        normal = root / "normal.jpg"
        Image.radial_gradient("L").resize((640, 480)).convert("RGB").save(normal, quality=90)
        cases = {"normal 640x480": normal}
        for n in (2000, 6000, 30000):
            p = root / f"long-1x{n}.png"
            Image.new("L", (1, n)).save(p)
            cases[f"1x{n} ({p.stat().st_size} B)"] = p
        print(
            f"cap {args.cap_gb:g} GiB of address space per child; peak RSS from wait4; Python {sys.version.split()[0]}"
        )
        print(f"{'path':8s} {'image':22s} {'peak RSS MiB':>12s} {'x normal':>9s}  outcome")
        for which in args.paths.split(","):
            base = None
            for label, path in cases.items():
                peak, outcome = run_child(path, normal, which, cap)
                base = base or peak
                print(f"{which:8s} {label:22s} {peak:12.0f} {peak / base:9.2f}  {outcome[:150]}")


if __name__ == "__main__":
    main()
