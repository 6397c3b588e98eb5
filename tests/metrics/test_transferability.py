"""LogME against a naive float64 transcription of the paper, the Gaussian marginal likelihood, closed forms and
invariances."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from frugalvision.metrics import logme
from frugalvision.metrics import transferability as tr


def naive_logme(
    features: np.ndarray, labels: np.ndarray, tol: float = 1e-12, max_iter: int = 100_000
) -> float:
    """You et al. (ICML 2021), eq. 2 and Algorithm 1, written directly with the D x D matrix A (no SVD).

    A = αI + βFᵀF, m = βA⁻¹Fᵀy, γ = Σ βσᵢ/(α + βσᵢ) = D − α tr(A⁻¹); α ← γ/mᵀm, β ← (n − γ)/‖Fm − y‖²;
    L = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖Fm − y‖² − α/2 mᵀm − 1/2 log|A|; LogME = mean_k L_k / n.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    ftf = f.T @ f
    eye = np.eye(d)
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        fty = f.T @ y
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a_inv = np.linalg.inv(alpha * eye + beta * ftf)
            m = beta * a_inv @ fty
            gamma = d - alpha * np.trace(a_inv)
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            converged = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        else:
            raise AssertionError("reference did not converge")
        scores.append(naive_evidence(f, y, alpha, beta) / n)
    return float(np.mean(scores))


def naive_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Eq. 2 at given (α, β), with the D x D matrix A = αI + βFᵀF."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    sign, logdet = np.linalg.slogdet(a)
    assert sign > 0
    return float(
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * np.sum((f @ m - y) ** 2)
        - alpha / 2 * (m @ m)
        - 0.5 * logdet
    )


def clusters(n_per_class: int, k: int, d: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: class c has mean ``separation * e_c`` (plus a shared offset) and unit noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per_class)
    means = np.zeros((k, d))
    means[np.arange(k), np.arange(k)] = separation
    feats = means[labels] + 0.7 + rng.normal(size=(len(labels), d))
    return feats, labels


@pytest.mark.parametrize(
    ("n_per_class", "k", "d", "separation", "seed"),
    [
        (30, 3, 6, 2.0, 0),  # n > D
        (12, 4, 5, 0.5, 1),  # weak signal
        (5, 2, 40, 1.0, 2),  # n < D: the dual path on F Fᵀ
        (40, 5, 5, 3.0, 3),  # D = K
    ],
)
def test_equals_naive_reference(n_per_class: int, k: int, d: int, separation: float, seed: int) -> None:
    feats, labels = clusters(n_per_class, k, d, separation, seed)
    assert logme(feats, labels) == pytest.approx(naive_logme(feats, labels), abs=1e-8, rel=1e-8)


def test_rank_deficient_features_equal_reference() -> None:
    feats, labels = clusters(20, 3, 4, 2.0, 4)
    feats = np.hstack([feats, feats[:, :1] * 2.0, np.zeros((len(labels), 2))])  # rank 4 of 7 columns
    assert logme(feats, labels) == pytest.approx(naive_logme(feats, labels), abs=1e-8, rel=1e-8)


