"""ASL against a float64 hand computation of the paper's equations and the official training script's
defaults; its limits (BCE), probability shifting and the detached focusing weight."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import AsymmetricLoss, asymmetric_loss, bce_loss, create_loss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


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
def test_asl_matches_hand_computation_of_the_paper(gamma_pos, gamma_neg, clip, multilabel_batch):
    logits, targets = multilabel_batch(5)
    hand = _asl_by_hand(logits.tolist(), targets.tolist(), gamma_pos, gamma_neg, clip)
    n_known = sum(t != -1 for row in targets.tolist() for t in row)
    expected = torch.tensor(hand, dtype=torch.float64)
    kw = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip}
    assert_close(asymmetric_loss(logits, targets, reduction="none", **kw), expected, rtol=1e-12, atol=1e-12)
    assert_close(
        asymmetric_loss(logits, targets, reduction="sum", **kw), expected.sum(), rtol=1e-12, atol=1e-12
    )
    assert_close(AsymmetricLoss(**kw)(logits, targets), expected.sum() / n_known, rtol=1e-12, atol=1e-12)


def test_asl_without_focusing_and_shifting_is_bce(multilabel_batch):
    logits, targets = multilabel_batch(6)
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


def test_asl_disable_torch_grad_focal_loss_same_value_gradient_without_weight_term(multilabel_batch):
    gp, gn, m = 1.0, 3.0, 0.05
    logits, targets = multilabel_batch(7)
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
