"""Where benchmarks find ``../shared/data`` and readers for its raw formats that more than one benchmark needs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

#: ``../shared/data`` beside the repository (absent in a user's clone; see its README for sources and licences).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` from the IDX gzip files of ``folder`` (``mnist-test/``).

    Raises:
        SystemExit: a file is missing or is not an IDX file of the expected kind (names the file).
    """
    arrays = []
    for name, magic, dims in (("t10k-images-idx3-ubyte.gz", 2051, 3), ("t10k-labels-idx1-ubyte.gz", 2049, 1)):
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"MNIST file not found: {path} (see ../shared/data/README.md)")
        with gzip.open(path, "rb") as f:
            raw = f.read()
        header = np.frombuffer(raw[: 4 * (1 + dims)], dtype=">i4")
        if header[0] != magic:
            raise SystemExit(
                f"{path}: not an IDX file of {dims} dimension(s) (magic {header[0]}, expected {magic})"
            )
        arrays.append(np.frombuffer(raw[4 * (1 + dims) :], dtype=np.uint8).reshape(*header[1:]))
    images, labels = arrays
    return images, labels.astype(np.int64)
