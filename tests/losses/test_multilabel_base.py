"""What every multi-label loss shares (BCE, focal, ASL, DB): gradients, unknown (-1) entries, weights,
reductions, dtypes; the registry entries and the input errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import (
    AsymmetricLoss,
    BinaryCrossEntropyLoss,
    DistributionBalancedLoss,
    FocalLoss,
    bce_loss,
    create_loss,
    list_losses,
    loss_task,
)

COUNTS = [40, 12, 3, 1, 25]  # positives per class in a toy training set of N images
N = 50

ALL_LOSSES: dict[str, Callable[[], Any]] = {
    "bce": lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0, 0.5, 3.0, 1.0]),
    "focal": lambda: FocalLoss(),
    "focal_noalpha": lambda: FocalLoss(gamma=1.5, alpha=None),
    "asl": lambda: AsymmetricLoss(),
    "asl_gp1": lambda: AsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, clip=0.1),
    "db": lambda: DistributionBalancedLoss(COUNTS, N),
    "db_focal": lambda: DistributionBalancedLoss(COUNTS, N, focal=True, neg_scale=5.0, mu=0.3),
}


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_gradcheck(name, multilabel_batch):
    loss = ALL_LOSSES[name]()
    logits, targets = multilabel_batch(10)
    logits.requires_grad_(True)
    weights = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    assert torch.autograd.gradcheck(lambda z: loss(z, targets, weights), (logits,))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_unknown_entries_have_no_effect_and_zero_gradient(name, multilabel_batch):
    loss = ALL_LOSSES[name]()
    logits, targets = multilabel_batch(11)
    unknown = targets == -1
    z = logits.clone().requires_grad_(True)
    value = loss(z, targets)
    value.backward()
    assert bool((z.grad[unknown] == 0).all()) and bool((z.grad[~unknown] != 0).any())
    moved = torch.where(unknown, logits + 100.0, logits)
    assert_close(loss(moved, targets), value.detach())


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_reductions_and_weights(name, multilabel_batch):
    loss = ALL_LOSSES[name]()
    logits, targets = multilabel_batch(12)
    known = targets != -1
    loss.reduction = "none"
    per_entry = loss(logits, targets)
    assert per_entry.shape == logits.shape and bool((per_entry[~known] == 0).all())
    loss.reduction = "sum"
    assert_close(loss(logits, targets), per_entry.sum())
    loss.reduction = "mean"
    assert_close(loss(logits, targets), per_entry.sum() / known.sum())
    weights = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    weights[1, :] = 0.0  # zero weight counts as unknown
    counted = known & (weights > 0)
    assert_close(loss(logits, targets, weights), (per_entry * weights).sum() / counted.sum())
    loss.reduction = "none"
    assert_close(loss(logits, targets, weights), per_entry * weights)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_all_unknown_batch_is_a_connected_zero(name):
    loss = ALL_LOSSES[name]()
    logits = torch.randn(3, 5, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss.reduction = reduction
        value = loss(logits, torch.full((3, 5), -1))
        assert value.item() == 0.0 and value.grad_fn is not None
        (grad,) = torch.autograd.grad(value, logits)
        assert bool((grad == 0).all())
    loss.reduction = "mean"
    empty = loss(torch.zeros(0, 5, requires_grad=True), torch.zeros(0, 5))
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_integer_targets_and_large_logits(name, multilabel_batch):
    loss = ALL_LOSSES[name]()
    logits, targets = multilabel_batch(13)
    assert_close(loss(logits, targets.long()), loss(logits, targets))
    big = (torch.sign(torch.randn(6, 5)) * 100).float().requires_grad_(True)
    value = loss(big, targets.float())
    (grad,) = torch.autograd.grad(value, big)
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


def test_float32_matches_float64(multilabel_batch):
    logits, targets = multilabel_batch(14)
    for name, make in ALL_LOSSES.items():
        loss = make()
        assert_close(
            loss(logits.float(), targets.float()).double(),
            loss(logits, targets),
            rtol=1e-5,
            atol=1e-6,
            msg=name,
        )


def test_registry():
    names = list_losses(task="multilabel")
    assert {
        "bce",
        "binary_cross_entropy",
        "focal",
        "asl",
        "asymmetric",
        "db",
        "distribution_balanced",
    } <= set(names)
    assert {"bce", "focal", "asl", "db"} <= set(list_losses(task="multilabel", include_aliases=False))
    assert not set(names) & set(list_losses(task="embedding"))
    assert all(loss_task(n) == "multilabel" for n in ("bce", "focal", "asl", "db"))
    asl = create_loss("asl", gamma_neg=2)
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 2.0
    assert isinstance(create_loss("binary_cross_entropy", pos_weight=[1.0, 2.0]), BinaryCrossEntropyLoss)
    assert isinstance(create_loss("db", class_counts=[3, 1], num_samples=5), DistributionBalancedLoss)
    with pytest.raises(TypeError, match="accepted arguments"):
        create_loss("db", class_counts=[3, 1])


def test_input_errors():
    loss = AsymmetricLoss()
    logits = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"logits must be 2-D \(B, C\)"):
        loss(torch.randn(10), torch.zeros(10))
    with pytest.raises(
        ValueError, match=r"targets must have shape \(B, C\) = \(4, 10\) like logits, got \(4, 9\)"
    ):
        loss(logits, torch.zeros(4, 9))
    bad = torch.zeros(4, 10)
    bad[2, 7] = 0.5
    with pytest.raises(ValueError, match=r"got 0.5 at \[row, class\] = \[2, 7\] \(1 such entries\)"):
        loss(logits, bad)
    with pytest.raises(ValueError, match=r"got 2 at"):
        loss(logits, torch.full((4, 10), 2))
    nan = logits.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="logits contains 1 NaN"):
        loss(nan, torch.zeros(4, 10))
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        loss(torch.zeros(4, 10, dtype=torch.long), torch.zeros(4, 10))
    with pytest.raises(TypeError, match=r"targets must be a torch\.Tensor"):
        loss(logits, [[0] * 10] * 4)
    with pytest.raises(ValueError, match="reduction must be one of"):
        AsymmetricLoss(reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        bce_loss(logits, torch.zeros(4, 10), reduction="avg")
    negative = torch.ones(4, 10)
    negative[1, 3] = -0.5
    with pytest.raises(
        ValueError, match=r"weights must be finite and >= 0; got -0.5 at \[row, class\] = \[1, 3\]"
    ):
        loss(logits, torch.zeros(4, 10), negative)
    with pytest.raises(ValueError, match=r"weights must have shape \(B, C\) = \(4, 10\)"):
        loss(logits, torch.zeros(4, 10), torch.ones(4))
    with pytest.raises(ValueError, match="pos_weight has 3 entries but logits have 10 classes"):
        BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0, 3.0])(logits, torch.zeros(4, 10))
    with pytest.raises(ValueError, match=r"pos_weight must be finite and >= 0; got -1 for class 1"):
        BinaryCrossEntropyLoss(pos_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="class_counts has 2 entries but logits have 10 classes"):
        DistributionBalancedLoss([3, 1], 5)(logits, torch.zeros(4, 10))
    with pytest.raises(ValueError, match=r"class_counts\[1\] = 9 exceeds num_samples = 5"):
        DistributionBalancedLoss([3, 9], 5)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        DistributionBalancedLoss([3, 1], 0)
    with pytest.raises(ValueError, match="neg_scale must be a finite number > 0"):
        DistributionBalancedLoss([3, 1], 5, neg_scale=0.0)
    with pytest.raises(ValueError, match="clip"):
        AsymmetricLoss(clip=1.0)
    with pytest.raises(ValueError, match="gamma_neg must be a finite number >= 0"):
        AsymmetricLoss(gamma_neg=-1.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        FocalLoss(alpha=1.5)