def test_is_the_maximum_of_the_gaussian_marginal_likelihood() -> None:
    """The evidence is log N(y; 0, β⁻¹I + α⁻¹FFᵀ); its maximum over (α, β), found by scipy, is LogME."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    feats, labels = clusters(15, 3, 4, 1.5, 5)
    n = len(labels)
    gram = feats @ feats.T
    best = []
    for c in range(3):
        y = (labels == c).astype(np.float64)

        def neg_log_evidence(p: np.ndarray, y: np.ndarray = y) -> float:
            cov = np.exp(-p[1]) * np.eye(n) + np.exp(-p[0]) * gram
            return -float(multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y))

        fit = minimize(
            neg_log_evidence, x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}
        )
        best.append(-fit.fun / n)
    assert logme(feats, labels) == pytest.approx(np.mean(best), abs=1e-7)


def test_noise_free_boundary_when_features_interpolate_the_labels() -> None:
    """n < D and well separated: the evidence keeps rising as β → ∞ (the features interpolate the labels and
    F Fᵀ is non-singular). LogME is then the finite supremum log N(y; 0, F Fᵀ / α*), α* = n / yᵀ(F Fᵀ)⁻¹y."""
    from scipy.stats import multivariate_normal

    feats, labels = clusters(5, 3, 40, 10.0, 0)
    n = len(labels)
    gram = feats @ feats.T
    sups = []
    for c in range(3):
        y = (labels == c).astype(np.float64)
        alpha = n / float(y @ np.linalg.solve(gram, y))
        sup = float(multivariate_normal(mean=np.zeros(n), cov=gram / alpha).logpdf(y))
        # no finite (α, β) beats it, and the evidence comes as close as we like
        grid = [naive_evidence(feats, y, alpha * a, b) for a in (0.5, 1.0, 2.0) for b in (1.0, 1e2, 1e4, 1e6)]
        assert max(grid) < sup
        assert naive_evidence(feats, y, alpha, 1e8) == pytest.approx(sup, abs=1e-4)
        sups.append(sup / n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scale in (1e-6, 1.0, 1e6):
            assert logme(feats * scale, labels) == pytest.approx(np.mean(sups), abs=1e-8)


def test_separable_scores_higher_than_shuffled_labels() -> None:
    feats, labels = clusters(30, 4, 8, 6.0, 6)
    shuffled = np.random.default_rng(7).permutation(labels)
    assert logme(feats, labels) > logme(feats, shuffled) + 0.1
    # and more separation scores higher, with the same noise
    weaker, _ = clusters(30, 4, 8, 2.0, 6)
    assert logme(feats, labels) > logme(weaker, labels)


def test_features_orthogonal_to_every_target_give_the_noise_only_closed_form() -> None:
    """If Fᵀy_k = 0 the best model is m = 0 (α → ∞): L_k / n = ½ log(n / n_k) − ½ − ½ log 2π."""
    labels = np.array([0] * 4 + [1] * 6 + [2] * 8)
    signs = np.tile([1.0, -1.0], 9)  # every class has as many +1 as -1 rows
    feats = np.stack([signs, signs * np.repeat([1.0, 2.0, 3.0], [4, 6, 8])], axis=1)
    assert np.allclose(feats.T @ (labels[:, None] == np.arange(3)), 0)
    n, counts = 18, np.array([4, 6, 8])
    expected = np.mean(0.5 * np.log(n / counts) - 0.5 - 0.5 * math.log(2 * math.pi))
    assert logme(feats, labels) == pytest.approx(expected, abs=1e-10)


def test_invariances() -> None:
    feats, labels = clusters(25, 3, 6, 1.5, 8)
    base = logme(feats, labels)
    rng = np.random.default_rng(9)
    order = rng.permutation(len(labels))
    assert logme(feats[order], labels[order]) == pytest.approx(base, abs=1e-9)  # order of samples
    names = np.array(["cat", "cup", "rocket"])[(labels + 1) % 3]
    assert logme(feats, names) == pytest.approx(base, abs=1e-9)  # naming of classes
    for scale in (1e-9, 1e-3, 1e3, 1e9):
        assert logme(feats * scale, labels) == pytest.approx(base, abs=1e-9)  # feature scale (α absorbs it)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert logme(feats @ q, labels) == pytest.approx(base, abs=1e-9)  # rotation (isotropic prior)
    zeros = np.hstack([feats, np.zeros((len(labels), 3))])
    assert logme(zeros, labels) == pytest.approx(
        base, abs=1e-9
    )  # dead features add D/2 log α − 1/2 log α^k = 0
    assert logme(feats.astype(np.float32), labels) == pytest.approx(
        naive_logme(feats.astype(np.float32), labels), abs=1e-8
    )


def test_chunked_gram_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    feats, labels = clusters(20, 3, 5, 1.0, 10)
    whole = logme(feats, labels)
    monkeypatch.setattr(tr, "_CHUNK_ROWS", 7)
    assert logme(feats, labels) == pytest.approx(whole, abs=1e-12)


def test_labels_linear_in_features_are_refused() -> None:
    labels = np.repeat([0, 1, 2], 5)
    with pytest.raises(ValueError, match=r"no maximum for class 0.*exact linear function"):
        logme(np.eye(3)[labels], labels)  # features = one-hot labels
    with pytest.raises(ValueError, match="no maximum"):  # duplicated rows, N <= D
        rows = np.random.default_rng(0).normal(size=(4, 10))
        logme(np.vstack([rows, rows]), np.array([0, 1, 1, 0] * 2))


@pytest.mark.parametrize(
    ("features", "labels", "error", "match"),
    [
        (np.zeros(6), [0, 1, 0, 1, 0, 1], ValueError, r"features must be 2-D \(N, D\), got shape \(6,\)"),
        (np.ones((6, 2)), [0, 1, 0], ValueError, "labels has 3 entries but features has 6 rows"),
        (np.ones((6, 2)), np.zeros((6, 1), int), ValueError, r"labels must be 1-D \(N,\)"),
        (np.ones((6, 2)), [0.0, 1.0] * 3, TypeError, "class ids"),
        (np.ones((6, 2)), [3] * 6, ValueError, "at least 2 classes"),
        (np.zeros((6, 2)), [0, 1] * 3, ValueError, "all zero"),
        (np.array([[1.0, np.nan]] * 6), [0, 1] * 3, ValueError, "row 0, column 1"),
        (np.ones((1, 2)), [0], ValueError, "at least 2 rows"),
        (np.array([["a", "b"]] * 6), [0, 1] * 3, TypeError, "real numbers"),
    ],
)
def test_bad_input(features: object, labels: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        logme(features, labels)
