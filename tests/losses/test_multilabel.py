"""Multi-label losses (BCE, focal, ASL, DB) against torch/torchvision and float64 hand computations of the papers'
equations; unknown (-1) entries, weights, reductions, gradients, registry and input errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.testing import assert_close

from frugalvision.losses import (
    AsymmetricLoss,
    BinaryCrossEntropyLoss,
    DistributionBalancedLoss,
    FocalLoss,
    asymmetric_loss,
    bce_loss,
    create_loss,
    distribution_balanced_loss,
    focal_loss,
    list_losses,
    loss_task,
)

COUNTS = [40, 12, 3, 1, 25]  # positives per class in a toy training set of N images
N = 50


def _batch(seed: int = 0, batch: int = 6, classes: int = 5, unknown: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2.0
    targets = (torch.rand(batch, classes, generator=g) < 0.35).to(torch.float64)
    if unknown:
        targets[torch.rand(batch, classes, generator=g) < 0.25] = -1.0
    targets[0, :2] = torch.tensor([1.0, -1.0 if unknown else 0.0])  # a positive (and an unknown)
    return logits, targets


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


ALL_LOSSES: dict[str, Callable[[], Any]] = {
    "bce": lambda: BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0, 0.5, 3.0, 1.0]),
    "focal": lambda: FocalLoss(),
    "focal_noalpha": lambda: FocalLoss(gamma=1.5, alpha=None),
    "asl": lambda: AsymmetricLoss(),
    "asl_gp1": lambda: AsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, clip=0.1),
    "db": lambda: DistributionBalancedLoss(COUNTS, N),
    "db_focal": lambda: DistributionBalancedLoss(COUNTS, N, focal=True, neg_scale=5.0, mu=0.3),
}


# ---------------------------------------------------------------------------------------------------------------
# References: torch, torchvision
# ---------------------------------------------------------------------------------------------------------------


def test_bce_matches_torch_bce_with_logits_and_pos_weight():
    logits, targets = _batch(1, unknown=False)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    assert_close(bce_loss(logits, targets, pos_weight=pos_weight.tolist(), reduction="none"), expected)
    assert_close(
        BinaryCrossEntropyLoss(pos_weight=pos_weight.tolist())(logits, targets),
        F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight),
    )
    # with unknown entries: torch's per-entry values on the known ones, zero elsewhere, mean over the known ones
    logits, targets = _batch(2)
    known = targets != -1
    ref = F.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0), pos_weight=pos_weight, reduction="none"
    )
    out = bce_loss(logits, targets, pos_weight=pos_weight, reduction="none")
    assert_close(out, torch.where(known, ref, 0.0))
    assert_close(bce_loss(logits, targets, pos_weight=pos_weight), ref[known].mean())


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, 0.25), (1.5, None), (3.0, 0.9)])
def test_focal_matches_torchvision_on_known_entries(gamma, alpha):
    logits, targets = _batch(3)
    known = targets != -1
    ref = torchvision.ops.sigmoid_focal_loss(
        logits, targets.clamp(min=0), alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="none"
    )
    out = focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction="none")
    assert_close(out, torch.where(known, ref, 0.0))
    assert_close(FocalLoss(gamma=gamma, alpha=alpha)(logits, targets), ref[known].mean())


def test_focal_default_is_lin_et_al_and_torchvision():
    loss = FocalLoss()
    assert (loss.gamma, loss.alpha) == (2.0, 0.25)
    logits, targets = _batch(4, unknown=False)
    assert_close(loss(logits, targets), torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="mean"))


# ---------------------------------------------------------------------------------------------------------------
# ASL
# ---------------------------------------------------------------------------------------------------------------


def _asl_by_hand(logits, targets, gamma_pos, gamma_neg, clip, eps=1e-8):
    """Paper's L+ = -(1-p)^g+ log p, L- = -p_m^g- log(1-p_m), p_m = max(p - m, 0), logs clamped at eps."""
    out = [[0.0] * len(row) for row in logits]
    for i, (zrow, trow) in enumerate(zip(logits, targets, strict=True)):
        for j, (z, t) in enumerate(zip(zrow, trow, strict=True)):
            p = _sig(z)
            if t == 1:
                out[i][j] = -((1 - p) ** gamma_pos) * math.log(max(p, eps))
            elif t == 0:
                pm = max(p - clip, 0.0)
                out[i][j] = -(pm**gamma_neg) * math.log(max(1 - pm, eps))
    return out


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"), [(0.0, 4.0, 0.05), (1.0, 2.0, 0.1), (0.5, 0.5, 0.0), (2.0, 0.0, 0.2)]
)
def test_asl_matches_hand_computation_of_the_paper(gamma_pos, gamma_neg, clip):
    logits, targets = _batch(5)
    hand = _asl_by_hand(logits.tolist(), targets.tolist(), gamma_pos, gamma_neg, clip)
    n_known = sum(t != -1 for row in targets.tolist() for t in row)
    expected = torch.tensor(hand, dtype=torch.float64)
    kw = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip}
    assert_close(asymmetric_loss(logits, targets, reduction="none", **kw), expected, rtol=1e-12, atol=1e-12)
    assert_close(
        asymmetric_loss(logits, targets, reduction="sum", **kw), expected.sum(), rtol=1e-12, atol=1e-12
    )
    assert_close(AsymmetricLoss(**kw)(logits, targets), expected.sum() / n_known, rtol=1e-12, atol=1e-12)


