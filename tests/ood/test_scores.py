"""OOD scores, each on a case whose answer is known and against its formula in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from frugalvision.ood import (
    block_feature_norm,
    energy,
    feature_norm,
    fit_class_gaussians,
    jigsaw,
    knn_score,
    ledoit_wolf_shrinkage,
    mahalanobis_score,
    max_logit,
    msp,
    negative_aware_norm,
    norm_ratio,
)


def test_logit_scores_prefer_one_dominant_class_to_flat_logits() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0]])
    s_msp, s_max, s_energy = msp(logits), max_logit(logits), energy(logits)
    for s in (s_msp, s_max, s_energy):
        assert s[0] > s[2] > s[1]  # dominant > mild > flat
    # closed forms: flat logits -> MSP 1/C and energy T log C
    torch.testing.assert_close(s_msp[1], torch.tensor(0.25))
    torch.testing.assert_close(s_energy[1], torch.tensor(math.log(4)))
    torch.testing.assert_close(energy(logits[1:2], temperature=3.0), torch.tensor([3 * math.log(4)]))
    # against the formulas in float64
    d = logits.double()
    for t in (0.5, 1.0, 2.0):
        torch.testing.assert_close(
            energy(logits, t).double(), t * torch.log(torch.exp(d / t).sum(1)), atol=1e-5, rtol=1e-6
        )
        torch.testing.assert_close(
            msp(logits, t).double(), (torch.exp(d / t) / torch.exp(d / t).sum(1, keepdim=True)).amax(1)
        )
    torch.testing.assert_close(s_max, torch.tensor([10.0, 0.0, 2.0]))


def test_energy_is_stable_for_large_logits() -> None:
    big = torch.tensor([[1000.0, -1000.0], [-1000.0, -1000.0]])
    out = energy(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([1000.0, -1000.0 + math.log(2)]))
    assert torch.isfinite(msp(big)).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        energy(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        energy(big, temperature=0.0)


def test_feature_norm_and_negative_aware_norm() -> None:
    a = torch.tensor(
        [[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.0, 0.5]]
    )
    torch.testing.assert_close(feature_norm(a), torch.tensor([3.0, 3.0, 0.0, 3.5]))
    torch.testing.assert_close(feature_norm(a, p=2), a.norm(dim=1))
    # Park et al. Eq. 9-10: ||a||_1 / #(a_i > 0); equal L1 norms, the sparser activation scores higher
    nan = negative_aware_norm(a)
    torch.testing.assert_close(nan, torch.tensor([3.0, 1.0, 0.0, 3.5 / 2]))
    assert nan[0] > nan[1]
    with pytest.raises(ValueError, match="p must be >= 1"):
        feature_norm(a, p=0.5)


def test_block_feature_norm_is_the_channel_mean_of_spatial_l2_norms_of_relu() -> None:
    fmap = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.zeros(2, dtype=torch.float64)
    for n in range(2):
        expected[n] = (
            sum(math.sqrt(sum(max(float(v), 0.0) ** 2 for v in fmap[n, c].flatten())) for c in range(3)) / 3
        )
    torch.testing.assert_close(block_feature_norm(fmap).double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
        block_feature_norm(fmap[0])


def test_jigsaw_shuffles_whole_tiles() -> None:
    x = torch.arange(2 * 1 * 9 * 10, dtype=torch.float32).reshape(
        2, 1, 9, 10
    )  # 9x10: 1 spare column at grid 3
    out = jigsaw(x, grid=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    torch.testing.assert_close(out[..., 9:], x[..., 9:])  # beyond the grid: untouched

    def tiles(t: torch.Tensor) -> list[tuple[float, ...]]:
        return sorted(
            tuple(t[0, r : r + 3, c : c + 3].flatten().tolist()) for r in (0, 3, 6) for c in (0, 3, 6)
        )

    for i in range(2):  # every tile of the puzzle is a tile of the image, each used once
        assert tiles(out[i]) == tiles(x[i])
    again = jigsaw(x, grid=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)
    with pytest.raises(ValueError, match="cannot be cut"):
        jigsaw(x, grid=20)


def test_norm_ratio_is_the_mean_paired_ratio() -> None:
    a = torch.tensor([[2.0, 1.0], [4.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    torch.testing.assert_close(norm_ratio(a, b), torch.tensor([3.0, 0.75], dtype=torch.float64))


def test_knn_distance_on_two_clusters() -> None:
    rng = np.random.default_rng(0)
    reference = np.concatenate(
        [rng.normal([5, 0, 0], 0.1, (60, 3)), rng.normal([0, 5, 0], 0.1, (60, 3))]
    ).astype(np.float32)
    near = rng.normal([5, 0, 0], 0.1, (5, 3)).astype(np.float32)
    far = rng.normal([0, 0, 5], 0.1, (5, 3)).astype(np.float32)  # a third direction: OOD
    s_near, s_far = knn_score(near, reference, k=10), knn_score(far, reference, k=10)
    assert s_near.min() > s_far.max()
    assert float(s_far.max()) < -1.3  # ~ -sqrt(2): orthogonal unit vectors
    # against the definition, brute force in float64: minus the k-th smallest distance of normalised vectors
    q = near / np.linalg.norm(near, axis=1, keepdims=True)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    dist = np.sort(np.linalg.norm(q[:, None, :].astype(np.float64) - r[None], axis=2), axis=1)
    np.testing.assert_allclose(s_near.numpy(), -dist[:, 9], atol=2e-4)
    # a set scored against itself skips each row's own match
    own = knn_score(reference, reference, k=1, exclude_self=True)
    assert (own < 0).all()


def test_mahalanobis_on_gaussians() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    means = np.array([[0.0, 0.0], [6.0, 0.0]])
    x = np.concatenate([rng.multivariate_normal(m, cov, 4000) for m in means])
    y = np.repeat([0, 1], 4000)
    mu, prec = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y))
    # Lee et al. Eq. 1, in numpy: class means and the tied (biased) covariance
    centred = x - np.stack([x[y == c].mean(0) for c in (0, 1)])[y]
    np.testing.assert_allclose(mu.numpy(), [x[y == 0].mean(0), x[y == 1].mean(0)], atol=1e-12)
    np.testing.assert_allclose(prec.numpy(), np.linalg.inv(centred.T @ centred / len(x)), rtol=1e-8)
    np.testing.assert_allclose(np.linalg.inv(prec.numpy()), cov, atol=0.08)  # the true covariance
    # the score: -min over classes of the squared Mahalanobis distance, checked point by point
    pts = np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 0.0], [1.0, -1.0], [1.0, 1.0]])
    s = mahalanobis_score(torch.from_numpy(pts).float(), mu, prec).double().numpy()
    expected = [-min((p - m) @ prec.numpy() @ (p - m) for m in mu.numpy()) for p in pts]
    np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-5)
    assert s[0] > s[3] and s[4] > s[3]  # against the correlation: farther in Mahalanobis terms
    assert s[0] > s[2] and s[1] > s[2]  # between the classes: less ID than at a mean


def test_mahalanobis_shrinkage() -> None:
    x = torch.randn(5, 8, dtype=torch.float64)  # fewer samples than dimensions: singular covariance
    y = torch.tensor([0, 0, 1, 1, 1])
    _, plain = fit_class_gaussians(x, y)
    mu, shrunk = fit_class_gaussians(x, y, shrinkage=0.2)
    centred = x - mu[y]
    cov = centred.T @ centred / 5
    target = 0.8 * cov + 0.2 * torch.diagonal(cov).mean() * torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(shrunk, torch.linalg.inv(target))
    assert torch.linalg.matrix_rank(plain) < 8 and torch.linalg.matrix_rank(shrunk) == 8
    with pytest.raises(ValueError, match="no sample has class"):
        fit_class_gaussians(x, torch.tensor([0, 0, 2, 2, 2]))


def test_ledoit_wolf_shrinkage_gives_sklearns_covariance() -> None:
    # 30 samples of 3 classes in 50-d: fewer samples than dimensions, the case Ledoit-Wolf is for
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 10)
    x = rng.normal(size=(3, 50))[y] * 4 + rng.normal(size=(30, 50)) @ np.diag(np.linspace(0.2, 2.0, 50))
    centred = x - np.stack([x[y == c].mean(0) for c in range(3)])[y]
    ref = LedoitWolf(assume_centered=True).fit(centred)  # independent reference: scikit-learn's estimator
    s = ledoit_wolf_shrinkage(torch.from_numpy(x), torch.from_numpy(y))
    assert s == pytest.approx(ref.shrinkage_, rel=1e-9) and 0.05 < s < 0.95
    _, prec = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y), shrinkage="auto")
    np.testing.assert_allclose(np.linalg.inv(prec.numpy()), ref.covariance_, rtol=1e-7, atol=1e-10)
    _, fixed = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y), shrinkage=s)
    torch.testing.assert_close(prec, fixed)
    with pytest.raises(ValueError, match="'auto'"):
        fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y), shrinkage="lw")
