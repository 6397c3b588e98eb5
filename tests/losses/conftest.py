"""Shared fixtures of the loss tests: dtypes with one tolerance table, seeded inputs, pml availability."""

from __future__ import annotations

import pytest
import torch

# One tolerance table for every comparison (kornia style). float32 parity with pytorch-metric-learning is
# asked at 1e-5; float64 comparisons against hand-written loops are much tighter.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
}


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def tol(dtype: torch.dtype) -> dict[str, float]:
    return TOLERANCES[dtype]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def make_inputs(generator: torch.Generator):
    """``make_inputs(batch, dim, dtype, scale=1.0)``: two independent leaf copies of one random ``(batch, dim)``
    tensor, one for our loss and one for the reference, so their gradients can be compared."""

    def _make(
        batch: int, dim: int, dtype: torch.dtype, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, dim, generator=generator, dtype=torch.float64).mul(scale).to(dtype)
        return x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    return _make