def test_asl_without_focusing_and_shifting_is_bce():
    logits, targets = _batch(6)
    for reduction in ("mean", "sum", "none"):
        assert_close(
            asymmetric_loss(logits, targets, gamma_pos=0, gamma_neg=0, clip=0, reduction=reduction),
            bce_loss(logits, targets, reduction=reduction),
        )


def test_asl_shifting_discards_easy_negatives_exactly():
    logits = torch.tensor([[-4.0, -2.0, 0.0]], dtype=torch.float64, requires_grad=True)  # p = .018, .119, .5
    targets = torch.zeros(1, 3)
    out = asymmetric_loss(logits, targets, clip=0.05, reduction="none")
    out.sum().backward()
    assert logits.grad is not None
    assert out[0, 0].item() == 0.0 and logits.grad[0, 0].item() == 0.0  # p < m: no loss, no gradient
    assert out[0, 1].item() > 0 and out[0, 2].item() > out[0, 1].item()


def test_asl_disable_torch_grad_focal_loss_same_value_gradient_without_weight_term():
    gp, gn, m = 1.0, 3.0, 0.05
    logits, targets = _batch(7)
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    full = asymmetric_loss(z1, targets, gamma_pos=gp, gamma_neg=gn, clip=m, reduction="sum")
    frozen = asymmetric_loss(
        z2, targets, gamma_pos=gp, gamma_neg=gn, clip=m, reduction="sum", disable_torch_grad_focal_loss=True
    )
    assert_close(full, frozen)
    full.backward()
    frozen.backward()
    # d/dz of L = -w(z) log q(z): full = -(w' log q + w q'/q), frozen = -w q'/q (by hand, per entry)
    grad_full, grad_frozen = [], []
    for z, t in zip(logits.flatten().tolist(), targets.flatten().tolist(), strict=True):
        p = _sig(z)
        dp = p * (1 - p)
        if t == 1:
            w, dw, log_q, dlog_q = (1 - p) ** gp, -gp * (1 - p) ** (gp - 1) * dp, math.log(p), (1 - p)
        elif t == 0 and p > m:
            pm = p - m
            w, dw, log_q, dlog_q = pm**gn, gn * pm ** (gn - 1) * dp, math.log(1 - pm), -dp / (1 - pm)
        else:
            w = dw = log_q = dlog_q = 0.0
        grad_full.append(-(dw * log_q + w * dlog_q))
        grad_frozen.append(-w * dlog_q)
    assert z1.grad is not None and z2.grad is not None
    assert_close(z1.grad.flatten(), torch.tensor(grad_full, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert_close(z2.grad.flatten(), torch.tensor(grad_frozen, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(z1.grad, z2.grad)
    # the focusing weight lowers the loss of easy entries, so its own gradient pushes towards them: for a positive
    # the full gradient is more negative (log p < 0, dw/dz < 0 -> extra term -dw log p < 0)
    pos = targets == 1
    assert bool((z1.grad[pos] < z2.grad[pos]).all())


def test_asl_defaults_follow_the_official_training_script():
    loss = create_loss("asl")
    assert (loss.gamma_pos, loss.gamma_neg, loss.clip, loss.eps) == (0.0, 4.0, 0.05, 1e-8)
    assert loss.disable_torch_grad_focal_loss is False


# ---------------------------------------------------------------------------------------------------------------
# Distribution-Balanced loss
# ---------------------------------------------------------------------------------------------------------------


def _db_by_hand(logits, targets, counts, n, alpha, beta, mu, lam, kappa, reweight=True, ntr=True, focal=None):
    """Sec. 3: r = (1/n_i) / sum_{j pos} 1/n_j, r_hat = alpha + sigmoid(beta (r - mu)); NTR with nu = kappa b / lam,
    b = -log(1/p - 1): pos softplus(-(z + nu)), neg softplus(lam (z + nu)) / lam; optional DB-Focal factor."""
    total, known = 0.0, 0
    for zrow, trow in zip(logits, targets, strict=True):
        inst = sum(1.0 / c for c, t in zip(counts, trow, strict=True) if t == 1)
        for z, t, c in zip(zrow, trow, counts, strict=True):
            if t == -1:
                continue
            known += 1
            r_hat = 1.0
            if reweight:
                r_hat = alpha + _sig(beta * ((1.0 / c) / inst - mu)) if inst > 0 else alpha + 1.0
            nu = kappa * (-math.log(n / c - 1)) / lam if ntr else 0.0
            scale = lam if ntr else 1.0
            if t == 1:
                value, pt = _softplus(-(z + nu)), _sig(z + nu)
            else:
                value, pt = _softplus(scale * (z + nu)) / scale, _sig(-scale * (z + nu))
            if focal is not None:
                gamma, balance = focal
                value *= balance * (1 - pt) ** gamma
            total += r_hat * value
    return total / known


def test_db_without_reweighting_and_ntr_is_bce():
    logits, targets = _batch(8)
    loss = DistributionBalancedLoss(COUNTS, N, reweight=False, ntr=False)
    for reduction in ("mean", "sum", "none"):
        loss.reduction = reduction
        assert_close(loss(logits, targets), bce_loss(logits, targets, reduction=reduction))


def test_db_rebalance_weight_is_constant_for_uniform_class_frequencies():
    # n_i = n for every class: r = (1/n) / (k/n) = 1/k for a row with k positives, whatever the class, so
    # r_hat = alpha + sigmoid(beta (1/k - mu)); k = 1 with the defaults: 0.1 + sigmoid(10 * 0.8) = 0.1 + sigmoid(8).
    loss = DistributionBalancedLoss([7, 7, 7, 7], 30)
    targets = torch.tensor([[1, 0, 0, -1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    weights = loss.rebalance_weights(targets)
    one, two = 0.1 + _sig(8.0), 0.1 + _sig(10 * (0.5 - 0.2))
    assert abs(one - 1.0996646498695336) < 1e-15
    expected = torch.tensor([[one] * 4, [one] * 4, [two] * 4, [1.1] * 4], dtype=torch.float64)
    assert_close(weights, expected, rtol=1e-15, atol=1e-15)
    logits = torch.randn(4, 4, dtype=torch.float64)
    only_reweight = DistributionBalancedLoss([7, 7, 7, 7], 30, ntr=False, reduction="none")
    assert_close(only_reweight(logits, targets), expected * bce_loss(logits, targets, reduction="none"))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"neg_scale": 5.0, "mu": 0.3},
        {"focal": True},
        {"ntr": False},
        {"reweight": False},
        {"init_bias": 0.0, "alpha": 0.5, "beta": 2.0},
    ],
)
def test_db_matches_hand_computation(kw):
    logits, targets = _batch(9)
    targets[3] = torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0])  # a row without positives: r_hat = alpha + 1
    params = {"alpha": 0.1, "beta": 10.0, "mu": 0.2, "neg_scale": 2.0, "init_bias": 0.05} | {
        k: v for k, v in kw.items() if k not in ("focal", "ntr", "reweight")
    }
    expected = _db_by_hand(
        logits.tolist(),
        targets.tolist(),
        COUNTS,
        N,
        params["alpha"],
        params["beta"],
        params["mu"],
        params["neg_scale"],
        params["init_bias"],
        reweight=kw.get("reweight", True),
        ntr=kw.get("ntr", True),
        focal=(2.0, 2.0) if kw.get("focal") else None,
    )
    out = DistributionBalancedLoss(COUNTS, N, **kw)(logits, targets)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    functional = distribution_balanced_loss(logits, targets, class_counts=COUNTS, num_samples=N, **kw)
    assert_close(functional, out)


def test_db_defaults_are_the_official_coco_config():
    loss = create_loss("distribution_balanced", class_counts=COUNTS, num_samples=N)
    assert (loss.alpha, loss.beta, loss.mu, loss.neg_scale, loss.init_bias) == (0.1, 10.0, 0.2, 2.0, 0.05)
    assert loss.reweight and loss.ntr and not loss.focal
    assert (loss.focal_gamma, loss.focal_balance) == (2.0, 2.0)


def test_db_class_prior_bias_lowers_rare_class_scores():
    loss = DistributionBalancedLoss([1, 25, 49], 50, reweight=False)
    # b = -log(N/n - 1): rare -> very negative, half -> 0, common -> positive; shift = kappa b / lambda
    expected = [0.05 * -math.log(50 / n - 1) / 2.0 for n in (1, 25, 49)]
    assert_close(loss.shift, torch.tensor(expected, dtype=torch.float64))
    assert loss.shift[0] < 0 and loss.shift[1] == 0 and loss.shift[2] > 0


def test_db_counts_of_zero_or_all_stay_finite():
    loss = DistributionBalancedLoss([0, 10, 10], 10)
    logits = torch.randn(3, 3, requires_grad=True)
    value = loss(logits, torch.tensor([[0, 1, 1], [0, 1, 0], [0, 0, 1]]))
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


# ---------------------------------------------------------------------------------------------------------------
# Shared behaviour: gradients, unknown entries, weights, reductions
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_gradcheck(name):
    loss = ALL_LOSSES[name]()
    logits, targets = _batch(10)
    logits.requires_grad_(True)
    weights = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    assert torch.autograd.gradcheck(lambda z: loss(z, targets, weights), (logits,))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_unknown_entries_have_no_effect_and_zero_gradient(name):
    loss = ALL_LOSSES[name]()
    logits, targets = _batch(11)
    unknown = targets == -1
    z = logits.clone().requires_grad_(True)
    value = loss(z, targets)
    value.backward()
    assert bool((z.grad[unknown] == 0).all()) and bool((z.grad[~unknown] != 0).any())
    moved = torch.where(unknown, logits + 100.0, logits)
    assert_close(loss(moved, targets), value.detach())


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_reductions_and_weights(name):
    loss = ALL_LOSSES[name]()
    logits, targets = _batch(12)
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
def test_integer_targets_and_large_logits(name):
    loss = ALL_LOSSES[name]()
    logits, targets = _batch(13)
    assert_close(loss(logits, targets.long()), loss(logits, targets))
    big = (torch.sign(torch.randn(6, 5)) * 100).float().requires_grad_(True)
    value = loss(big, targets.float())
    (grad,) = torch.autograd.grad(value, big)
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


def test_float32_matches_float64():
    logits, targets = _batch(14)
    for name, make in ALL_LOSSES.items():
        loss = make()
        assert_close(
            loss(logits.float(), targets.float()).double(),
            loss(logits, targets),
            rtol=1e-5,
            atol=1e-6,
            msg=name,
        )


# ---------------------------------------------------------------------------------------------------------------
# Registry and errors
# ---------------------------------------------------------------------------------------------------------------


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
