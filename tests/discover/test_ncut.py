"""The normalized-cut step on graphs whose cut is known, checked against the generalized eigen-equation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from frugalvision.discover import (
    affinity_graph,
    connected_component,
    foreground_from_eigenvector,
    maskcut_patches,
    second_smallest_eigenvector,
)


def _two_cliques(n_a: int = 5, n_b: int = 7, weak: float = 0.01) -> np.ndarray:
    n = n_a + n_b
    w = np.full((n, n), weak)
    w[:n_a, :n_a] = 1.0
    w[n_a:, n_a:] = 1.0
    return w


def _planted_features(
    grid: tuple[int, int], blocks: list[tuple[slice, slice]], seed: int = 0
) -> torch.Tensor:
    """(h, w, C) features: background along e0, block k along e(k+1), plus small noise."""
    rng = np.random.default_rng(seed)
    h, w = grid
    feats = np.zeros((h, w, 8))
    feats[..., 0] = 1.0
    for k, (rows, cols) in enumerate(blocks):
        feats[rows, cols, :] = 0.0
        feats[rows, cols, k + 1] = 1.0
    feats += 0.02 * rng.standard_normal(feats.shape)
    return torch.from_numpy(feats).float()


@pytest.mark.parametrize("solver", ["dense", "lanczos"])
def test_two_cliques_are_split_and_the_eigen_equation_holds(solver: str) -> None:
    w = _two_cliques()
    x, lam = second_smallest_eigenvector(w, solver=solver)  # type: ignore[arg-type]
    d = np.diag(w.sum(axis=1))
    # (D - W) x = λ D x and x^T D x = 1
    residual = (d - w) @ x - lam * (d @ x)
    assert np.abs(residual).max() < 1e-8
    assert abs(x @ d @ x - 1.0) < 1e-10
    side = x > x.mean()
    assert side[:5].all() != side[5:].any() and len(set(side[:5])) == 1 and len(set(side[5:])) == 1
    # the reference: LAPACK's generalized solver on (D - W, D)
    values, vectors = scipy.linalg.eigh(d - w, d)
    assert lam == pytest.approx(values[1], abs=1e-10)
    ref = vectors[:, 1]
    assert min(np.abs(x - ref).max(), np.abs(x + ref).max()) < 1e-8


def test_lanczos_and_dense_agree_on_a_random_feature_graph() -> None:
    feats = torch.randn(150, 16, generator=torch.Generator().manual_seed(0))
    w = affinity_graph(feats, tau=0.1)
    xd, ld = second_smallest_eigenvector(w, solver="dense")
    xl, ll = second_smallest_eigenvector(w, solver="lanczos")
    assert ld == pytest.approx(ll, abs=1e-9)
    assert min(np.abs(xd - xl).max(), np.abs(xd + xl).max()) < 1e-6


def test_affinity_graph_is_binary_with_eps_and_matches_cosine() -> None:
    f = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.0, 3.0], [-1.0, 0.0]])
    w = affinity_graph(f, tau=0.15, eps=1e-5)
    cos = torch.nn.functional.normalize(f.double(), dim=1)
    expected = np.where((cos @ cos.T).numpy() > 0.15, 1.0, 1e-5)
    np.testing.assert_array_equal(w, expected)
    assert w[0, 1] == 1.0 and w[0, 2] == 1e-5 and w[0, 3] == 1e-5
    np.testing.assert_array_equal(np.diag(w), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tau": 1.5}, "tau"), ({"eps": 0.0}, "eps"), ({"eps": 2.0}, "eps")],
)
def test_affinity_graph_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        affinity_graph(torch.randn(4, 3), **kwargs)


def test_affinity_graph_rejects_nan_and_wrong_shape() -> None:
    with pytest.raises(ValueError, match="NaN"):
        affinity_graph(torch.tensor([[float("nan"), 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        affinity_graph(torch.randn(2, 3, 4))


def test_eigenvector_rejects_invalid_graphs() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        second_smallest_eigenvector(np.triu(np.ones((4, 4))))
    with pytest.raises(ValueError, match="non-negative"):
        second_smallest_eigenvector(-np.ones((4, 4)))
    w = np.ones((4, 4))
    w[2, :] = w[:, 2] = 0.0
    with pytest.raises(ValueError, match=r"nodes \[2\]"):
        second_smallest_eigenvector(w)
    with pytest.raises(ValueError, match="solver"):
        second_smallest_eigenvector(np.ones((4, 4)), solver="qr")  # type: ignore[arg-type]


@pytest.mark.parametrize("solver", ["dense", "lanczos"])
def test_planted_block_is_found_exactly(solver: str) -> None:
    block = (slice(3, 8), slice(4, 10))
    feats = _planted_features((12, 12), [block])
    masks, eigenvalues = maskcut_patches(feats, num_objects=1, solver=solver)  # type: ignore[arg-type]
    expected = np.zeros((12, 12), dtype=bool)
    expected[block] = True
    assert masks.shape == (1, 12, 12) and eigenvalues.shape == (1,)
    np.testing.assert_array_equal(masks[0], expected)
    assert 0.0 <= eigenvalues[0] < 0.01  # two nearly disconnected cliques: an almost free cut


def test_two_planted_blocks_are_found_in_turn_and_disjoint() -> None:
    a, b = (slice(1, 5), slice(1, 6)), (slice(7, 11), slice(6, 11))
    feats = _planted_features((12, 12), [a, b], seed=1)
    masks, _ = maskcut_patches(feats, num_objects=3)
    expected = []
    for rows, cols in (a, b):
        m = np.zeros((12, 12), dtype=bool)
        m[rows, cols] = True
        expected.append(m)
    assert len(masks) >= 2
    found = {masks[0].tobytes(), masks[1].tobytes()}
    assert found == {e.tobytes() for e in expected}
    assert not (masks.sum(axis=0) > 1).any()  # later objects never reuse patches of earlier ones


def test_corner_rule_flips_a_side_touching_three_corners() -> None:
    h = w = 6
    x = np.ones((h, w))
    x[3:, 3:] = -1.0  # bottom-right quadrant: touches one corner
    x[0, 0] = 5.0  # the seed (largest |x - mean|) lies on the side touching three corners
    quadrant = np.zeros((h, w), dtype=bool)
    quadrant[3:, 3:] = True
    fg, seed = foreground_from_eigenvector(x.reshape(-1), (h, w))
    np.testing.assert_array_equal(fg, quadrant)
    assert quadrant.reshape(-1)[seed]
    # the decision does not depend on the eigenvector's (arbitrary) sign
    fg_neg, _ = foreground_from_eigenvector(-x.reshape(-1), (h, w))
    np.testing.assert_array_equal(fg_neg, quadrant)
    # allowing three corners keeps the seed's side
    fg_keep, seed_keep = foreground_from_eigenvector(x.reshape(-1), (h, w), max_corners=3)
    np.testing.assert_array_equal(fg_keep, ~quadrant)
    assert seed_keep == 0


def test_seed_side_is_kept_when_it_touches_two_corners() -> None:
    x = np.zeros((6, 6))
    x[:3] = 1.0
    x[0, 2] = 4.0
    fg, seed = foreground_from_eigenvector(-x.reshape(-1), (6, 6))
    top = np.zeros((6, 6), dtype=bool)
    top[:3] = True
    np.testing.assert_array_equal(fg, top)
    assert seed == 2  # the extreme patch of the chosen side


def test_excluded_patches_never_become_foreground() -> None:
    x = np.zeros((5, 5))
    x[1:4, 1:4] = 1.0
    taken = np.zeros((5, 5), dtype=bool)
    taken[2, 2] = True
    fg, seed = foreground_from_eigenvector(x.reshape(-1), (5, 5), exclude=taken)
    assert not fg[2, 2] and fg.sum() == 8 and seed != 12
    everything = np.ones((5, 5), dtype=bool)
    fg, seed = foreground_from_eigenvector(x.reshape(-1), (5, 5), exclude=everything)
    assert not fg.any() and seed == -1
    with pytest.raises(ValueError, match="25 patches"):
        foreground_from_eigenvector(np.zeros(24), (5, 5))


def test_connected_component_uses_four_connectivity() -> None:
    mask = np.array(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1],
        ],
        dtype=bool,
    )
    first = connected_component(mask, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(first), [0, 1, 4])
    second = connected_component(mask, seed=9)
    np.testing.assert_array_equal(
        np.flatnonzero(second), [9, 10, 14, 15]
    )  # (1, 0)-(2, 1) touch diagonally only
    assert not connected_component(mask, seed=2).any() and not connected_component(mask, seed=-1).any()
