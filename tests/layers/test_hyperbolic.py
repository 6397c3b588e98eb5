"""Poincaré-ball operations: closed forms in float64, isometries, inverses, limits and the projection head."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from frugalvision.layers import (
    HyperbolicProjection,
    clip_features,
    expmap0,
    logmap0,
    mobius_add,
    poincare_distance,
    poincare_distance_matrix,
    project_to_ball,
    to_poincare,
)

C = 0.7  # a curvature away from 1 so that misplaced sqrt(c) factors show


def _ball_points(n: int, d: int, c: float = C, seed: int = 0, max_radius: float = 0.9) -> torch.Tensor:
    """Random float64 points with norms spread over (0, max_radius / sqrt(c))."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    radius = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_radius / math.sqrt(c)
    return direction * radius


def _distance_by_hand(x: list[float], y: list[float], c: float) -> float:
    """2/sqrt(c) artanh(sqrt(c) ||(-x) ⊕ y||) written out component by component."""
    xy = sum(a * b for a, b in zip(x, y, strict=True))
    x2 = sum(a * a for a in x)
    y2 = sum(b * b for b in y)
    # (-x) ⊕ y: <-x, y> = -xy, ||-x||² = x2
    num = [(1 - 2 * c * xy + c * y2) * (-a) + (1 - c * x2) * b for a, b in zip(x, y, strict=True)]
    den = 1 - 2 * c * xy + c * c * x2 * y2
    norm = math.sqrt(sum(v * v for v in num)) / den
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * norm)


def _distance_arcosh(x: list[float], y: list[float], c: float) -> float:
    diff2 = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
    x2 = sum(a * a for a in x)
    y2 = sum(b * b for b in y)
    return math.acosh(1 + 2 * c * diff2 / ((1 - c * x2) * (1 - c * y2))) / math.sqrt(c)


def test_distance_matches_both_closed_forms_in_float64():
    x, y = _ball_points(5, 3, seed=1), _ball_points(5, 3, seed=2)
    expected_artanh = torch.tensor(
        [_distance_by_hand(a, b, C) for a, b in zip(x.tolist(), y.tolist(), strict=True)], dtype=torch.float64
    )
    expected_arcosh = torch.tensor(
        [_distance_arcosh(a, b, C) for a, b in zip(x.tolist(), y.tolist(), strict=True)], dtype=torch.float64
    )
    assert_close(expected_artanh, expected_arcosh, rtol=1e-10, atol=1e-12)  # the two textbook forms agree
    assert_close(poincare_distance(x, y, C), expected_artanh, rtol=1e-10, atol=1e-12)


def test_distance_matrix_equals_pairwise_distance():
    x, y = _ball_points(7, 4, seed=3), _ball_points(5, 4, seed=4)
    expected = torch.tensor(
        [[_distance_arcosh(a, b, C) for b in y.tolist()] for a in x.tolist()], dtype=torch.float64
    )
    assert_close(poincare_distance_matrix(x, y, C), expected, rtol=1e-10, atol=1e-10)
    assert_close(poincare_distance_matrix(x, y, C), poincare_distance(x[:, None], y[None], C))


def test_distance_is_a_metric_on_small_sets():
    x = _ball_points(6, 3, seed=5)
    d = poincare_distance_matrix(x, x, C)
    assert_close(d, d.T)
    assert_close(d.diag(), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    triangle = d.unsqueeze(2) + d.unsqueeze(0) - d.unsqueeze(1)  # d(i,j) + d(j,k) - d(i,k) >= 0
    assert bool((triangle >= -1e-10).all())


def test_left_mobius_translation_is_an_isometry():
    x, y = _ball_points(6, 3, seed=6), _ball_points(6, 3, seed=7)
    a = _ball_points(1, 3, seed=8, max_radius=0.8)
    assert_close(poincare_distance(mobius_add(a, x, C), mobius_add(a, y, C), C), poincare_distance(x, y, C))


def test_rotation_is_an_isometry():
    x, y = _ball_points(6, 4, seed=9), _ball_points(6, 4, seed=10)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert_close(poincare_distance(x @ q.T, y @ q.T, C), poincare_distance(x, y, C))


def test_mobius_addition_identity_inverse_and_flat_limit():
    x, y = _ball_points(4, 3, seed=11), _ball_points(4, 3, seed=12)
    zero = torch.zeros_like(x)
    assert_close(mobius_add(zero, x, C), x)
    assert_close(mobius_add(x, zero, C), x)
    assert_close(mobius_add(-x, x, C), zero, atol=1e-15, rtol=0)
    assert_close(mobius_add(x, y, 1e-12), x + y, rtol=1e-9, atol=1e-12)


def test_distance_tends_to_twice_the_euclidean_distance_as_c_goes_to_zero():
    g = torch.Generator().manual_seed(13)
    x, y = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 3, generator=g, dtype=torch.float64),
    )
    for c in (1e-4, 1e-8):
        assert_close(poincare_distance(x, y, c), 2 * (x - y).norm(dim=1), rtol=10 * c, atol=0)
        assert_close(poincare_distance_matrix(x, y, c), 2 * torch.cdist(x, y), rtol=10 * c, atol=0)


