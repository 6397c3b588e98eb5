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


@pytest.fixture
def multilabel_batch():
    """``multilabel_batch(seed=0, batch=6, classes=5, unknown=True)``: seeded float64 ``(batch, classes)`` logits
    and targets in ``{1, 0}`` (with ``unknown``, about a quarter ``-1``); row 0 starts with a positive (and an
    unknown)."""

    def _make(
        seed: int = 0, batch: int = 6, classes: int = 5, unknown: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2.0
        targets = (torch.rand(batch, classes, generator=g) < 0.35).to(torch.float64)
        if unknown:
            targets[torch.rand(batch, classes, generator=g) < 0.25] = -1.0
        targets[0, :2] = torch.tensor([1.0, -1.0 if unknown else 0.0])  # a positive (and an unknown)
        return logits, targets

    return _make
