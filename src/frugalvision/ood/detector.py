"""An OOD detector: fitted on in-distribution outputs, computes every score, saved as JSON + npz.

Scores (higher = more in-distribution; see :mod:`frugalvision.ood.scores` for the papers and equations):

============== ============ ======================================================================
name           reads        fitted state
============== ============ ======================================================================
msp            logits       -
max_logit      logits       -
energy         logits       temperature T (setting)
feature_norm   features     - (L1 norm, Park et al. 2023)
nan            features     - (negative-aware norm, Park et al. 2023, Eq. 10)
block_norm     block norms  the block: NormRatio-selected (Yu et al. 2023) or the penultimate one
knn            features     L2-normalised ID features; k (setting, "auto": :func:`auto_knn_k`)
mahalanobis    features     class means + shared precision (labels, else predicted classes), Ledoit-Wolf
                            shrinkage by default
============== ============ ======================================================================

On disk (a folder, written atomically): ``detector.json`` (settings, fitted scalars, thresholds, free-form
``info`` such as the backbone spec) and ``arrays.npz`` (kNN reference, Mahalanobis means/precision; read with
``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from frugalvision._checks import check_choice, check_positive
from frugalvision._fs import atomic_replace_dir, read_json
from frugalvision.errors import StoreError
from frugalvision.ood import scores as S

__all__ = ["SCORES", "OODDetector", "auto_knn_k"]

#: Every score the detector knows, and what it reads.
SCORES: dict[str, str] = {
    "msp": "logits",
    "max_logit": "logits",
    "energy": "logits",
    "feature_norm": "features",
    "nan": "features",
    "block_norm": "block_norms",
    "knn": "features",
    "mahalanobis": "features",
}
FORMAT = "frugalvision-ood-detector"
FORMAT_VERSION = 1
_JSON, _NPZ = "detector.json", "arrays.npz"


def auto_knn_k(count: int, images_per_class: float | None = None) -> int:
    """The kNN score's ``k`` for a reference set of ``count`` images (``k = "auto"`` in :class:`OODDetector`).

    ``k = clip(round(m / 3), 1, 50)`` with ``m`` the median number of images per class; without labels
    ``k = clip(round(N / 1000), 1, 50)``; never more than ``N - 1``.

    Why: the k-th neighbour of an ID image should still be an image of its own class. Once ``k`` nears the
    number of fit images of a class, the k-th neighbour of every image lies in another class, ID images look
    as far from the fit set as OOD ones, and the score collapses (fitted on 280 Caltech photos of 20 classes,
    ``k = 50`` separated held-out photos from Omniglot drawings with AUROC 0.87, ``k = 5`` with 0.98).
    Chosen on Caltech-101 classes vs Omniglot with 3-20 fit images per class, where AUROC peaks between
    ``m / 3`` and ``m / 2`` and falls off a cliff from ``k ≈ 3m / 4``; ``m / 3`` keeps a margin for classes smaller
    than the median. Confirmed on CIFAR-10 vs MNIST / Omniglot and on other Caltech classes (see
    ``benchmarks/ood.py``). The cap 50 and the unlabeled rule ``N / 1000`` are Sun et al.'s setting
    (ICML 2022: ``k = 50`` for CIFAR-10's 50,000 training images, ``k`` grown in proportion to the reference set).

    Args:
        count: reference (fit) images ``N``.
        images_per_class: median images per class of the fit labels, or ``None`` when unlabeled.

    Returns:
        ``k`` in ``[1, max(N - 1, 1)]``.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    if images_per_class is not None and not images_per_class > 0:
        raise ValueError(f"images_per_class must be > 0 or None, got {images_per_class!r}")
    k = int(np.floor((images_per_class / 3 if images_per_class is not None else count / 1000) + 0.5))
    k = min(k, 50)
    return int(max(1, min(k, count - 1)))


def _as_array(x: object, name: str, rows: int | None = None) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D), got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but the other inputs have {rows}; they must match")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _images_per_class(labels: object, n: int) -> float | None:
    """Median images per class of the labelled rows (``-1`` = unlabeled), ``None`` without labels."""
    if labels is None:
        return None
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be (N,) = ({n},) integer class ids, got shape {y.shape} dtype {y.dtype}"
        )
    y = y[y >= 0]
    if y.size == 0:
        return None
    return float(np.median(np.unique(y, return_counts=True)[1]))