def test_expmap0_and_logmap0_are_inverse():
    v = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    assert_close(logmap0(expmap0(v, C), C), v)
    y = _ball_points(8, 5, seed=15)
    assert_close(expmap0(logmap0(y, C), C), y)
    # the distance from the origin is twice the tangent norm (lambda_0 = 2)
    assert_close(poincare_distance(torch.zeros_like(v), expmap0(v, C), C), 2 * v.norm(dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_stay_inside_the_ball_for_huge_inputs(dtype):
    x = torch.randn(16, 8, dtype=dtype, generator=torch.Generator().manual_seed(16)) * 1e6
    for z in (to_poincare(x, C), to_poincare(x, C, clip_r=2.3), project_to_ball(expmap0(x, C), C)):
        assert bool(torch.isfinite(z).all())
        assert bool((z.norm(dim=1) < 1 / math.sqrt(C)).all())
        d = poincare_distance_matrix(z, z, C)
        assert bool(torch.isfinite(d).all())
    head = HyperbolicProjection(8, 4, c=C).to(dtype)
    assert bool((head(x).norm(dim=1) < 1 / math.sqrt(C)).all())


def test_projection_leaves_inner_points_alone_and_clips_outer_ones():
    inner = _ball_points(5, 3, seed=17, max_radius=0.9)
    assert torch.equal(project_to_ball(inner, C), inner)
    outer = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1) * 10
    projected = project_to_ball(outer, C, eps=1e-3)
    assert_close(projected.norm(dim=1), torch.full((5,), (1 - 1e-3) / math.sqrt(C), dtype=torch.float64))
    assert_close(torch.nn.functional.normalize(projected, dim=1), torch.nn.functional.normalize(outer, dim=1))


def test_feature_clipping():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # norms 5 and 0.5
    expected = torch.tensor([[3.0 * 2.3 / 5, 4.0 * 2.3 / 5], [0.3, 0.4]], dtype=torch.float64)
    assert_close(clip_features(x, 2.3), expected)


def test_gradients_in_float64():
    x = _ball_points(4, 3, seed=18).requires_grad_()
    y = _ball_points(3, 3, seed=19).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: poincare_distance_matrix(a, b, C), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: poincare_distance(a, b, C), (x[:3], y))
    v = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: to_poincare(a, C, clip_r=1.5), (v,))
    head = HyperbolicProjection(3, 2, c=C).double()
    assert torch.autograd.gradcheck(head, (v,))


def test_identical_rows_have_zero_distance_and_finite_gradient():
    x = _ball_points(3, 4, seed=20)
    z = torch.cat([x, x]).requires_grad_()
    d = poincare_distance_matrix(z, z, C)
    assert_close(d[0, 3], torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    d.sum().backward()
    assert bool(torch.isfinite(z.grad).all())
    v = torch.zeros(2, 3, requires_grad=True)
    expmap0(v, C).sum().backward()
    assert bool(torch.isfinite(v.grad).all())


def test_projection_head_initialisation_and_errors():
    head = HyperbolicProjection(6, 4)
    assert (head.c, head.clip_r) == (0.1, 2.3)  # paper defaults
    weight = head.linear.weight
    assert_close(weight @ weight.T, torch.eye(4), atol=1e-5, rtol=0)  # orthogonal rows
    assert torch.equal(head.linear.bias, torch.zeros(4))
    with pytest.raises(ValueError, match=r"features must be \(B, 6\)"):
        head(torch.randn(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        head(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="c "):
        HyperbolicProjection(6, 4, c=0.0)
    with pytest.raises(ValueError, match="clip_r"):
        HyperbolicProjection(6, 4, clip_r=-1.0)
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        poincare_distance_matrix(torch.zeros(2, 3), torch.zeros(2, 4), C)
