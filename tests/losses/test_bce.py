"""BCE against ``torch.nn.BCEWithLogitsLoss`` (with ``pos_weight``), unknown entries left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from frugalvision.losses import BinaryCrossEntropyLoss, bce_loss


def test_bce_matches_torch_bce_with_logits_and_pos_weight(multilabel_batch):
    logits, targets = multilabel_batch(1, unknown=False)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    assert_close(bce_loss(logits, targets, pos_weight=pos_weight.tolist(), reduction="none"), expected)
    assert_close(
        BinaryCrossEntropyLoss(pos_weight=pos_weight.tolist())(logits, targets),
        F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight),
    )
    # with unknown entries: torch's per-entry values on the known ones, zero elsewhere, mean over the known ones
    logits, targets = multilabel_batch(2)
    known = targets != -1
    ref = F.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0), pos_weight=pos_weight, reduction="none"
    )
    out = bce_loss(logits, targets, pos_weight=pos_weight, reduction="none")
    assert_close(out, torch.where(known, ref, 0.0))
    assert_close(bce_loss(logits, targets, pos_weight=pos_weight), ref[known].mean())
