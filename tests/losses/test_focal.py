"""Sigmoid focal loss against ``torchvision.ops.sigmoid_focal_loss`` on the known entries."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.testing import assert_close

from frugalvision.losses import FocalLoss, focal_loss


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, 0.25), (1.5, None), (3.0, 0.9)])
def test_focal_matches_torchvision_on_known_entries(gamma, alpha, multilabel_batch):
    logits, targets = multilabel_batch(3)
    known = targets != -1
    ref = torchvision.ops.sigmoid_focal_loss(
        logits, targets.clamp(min=0), alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="none"
    )
    out = focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction="none")
    assert_close(out, torch.where(known, ref, 0.0))
    assert_close(FocalLoss(gamma=gamma, alpha=alpha)(logits, targets), ref[known].mean())


def test_focal_default_is_lin_et_al_and_torchvision(multilabel_batch):
    loss = FocalLoss()
    assert (loss.gamma, loss.alpha) == (2.0, 0.25)
    logits, targets = multilabel_batch(4, unknown=False)
    assert_close(loss(logits, targets), torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="mean"))
