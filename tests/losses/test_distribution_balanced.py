"""Distribution-Balanced loss against a float64 hand computation of the paper's equations (as the official code
reads them), its limits (BCE), the official COCO-MLT defaults and extreme class counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import DistributionBalancedLoss, bce_loss, create_loss, distribution_balanced_loss

COUNTS = [40, 12, 3, 1, 25]  # positives per class in a toy training set of N images
N = 50


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


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


def test_db_without_reweighting_and_ntr_is_bce(multilabel_batch):
    logits, targets = multilabel_batch(8)
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
def test_db_matches_hand_computation(kw, multilabel_batch):
    logits, targets = multilabel_batch(9)
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
