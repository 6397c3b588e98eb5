"""Out-of-distribution scores as pure functions on tensors.

**Convention: higher score = more in-distribution (ID).** Distances and energies are negated accordingly, so
every score can be thresholded the same way ("flag as OOD when the score is below t") and fed to
:mod:`frugalvision.ood.metrics` with ID as the positive class.

Inputs: ``logits (N, C)`` of a classifier, ``features (N, D)`` of its penultimate layer (pooled pre-logits),
``feature_map (N, C, H, W)`` of an intermediate block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
import sklearn.covariance
import torch
import torch.nn.functional as F

from frugalvision._checks import check_class_labels, check_embedding_batch, check_positive, check_tensor
from frugalvision.index.neighbours import KNN_CANDIDATES, KNN_PCA_DIM, approximate_knn, knn_recall
from frugalvision.metrics import knn

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "KNN_APPROXIMATE_FROM",
    "block_feature_norm",
    "energy",
    "feature_norm",
    "fit_class_gaussians",
    "jigsaw",
    "knn_score",
    "knn_score_report",
    "ledoit_wolf_shrinkage",
    "mahalanobis_score",
    "max_logit",
    "msp",
    "negative_aware_norm",
    "norm_ratio",
]


def _logits(x: object) -> torch.Tensor:
    return check_embedding_batch(x, "logits")


def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability ``max_c softmax(f(x)/T)_c``.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural
    Networks", ICLR 2017 (https://arxiv.org/abs/1610.02136). ``T = 1`` is the paper's baseline.

    Args:
        logits: ``(N, C)``.
        temperature: ``T > 0``.

    Returns:
        ``(N,)`` in ``[1/C, 1]``.
    """
    check_positive(temperature, "temperature")
    return (_logits(logits).float() / temperature).softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit ``max_c f_c(x)``.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022
    (https://arxiv.org/abs/1911.11132), the MaxLogit score.

    Returns:
        ``(N,)``.
    """
    return _logits(logits).float().amax(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``-E(x; f) = T · log Σ_c exp(f_c(x) / T)``.

    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020
    (https://arxiv.org/abs/2010.03759), §2: the free energy of a classifier is ``E(x; f) = -T log Σ_i e^{f_i(x)/T}``
    (the softmax denominator in log space); ID samples have lower
    energy, so ``-E`` is returned (higher = ID). The paper uses ``T = 1``.

    Returns:
        ``(N,)``, between ``max_logit`` and ``max_logit + T log C``.
    """
    check_positive(temperature, "temperature")
    return temperature * torch.logsumexp(_logits(logits).float() / temperature, dim=1)


def feature_norm(features: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """Feature norm ``‖a‖_p`` of penultimate-layer features ``a``.

    Park, Chai, Yoon & Teoh, "Understanding the Feature Norm for Out-of-Distribution Detection", ICCV 2023
    (https://arxiv.org/abs/2310.05316): Theorem 3 / Eq. 4 show that ``‖a^(L)‖_1`` of the last hidden layer
    equals the maximum logit of a classifier hidden in that layer; §4 uses ``‖a^(L)‖_1`` as the detection score.
    ``p = 1`` follows the paper; ``p = 2`` gives the Euclidean norm.

    Args:
        features: ``(N, D)``.
        p: order of the norm, ``>= 1``.

    Returns:
        ``(N,)``.
    """
    x = check_embedding_batch(features, "features")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    return torch.linalg.vector_norm(x.float(), ord=p, dim=1)


def negative_aware_norm(features: torch.Tensor) -> torch.Tensor:
    """Negative-aware norm (NAN) ``‖a‖_1 · ‖a‖_0^{-1}``: feature norm times activation sparsity.

    Park et al., ICCV 2023 (https://arxiv.org/abs/2310.05316), Eq. 10, with ``‖a‖_0 = d - |{i : a_i <= 0}|``
    (Eq. 9), the number of active (positive) units: among vectors of equal ``‖a‖_1``, the sparser one (more
    deactivated units, as on ID data) scores higher. A vector with no active unit scores 0 (``‖a‖_0`` is
    clamped to 1). The paper applies it to ReLU features of the last hidden layer.

    Args:
        features: ``(N, D)``.

    Returns:
        ``(N,)``.
    """
    x = check_embedding_batch(features, "features").float()
    active = (x > 0).sum(dim=1).clamp_min(1)
    return x.abs().sum(dim=1) / active


def block_feature_norm(feature_map: torch.Tensor) -> torch.Tensor:
    """FeatureNorm of a block's activation map: mean over channels of the spatial L2 norm of ``ReLU(map)``.

    Yu, Shin, Lee, Jun & Lee, "Block Selection Method for Using Feature Norm in Out-of-Distribution
    Detection", CVPR 2023 (https://arxiv.org/abs/2212.02295); as in the authors' code
    (``gist-ailab/block-selection-for-OOD-detection``, ``normratio.py``):
    ``FeatureNorm(x) = (1/C) Σ_c ‖ReLU(A_c(x))‖_2`` over the ``H × W`` positions of channel ``c``.

    Args:
        feature_map: ``(N, C, H, W)``.

    Returns:
        ``(N,)``.
    """
    x = check_tensor(feature_map, "feature_map")
    if x.ndim != 4:
        raise ValueError(f"feature_map must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return torch.linalg.vector_norm(F.relu(x.float()), ord=2, dim=(2, 3)).mean(dim=1)


def jigsaw(images: torch.Tensor, grid: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Jigsaw puzzles of images: each image cut into ``grid × grid`` tiles put back in a random order.

    The pseudo-OOD of Yu et al. (CVPR 2023, §3.2) for choosing a block by NormRatio: same colours and textures
    as the ID images, broken global structure. Rows/columns beyond a multiple of ``grid`` stay in place.

    Args:
        images: ``(N, C, H, W)``.
        grid: tiles per side, ``>= 2``.
        generator: random source (one permutation per image).

    Returns:
        ``(N, C, H, W)``.
    """
    x = check_tensor(images, "images")
    if x.ndim != 4:
        raise ValueError(f"images must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    n, c, h, w = x.shape
    th, tw = h // grid, w // grid
    if th == 0 or tw == 0:
        raise ValueError(f"images of {h}x{w} pixels cannot be cut into {grid}x{grid} tiles")
    out = x.clone()
    core = x[:, :, : th * grid, : tw * grid]
    tiles = (
        core.reshape(n, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, th, tw)
    )
    perms = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(n)]).to(x.device)
    shuffled = tiles[torch.arange(n, device=x.device)[:, None], perms]
    out[:, :, : th * grid, : tw * grid] = (
        shuffled.reshape(n, grid, grid, c, th, tw)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(n, c, th * grid, tw * grid)
    )
    return out


def norm_ratio(id_norms: torch.Tensor, pseudo_ood_norms: torch.Tensor) -> torch.Tensor:
    """NormRatio of each block: mean over images of ``FeatureNorm(x) / FeatureNorm(jigsaw(x))``.

    Yu et al., CVPR 2023: the block with the largest ratio separates ID from (pseudo-)OOD best and is the one
    used for detection. Pairs follow the authors' ``normratio.py`` (image ``i`` against its own puzzle).

    Args:
        id_norms: ``(N, B)`` block feature norms of ID images.
        pseudo_ood_norms: ``(N, B)`` the same for their jigsaw puzzles.

    Returns:
        ``(B,)``.
    """
    a = check_tensor(id_norms, "id_norms")
    b = check_tensor(pseudo_ood_norms, "pseudo_ood_norms")
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(
            f"id_norms and pseudo_ood_norms must be non-empty (N, B) of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return (a.double() / b.double().clamp_min(1e-12)).mean(dim=0)


#: :func:`knn_score` searches approximately from this many reference rows on (``method="auto"``).
KNN_APPROXIMATE_FROM = 200_000


class KnnSearchOptions(TypedDict, total=False):
    """The search options of :func:`knn_score`, passed on to :func:`knn_score_report` (their defaults are
    there)."""

    exclude_self: bool
    method: Literal["auto", "exact", "approximate"]
    pca_dim: int | None
    nprobe: int | None
    candidates: int


def knn_score(
    features: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    k: int = 50,
    **options: Unpack[KnnSearchOptions],
) -> torch.Tensor:
    """Negative distance to the ``k``-th nearest ID neighbour, on L2-normalised features.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022
    (https://arxiv.org/abs/2204.06507), §3: ``S(z) = -‖z* - z*_(k)‖_2`` with ``z* = z / ‖z‖_2`` and ``z*_(k)`` the
    k-th nearest normalised training feature. The paper uses ``k = 50`` on CIFAR-10 (50,000 training images) and
    ``k = 1000`` on ImageNet; the best ``k`` grows with the size of the reference set. Exact search with
    :func:`frugalvision.metrics.knn` (faiss on the CPU); from :data:`KNN_APPROXIMATE_FROM` reference rows on
    (``method="auto"``), approximate search: ``candidates * k`` neighbours from a PCA-reduced IVF index
    (:func:`frugalvision.index.neighbours.approximate_knn`), re-ranked by their exact cosine, so the score is
    exact whenever the true ``k`` nearest are among the candidates. :func:`knn_score_report` also measures how
    often they are.

    Args:
        features: ``(N, D)`` query features.
        reference: ``(M, D)`` ID features (normalised here; approximate: read in chunks, a ``numpy.memmap`` works).
        k: neighbour rank, ``1 <= k <= M`` (``M - 1`` with ``exclude_self``).
        options: as :func:`knn_score_report`, which holds their defaults:
            ``exclude_self``: ``features`` *is* ``reference`` (row i = row i): skip each row's own match;
            ``method``: ``"exact"``, ``"approximate"`` or ``"auto"`` (see above);
            ``pca_dim``, ``nprobe``, ``candidates``: approximate search: PCA dimensions (``None``: none; default
            256), IVF lists scanned per query (``None``: a seventh of the lists,
            :func:`frugalvision.index.neighbours.knn_nprobe`), candidates per wanted neighbour (default 4).

    Returns:
        ``(N,)`` in ``[-2, 0]``.
    """
    return knn_score_report(features, reference, k, recall_sample=0, **options)[0]


def knn_score_report(
    features: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    k: int = 50,
    *,
    exclude_self: bool = False,
    method: Literal["auto", "exact", "approximate"] = "auto",
    pca_dim: int | None = KNN_PCA_DIM,
    nprobe: int | None = None,
    candidates: int = KNN_CANDIDATES,
    recall_sample: int = 200,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """:func:`knn_score` and, for an approximate search, how it compares with exact search on a sample.

    Returns:
        ``(scores (N,), report)``; ``report`` is ``None`` for an exact search (or ``recall_sample=0``), else
        ``{"recall_at_k", "kth_similarity_max_error", "sample_queries"}`` from a brute-force scan for
        ``recall_sample`` random queries (:func:`frugalvision.index.neighbours.knn_recall`).
    """
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approximate', got {method!r}")
    size = int(reference.shape[0]) if hasattr(reference, "shape") and len(reference.shape) == 2 else 0
    if method == "exact" or (method == "auto" and size < KNN_APPROXIMATE_FROM):
        sims, _ = knn(features, reference, k, metric="cosine", exclude_self=exclude_self)
        return _knn_distance(sims[:, -1].double()), None
    q, ref = _as_array(features, "features"), _as_array(reference, "reference")
    if q.shape[1] != ref.shape[1]:
        raise ValueError(
            f"features have dimension {q.shape[1]} but reference has {ref.shape[1]}; they must match"
        )
    most = ref.shape[0] - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
        raise ValueError(
            f"k must be an int in [1, {most}] (reference rows{' - 1' if exclude_self else ''}), got {k!r}"
        )
    if exclude_self and q.shape[0] != ref.shape[0]:
        raise ValueError("exclude_self needs features to be the reference itself (the same rows)")
    sims_np, ids = approximate_knn(
        q, ref, k, exclude_self=exclude_self, candidates=candidates, pca_dim=pca_dim, nprobe=nprobe, seed=seed
    )
    report = None
    if recall_sample > 0:
        report = knn_recall(
            q, ref, k, ids, sims_np, exclude_self=exclude_self, sample=recall_sample, seed=seed
        )
    kth = torch.from_numpy(np.maximum(sims_np[:, -1], -1.0)).double()
    return _knn_distance(kth), report


def _knn_distance(kth: torch.Tensor) -> torch.Tensor:
    """``-‖u - v‖ = -sqrt(2 - 2 cos)`` of unit vectors from the k-th cosine."""
    return -torch.sqrt((2.0 - 2.0 * kth).clamp_min(0.0)).float()


def _as_array(x: object, name: str) -> Any:
    """A numpy array (a memory map stays one) or tensor as a 2-D numpy array, without copying where possible."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array or tensor, got {type(x).__name__}")
    return x


def _class_centred(features: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means (C, D), centred (N, D))`` in float64, each row minus its class mean."""
    x = check_embedding_batch(features, "features").double()
    y = check_class_labels(labels, x.shape[0])
    if x.shape[0] < 2:
        raise ValueError(f"at least 2 samples are needed to estimate a covariance, got {x.shape[0]}")
    num_classes = int(y.max()) + 1
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()[:10]
        raise ValueError(
            f"labels must use every class id in [0, {num_classes}); no sample has class {missing}"
        )
    means = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts[:, None]
    return means, x - means[y]


def ledoit_wolf_shrinkage(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity of the tied (class-centred) covariance, in ``[0, 1]``.

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
    Analysis 2004: the ``s`` minimising the expected Frobenius error of ``(1 - s) Σ + s (tr Σ / D) I``,
    estimated from the data (scikit-learn's ``sklearn.covariance.ledoit_wolf_shrinkage`` on the rows minus
    their class means, ``assume_centered=True``). It is large when the samples are few for the dimension and
    tends to 0 as they grow, so it needs no tuning.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` integer class ids in ``[0, C)``.
    """
    _, centred = _class_centred(features, labels)
    return float(sklearn.covariance.ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))


def fit_class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, *, shrinkage: float | str = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means and the shared precision matrix of Lee et al.'s Mahalanobis detector.

    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018 (https://arxiv.org/abs/1807.03888), Eq. 1:
    ``μ_c = (1/N_c) Σ_{i: y_i = c} f(x_i)`` and ``Σ = (1/N) Σ_c Σ_{i: y_i = c} (f(x_i) - μ_c)(f(x_i) - μ_c)^T``
    (tied covariance). With ``shrinkage = s > 0`` the covariance is shrunk towards a scaled identity,
    ``(1 - s) Σ + s (tr Σ / D) I``; ``"auto"`` (:class:`~frugalvision.ood.OODDetector`'s default) takes ``s``
    from the Ledoit-Wolf estimate
    (:func:`ledoit_wolf_shrinkage`), which makes the covariance equal to scikit-learn's ``LedoitWolf`` of the
    class-centred rows. Without shrinkage and with fewer samples than dimensions ``Σ`` is singular, its
    pseudo-inverse ignores every direction the ID data do not span, and OOD features that differ from ID only
    there look in-distribution (fitted on 280 photos of 20 classes, 1280-d features, ``s = 0`` separated held-out
    photos from Omniglot drawings with AUROC 0.58, Ledoit-Wolf's ``s = 0.56`` with 0.76; see ``benchmarks/ood.py``,
    which also shows a small set where ``s = 0`` does slightly better). The precision is the
    pseudo-inverse (the inverse, by Cholesky, when shrunk), computed in float64.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` integer class ids in ``[0, C)``; every class id up to the largest must occur.
        shrinkage: ``s`` in ``[0, 1]``, or ``"auto"`` for Ledoit-Wolf; 0 (the default) is the paper's estimator.

    Returns:
        ``(means (C, D), precision (D, D))``, float64.
    """
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
    elif not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1] or be 'auto', got {shrinkage}")
    means, centred = _class_centred(features, labels)
    if isinstance(shrinkage, str):  # "auto"
        shrinkage = float(sklearn.covariance.ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    cov = centred.T @ centred / centred.shape[0]
    if shrinkage:
        scale = torch.diagonal(cov).mean()
        cov = (1.0 - shrinkage) * cov + shrinkage * scale * torch.eye(cov.shape[0], dtype=cov.dtype)
        chol, info = torch.linalg.cholesky_ex(cov)  # positive definite now: a Cholesky inverse is ~5x faster
        if int(info) == 0:
            return means, torch.cholesky_inverse(chol)
    return means, torch.linalg.pinv(cov, hermitian=True)


def mahalanobis_score(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Negative Mahalanobis distance to the closest class Gaussian, ``-min_c (x-μ_c)^T Σ^{-1} (x-μ_c)``.

    Lee et al., NeurIPS 2018, Eq. 2 (the confidence score ``M(x)``, without input pre-processing or feature
    ensembles). Computed in float64 as ``x^T P x - 2 x^T P μ_c + μ_c^T P μ_c``.

    Args:
        features: ``(N, D)``.
        means: ``(C, D)`` class means.
        precision: ``(D, D)`` shared precision matrix (:func:`fit_class_gaussians`).

    Returns:
        ``(N,)``, ``<= 0`` up to rounding.
    """
    x = check_embedding_batch(features, "features").double()
    mu = check_embedding_batch(means, "means", dim=x.shape[1]).double()
    prec = check_tensor(precision, "precision").double()
    if prec.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"precision must be (D, D) = ({x.shape[1]}, {x.shape[1]}), got {tuple(prec.shape)}")
    xp = x @ prec
    dist = (xp * x).sum(1, keepdim=True) - 2.0 * xp @ mu.T + ((mu @ prec) * mu).sum(1)[None, :]
    return -dist.amin(dim=1).float()
