from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from frugalvision.losses import pairwise_distance
from frugalvision.losses.distances import cosine_matrix


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_cdist(normalize: bool) -> None:
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randn(4, 5, dtype=torch.float64)
    xr, yr = (F.normalize(x, dim=1), F.normalize(y, dim=1)) if normalize else (x, y)
    ref = torch.cdist(xr, yr)
    assert_close(pairwise_distance(x, y, normalize=normalize), ref)
    assert_close(pairwise_distance(x, y, distance="squared_euclidean", normalize=normalize), ref**2)
    assert_close(
        pairwise_distance(x, distance="squared_euclidean", normalize=normalize), torch.cdist(xr, xr) ** 2
    )


def test_cosine_is_one_minus_cosine_similarity_and_ignores_normalize() -> None:
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    ref = 1 - F.cosine_similarity(x.unsqueeze(1), y.unsqueeze(0), dim=2)
    assert_close(pairwise_distance(x, y, distance="cosine"), ref)
    assert_close(pairwise_distance(x, y, distance="cosine", normalize=False), ref)


def test_euclidean_gradient_is_finite_for_identical_rows() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    x = torch.cat([x, x[:1]]).requires_grad_(True)  # row 3 duplicates row 0: distance 0
    d = pairwise_distance(x, normalize=False)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert float(d[0, 3].detach()) < 1e-6


def test_unknown_distance() -> None:
    with pytest.raises(ValueError, match="distance must be one of"):
        pairwise_distance(torch.randn(2, 2), distance="manhattan")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "m", "d"), [(3, 4, 6), (6, 5, 2), (3, None, 6), (6, None, 2)])
def test_cosine_matrix_both_paths_equal_normalised_product(n, m, d) -> None:
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    y = None if m is None else torch.randn(m, d, dtype=torch.float64, requires_grad=True)
    ref = F.normalize(x, dim=1) @ F.normalize(x if y is None else y, dim=1).T
    assert_close(cosine_matrix(x, y), ref)
    inputs = (x,) if y is None else (x, y)
    assert torch.autograd.gradcheck(lambda *t: cosine_matrix(*t), inputs)