def _rows(*arrays: object) -> int:
    n = {
        int(np.asarray(a).shape[0]) if not isinstance(a, torch.Tensor) else int(a.shape[0])
        for a in arrays
        if a is not None
    }
    if len(n) > 1:
        raise ValueError(
            f"features, logits and block_norms must have the same number of rows, got {sorted(n)}"
        )
    if not n:
        raise ValueError("give at least one of features, logits, block_norms")
    return n.pop()


@dataclass
class OODDetector:
    """Fit on ID outputs, then score new images (higher = more in-distribution).

    Args:
        scores: names from :data:`SCORES` to compute, or ``None`` for every score the fit inputs allow.
        k: neighbour rank of the kNN score, or ``"auto"`` (default) for :func:`auto_knn_k` of the fit set's size
            and images per class (Sun et al.'s 50 suits CIFAR-10's 50k training images, not a few hundred
            photos). Clipped to the reference size minus one at fit time; the value used is ``state["k"]``.
        temperature: ``T`` of the energy score (and of MSP; 1 in both papers).
        block: block index for ``block_norm`` (negative counts from the deepest); ``None`` = NormRatio
            selection when pseudo-OOD norms are given at fit time, else the penultimate block (``-2``).
        shrinkage: Mahalanobis covariance shrinkage towards a scaled identity
            (:func:`~frugalvision.ood.fit_class_gaussians`): ``"auto"`` (default) = the Ledoit-Wolf estimate
            (:func:`~frugalvision.ood.ledoit_wolf_shrinkage`, large with few images for the feature dimension,
            near 0 with many), 0 = Lee et al.'s plain estimate; the value used is ``state["shrinkage"]``.
        tpr: fraction of the fit (ID) data each per-score threshold keeps (``scores >= threshold``).
        info: free-form JSON-able description saved with the detector (e.g. the backbone spec).

    Example:
        >>> det = OODDetector().fit(features=f_id, logits=l_id, labels=y_id)  # doctest: +SKIP
        >>> det.score(features=f_new, logits=l_new)["energy"]  # doctest: +SKIP
    """

    scores: Sequence[str] | None = None
    k: int | Literal["auto"] = "auto"
    temperature: float = 1.0
    block: int | None = None
    shrinkage: float | Literal["auto"] = "auto"
    tpr: float = 0.95
    info: dict[str, Any] = field(default_factory=dict)
    # fitted state
    fitted_scores: list[str] = field(default_factory=list, init=False)
    thresholds: dict[str, float] = field(default_factory=dict, init=False)
    state: dict[str, Any] = field(default_factory=dict, init=False)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scores is not None:
            if isinstance(self.scores, str):
                raise TypeError("scores must be a sequence of score names, not one str; wrap it in a list")
            for s in self.scores:
                check_choice(s, tuple(SCORES), "score")
        if self.k != "auto" and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be an int >= 1 or 'auto', got {self.k!r}")
        check_positive(self.temperature, "temperature")
        if isinstance(self.shrinkage, str) or isinstance(self.shrinkage, bool):
            if self.shrinkage != "auto":
                raise ValueError(f"shrinkage must be a number in [0, 1] or 'auto', got {self.shrinkage!r}")
        elif not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1] or be 'auto', got {self.shrinkage}")
        if not 0.0 < self.tpr <= 1.0:
            raise ValueError(f"tpr must lie in (0, 1], got {self.tpr}")

    # ------------------------------------------------------------------------------------------------ fit
    def fit(
        self,
        features: np.ndarray | torch.Tensor | None = None,
        logits: np.ndarray | torch.Tensor | None = None,
        labels: np.ndarray | torch.Tensor | None = None,
        block_norms: np.ndarray | torch.Tensor | None = None,
        pseudo_ood_block_norms: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> OODDetector:
        """Fit on ID data (the rows of all inputs describe the same images).

        Args:
            features: ``(N, D)`` penultimate features.
            logits: ``(N, C)`` classifier logits.
            labels: ``(N,)`` class ids for Mahalanobis (``-1`` = unlabeled, ignored); without labels, the
                argmax of ``logits`` is used, without logits a single Gaussian.
            block_norms: ``(N, B)`` block FeatureNorms.
            pseudo_ood_block_norms: ``(id_norms, jigsaw_norms)`` (:func:`~frugalvision.ood.jigsaw_block_norms`)
                to choose the block by NormRatio.

        Returns:
            ``self``.
        """
        n = _rows(features, logits, block_norms)
        f = _as_array(features, "features", n)
        lg = _as_array(logits, "logits", n)
        bn = _as_array(block_norms, "block_norms", n)
        available = {"features": f is not None, "logits": lg is not None, "block_norms": bn is not None}
        if self.scores is None:
            wanted = [s for s, needs in SCORES.items() if available[needs]]
        else:
            missing = [f"{s} (needs {SCORES[s]})" for s in self.scores if not available[SCORES[s]]]
            if missing:
                raise ValueError(f"cannot fit {', '.join(missing)}: pass those inputs to fit")
            wanted = list(dict.fromkeys(self.scores))
        self.state, self.arrays = {}, {}
        if "knn" in wanted and f is not None:
            if f.shape[0] < 2:
                raise ValueError("the kNN score needs at least 2 ID samples")
            if self.k == "auto":
                self.state["k"] = auto_knn_k(f.shape[0], _images_per_class(labels, n))
            else:
                self.state["k"] = min(self.k, f.shape[0] - 1)
            self.arrays["knn_reference"] = torch.nn.functional.normalize(torch.from_numpy(f), dim=1).numpy()
        if "mahalanobis" in wanted and f is not None:
            self._fit_mahalanobis(f, lg, labels, n)
        if "block_norm" in wanted and bn is not None:
            self._fit_block(bn, pseudo_ood_block_norms)
        self.fitted_scores = wanted
        fit_scores = self._compute(f, lg, bn, on_fit_data=True)
        self.thresholds = {
            name: float(np.quantile(v, 1.0 - self.tpr, method="lower")) for name, v in fit_scores.items()
        }
        self.state["fit_count"] = n
        return self

    def _fit_mahalanobis(self, f: np.ndarray, lg: np.ndarray | None, labels: object, n: int) -> None:
        if labels is not None:
            y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"labels must be (N,) = ({n},) integer class ids, got shape {y.shape} dtype {y.dtype}"
                )
            keep = y >= 0
            source = "labels"
        elif lg is not None:
            y, keep, source = lg.argmax(axis=1), np.ones(n, bool), "predicted"
        else:
            y, keep, source = np.zeros(n, np.int64), np.ones(n, bool), "none"
        if keep.sum() < 2:
            raise ValueError("Mahalanobis needs at least 2 labelled ID samples")
        _, dense = np.unique(y[keep], return_inverse=True)  # class ids -> 0..C-1 (only classes present)
        x, y_dense = torch.from_numpy(f[keep]), torch.from_numpy(dense.astype(np.int64))
        shrinkage = S.ledoit_wolf_shrinkage(x, y_dense) if self.shrinkage == "auto" else float(self.shrinkage)
        means, precision = S.fit_class_gaussians(x, y_dense, shrinkage=shrinkage)
        self.state["shrinkage"] = shrinkage
        self.arrays["maha_means"] = means.numpy()
        self.arrays["maha_precision"] = precision.numpy()
        self.state["mahalanobis_classes"] = source

    def _fit_block(self, bn: np.ndarray, pseudo: tuple[np.ndarray, np.ndarray] | None) -> None:
        blocks = bn.shape[1]
        if pseudo is not None:
            ratios = S.norm_ratio(torch.as_tensor(pseudo[0]), torch.as_tensor(pseudo[1]))
            if ratios.shape[0] != blocks:
                raise ValueError(f"pseudo-OOD norms have {ratios.shape[0]} blocks, the block norms {blocks}")
            self.state["norm_ratios"] = [float(r) for r in ratios]
        if self.block is not None:
            if not -blocks <= self.block < blocks:
                raise ValueError(f"block must lie in [-{blocks}, {blocks}), got {self.block}")
            chosen = self.block % blocks
        elif pseudo is not None:
            chosen = int(np.argmax(self.state["norm_ratios"]))
        else:
            chosen = max(blocks - 2, 0)  # the penultimate block (Yu et al.'s observation)
        self.state["block"] = chosen
        self.state["blocks"] = blocks

    # ---------------------------------------------------------------------------------------------- score
    def _compute(
        self, f: np.ndarray | None, lg: np.ndarray | None, bn: np.ndarray | None, on_fit_data: bool = False
    ) -> dict[str, np.ndarray]:
        out: dict[str, torch.Tensor] = {}
        t = self.temperature
        for name in self.fitted_scores:
            needs = {"features": f, "logits": lg, "block_norms": bn}[SCORES[name]]
            if needs is None:
                continue
            x = torch.from_numpy(needs)
            if name == "msp":
                out[name] = S.msp(x, t)
            elif name == "max_logit":
                out[name] = S.max_logit(x)
            elif name == "energy":
                out[name] = S.energy(x, t)
            elif name == "feature_norm":
                out[name] = S.feature_norm(x, p=1)
            elif name == "nan":
                out[name] = S.negative_aware_norm(x)
            elif name == "block_norm":
                if x.shape[1] != self.state["blocks"]:
                    raise ValueError(
                        f"block_norms has {x.shape[1]} blocks; the detector was fitted on {self.state['blocks']}"
                    )
                out[name] = x[:, self.state["block"]].float()
            elif name == "knn":
                ref = self.arrays["knn_reference"]
                out[name] = S.knn_score(x, ref, self.state["k"], exclude_self=on_fit_data)
            elif name == "mahalanobis":
                out[name] = S.mahalanobis_score(
                    x,
                    torch.from_numpy(self.arrays["maha_means"]),
                    torch.from_numpy(self.arrays["maha_precision"]),
                )
        return {k: v.double().numpy() for k, v in out.items()}

    def score(
        self,
        features: np.ndarray | torch.Tensor | None = None,
        logits: np.ndarray | torch.Tensor | None = None,
        block_norms: np.ndarray | torch.Tensor | None = None,
    ) -> dict[str, np.ndarray]:
        """Every fitted score whose input is given: ``{name: (N,) float64}``, higher = more ID."""
        if not self.fitted_scores:
            raise ValueError("the detector is not fitted; call fit() or OODDetector.load()")
        n = _rows(features, logits, block_norms)
        f = _as_array(features, "features", n)
        lg = _as_array(logits, "logits", n)
        bn = _as_array(block_norms, "block_norms", n)
        if (
            f is not None
            and "knn_reference" in self.arrays
            and f.shape[1] != self.arrays["knn_reference"].shape[1]
        ):
            raise ValueError(
                f"features have {f.shape[1]} dimensions; the detector was fitted on {self.arrays['knn_reference'].shape[1]}"
            )
        return self._compute(f, lg, bn)

    def is_ood(self, scores: dict[str, np.ndarray], name: str) -> np.ndarray:
        """``scores[name] < threshold[name]``: the flag at the threshold keeping ``tpr`` of the fit data."""
        check_choice(name, tuple(self.thresholds), "score")
        return np.asarray(scores[name]) < self.thresholds[name]

    # -------------------------------------------------------------------------------------------- disk
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``detector.json`` and ``arrays.npz`` to ``directory`` (replaced atomically)."""
        if not self.fitted_scores:
            raise ValueError("nothing to save: the detector is not fitted")
        target = Path(directory)
        if target.exists() and (
            not target.is_dir() or (any(target.iterdir()) and not (target / _JSON).is_file())
        ):
            raise StoreError(f"refusing to overwrite {target}: it exists and does not hold a saved detector")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "settings": {
                "scores": self.fitted_scores,
                "k": self.k,
                "temperature": self.temperature,
                "block": self.block,
                "shrinkage": self.shrinkage,
                "tpr": self.tpr,
            },
            "state": self.state,
            "thresholds": self.thresholds,
            "info": self.info,
        }
        try:
            (tmp / _JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            arrays: dict[str, Any] = dict(self.arrays)
            np.savez(tmp / _NPZ, **arrays)
            atomic_replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> OODDetector:
        """Read a detector written by :meth:`save`; raises :class:`~frugalvision.errors.StoreError` naming the problem."""
        d = Path(directory)
        for name in (_JSON, _NPZ):
            if not (d / name).is_file():
                raise StoreError(
                    f"{d} is not a saved OOD detector: {name} is missing (create one with `frugalvision ood fit`)"
                )
        meta = read_json(d / _JSON)
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{d / _JSON} is not an OOD detector of format {FORMAT} v{FORMAT_VERSION} "
                f"(got {meta.get('format')!r} v{meta.get('format_version')!r})"
            )
        s = meta["settings"]
        det = cls(
            scores=s["scores"],
            k=s["k"],
            temperature=s["temperature"],
            block=s["block"],
            shrinkage=s.get("shrinkage", 0.0),  # files written before "auto" used 0
            tpr=s["tpr"],
            info=meta.get("info", {}),
        )
        det.fitted_scores = list(s["scores"])
        det.state = dict(meta["state"])
        det.thresholds = {k: float(v) for k, v in meta["thresholds"].items()}
        with np.load(d / _NPZ, allow_pickle=False) as z:
            det.arrays = {k: z[k] for k in z.files}
        needed = {"knn": ["knn_reference"], "mahalanobis": ["maha_means", "maha_precision"]}
        for score, keys in needed.items():
            if score in det.fitted_scores and not all(k in det.arrays for k in keys):
                raise StoreError(f"{d / _NPZ} lacks the arrays of the {score!r} score ({keys})")
        return det
