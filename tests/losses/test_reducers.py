from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import masked_reduce
from frugalvision.losses.reducers import hinge_sums


def test_masked_reduce_modes() -> None:
    values = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert_close(masked_reduce(values, mask, "sum"), torch.tensor(8.0))
    assert_close(masked_reduce(values, mask, "mean"), torch.tensor(8.0 / 5))
    assert_close(masked_reduce(values, mask, "nonzero_mean"), torch.tensor(8.0 / 3))
    assert_close(masked_reduce(values, None, "nonzero_mean"), torch.tensor(11.0 / 4))


@pytest.mark.parametrize("reduction", ["sum", "mean", "nonzero_mean"])
def test_masked_reduce_empty_is_zero_with_gradient(reduction: str) -> None:
    values = torch.tensor([0.0, 2.0, 4.0], requires_grad=True)
    out = masked_reduce(values, torch.zeros(3, dtype=torch.bool), reduction)  # type: ignore[arg-type]
    assert float(out.detach()) == 0.0
    out.backward()
    assert values.grad is not None and float(values.grad.abs().sum()) == 0.0


def test_hinge_sums_equal_dense_hinge_values_counts_and_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    values = torch.rand(5, 30, generator=gen, dtype=torch.float64).requires_grad_(True)
    thresholds = torch.rand(5, 7, generator=gen, dtype=torch.float64).requires_grad_(True)
    valid = torch.rand(5, 30, generator=gen) > 0.3
    t_valid = torch.rand(5, 7, generator=gen) > 0.2
    thresholds.data[0, 1] = values.data[0, 4]  # a tie: relu(0) = 0 and not counted
    sums, counts = hinge_sums(values, thresholds, valid=valid, thresholds_valid=t_valid)
    mask = valid.unsqueeze(1) & t_valid.unsqueeze(2)
    diff = thresholds.unsqueeze(2) - values.unsqueeze(1)
    dense = torch.where(mask, torch.relu(diff), 0.0)
    assert_close(sums, dense.sum(2))
    assert torch.equal(counts, ((diff > 0) & mask).sum(2))
    weights = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad((sums * weights).sum(), (values, thresholds))
    ref = torch.autograd.grad((dense.sum(2) * weights).sum(), (values, thresholds))
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b)


def test_hinge_sums_float32_input_accumulates_in_float64() -> None:
    values = torch.rand(1, 200_000) + 1000.0  # large offset: float32 running sums would lose the difference
    thresholds = torch.tensor([[1000.5]])
    sums, counts = hinge_sums(values, thresholds)
    below = values.double()[values.double() < 1000.5]
    assert int(counts) == below.numel()
    assert_close(sums, (1000.5 - below).sum().view(1, 1), rtol=1e-9, atol=1e-6)
