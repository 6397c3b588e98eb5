"""Partial-annotation wrapper (class-aware selective loss, Ben-Baruch et al. 2022): effective targets of each mode,
prior estimate against a float64 hand mean, epoch freezing, checkpoint round trip, gradients and errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import (
    AsymmetricLoss,
    BinaryCrossEntropyLoss,
    DistributionBalancedLoss,
    FocalLoss,
    PartialAnnotationLoss,
    create_loss,
)

BASES = {
    "bce": lambda: BinaryCrossEntropyLoss(),
    "focal": lambda: FocalLoss(),
    "asl": lambda: AsymmetricLoss(),
    "db": lambda: DistributionBalancedLoss([5, 2, 9, 1], 12),
}

# 3 images x 4 classes; -1 = not annotated
TARGETS = torch.tensor([[1.0, -1.0, 0.0, -1.0], [-1.0, 0.0, -1.0, 1.0], [0.0, -1.0, -1.0, -1.0]])
LOGITS = torch.tensor(
    [[2.0, 3.0, -1.0, -2.5], [0.5, 1.0, -0.3, 0.0], [-1.0, 1.5, -4.0, 0.8]], dtype=torch.float64
)  # un-annotated logits by rank: (0,1)=3.0 > (2,1)=1.5 > (2,3)=0.8 > (1,0)=0.5 > (1,2)=-0.3 > (0,3)=-2.5 > (2,2)=-4


def _batch(seed: int, batch: int = 5, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(batch, classes, generator=g) < 0.4).to(torch.float64)
    targets[torch.rand(batch, classes, generator=g) < 0.4] = -1.0
    return logits, targets


@pytest.mark.parametrize("name", list(BASES))
def test_negative_mode_is_base_loss_with_unknown_as_absent(name):
    base = BASES[name]()
    logits, targets = _batch(0)
    wrapped = PartialAnnotationLoss(base, mode="negative")
    assert_close(wrapped(logits, targets), base(logits, targets.clamp(min=0)))
    new_targets, weights = wrapped.resolve(logits, targets)
    assert_close(new_targets, targets.clamp(min=0)) and weights is None


@pytest.mark.parametrize("name", list(BASES))
def test_ignore_mode_is_the_base_loss_own_handling_of_unknown(name):
    base = BASES[name]()
    logits, targets = _batch(1)
    wrapped = PartialAnnotationLoss(base, mode="ignore")
    assert_close(wrapped(logits, targets), base(logits, targets))
    new_targets, weights = wrapped.resolve(logits, targets)
    assert_close(new_targets, targets) and weights is None


def test_selective_with_fixed_prior_ignores_exactly_the_expected_entries():
    # prior > 0.05 for classes 0 and 2: their un-annotated entries (1,0), (1,2), (2,2) are ignored.
    # likelihood_topk=1 and B=3: K=3 top un-annotated logits (0,1), (2,1), (2,3) are ignored too (union).
    loss = PartialAnnotationLoss(
        BinaryCrossEntropyLoss(), mode="selective", prior=[0.3, 0.01, 0.06, 0.04], likelihood_topk=1
    )
    new_targets, weights = loss.resolve(LOGITS, TARGETS)
    expected = torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 0.0, -1.0, 1.0], [0.0, -1.0, -1.0, -1.0]])
    assert_close(new_targets, expected.double()) and weights is None
    # K counts over all un-annotated entries: with K=4 the next one is (1,0), already ignored for its prior,
    # so (0,3) stays a negative (as the official negative_backprop_fun_jit)
    loss.likelihood_topk = 4 / 3
    assert_close(loss.resolve(LOGITS, TARGETS)[0], expected.double())
    loss.likelihood_topk = 5 / 3  # K=5: (1,2) is also prior-ignored; still only those six
    assert_close(loss.resolve(LOGITS, TARGETS)[0], expected.double())
    loss.likelihood_topk = 2  # K=6: (0,3) joins
    expected[0, 3] = -1.0
    assert_close(loss.resolve(LOGITS, TARGETS)[0], expected.double())
    loss.likelihood_topk = 50  # more than there are: all un-annotated ignored, like "ignore"
    assert_close(loss.resolve(LOGITS, TARGETS)[0], TARGETS.double())


def test_selective_likelihood_only_and_prior_only():
    likelihood_only = PartialAnnotationLoss(BinaryCrossEntropyLoss(), mode="selective", likelihood_topk=1)
    assert likelihood_only.selection_prior() is None
    expected = TARGETS.clamp(min=0).double()
    for row, col in ((0, 1), (2, 1), (2, 3)):
        expected[row, col] = -1.0
    assert_close(likelihood_only.resolve(LOGITS, TARGETS)[0], expected)
    prior_only = PartialAnnotationLoss(
        BinaryCrossEntropyLoss(), mode="selective", prior=[0.3, 0.01, 0.06, 0.04], likelihood_topk=0
    )
    expected = TARGETS.clamp(min=0).double()
    for row, col in ((1, 0), (1, 2), (2, 2)):
        expected[row, col] = -1.0
    assert_close(prior_only.resolve(LOGITS, TARGETS)[0], expected)
    # the loss is the base loss on those targets
    assert_close(prior_only(LOGITS, TARGETS), BinaryCrossEntropyLoss()(LOGITS, expected))


def test_unannotated_weight_scales_only_unknown_entries_treated_as_negative():
    base = BinaryCrossEntropyLoss(reduction="sum")
    loss = PartialAnnotationLoss(
        base, mode="selective", prior=[0.3, 0.01, 0.06, 0.04], likelihood_topk=1, unannotated_weight=0.25
    )
    new_targets, weights = loss.resolve(LOGITS, TARGETS)
    expected = torch.ones(3, 4, dtype=torch.float64)
    expected[0, 3] = 0.25  # the one un-annotated entry kept as a negative
    assert_close(weights, expected)
    per_entry = BinaryCrossEntropyLoss(reduction="none")(LOGITS, new_targets)
    assert_close(loss(LOGITS, TARGETS), (per_entry * expected).sum())
    # caller weights multiply in
    caller = torch.full((3, 4), 2.0, dtype=torch.float64)
    assert_close(loss.resolve(LOGITS, TARGETS, caller)[1], 2 * expected)


def test_prior_estimate_is_the_mean_of_sigmoids_over_training_batches():
    loss = PartialAnnotationLoss(AsymmetricLoss(), mode="selective", likelihood_topk=1)
    assert loss.prior_estimate() is None
    batches = [_batch(seed, batch=b) for seed, b in ((2, 3), (3, 5), (4, 2))]
    for logits, targets in batches:
        loss(logits.float(), targets)  # float32 logits: the estimate is still accumulated in float64
    rows = [row for logits, _ in batches for row in logits.float().double().tolist()]
    hand = [sum(1 / (1 + math.exp(-row[c])) for row in rows) / len(rows) for c in range(4)]
    assert_close(loss.prior_estimate(), torch.tensor(hand, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    # evaluation mode does not update it
    loss.eval()
    loss(torch.full((4, 4), 9.0), torch.zeros(4, 4))
    assert_close(loss.prior_estimate(), torch.tensor(hand, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    loss.train()
    # first epoch: nothing frozen yet -> likelihood rule only
    assert loss.selection_prior() is None
    loss.start_epoch()
    assert_close(loss.selection_prior(), torch.tensor(hand, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert loss.prior_estimate() is None  # new epoch, new running mean
    # a start_epoch without batches keeps the frozen estimate
    loss.start_epoch()
    assert_close(loss.selection_prior(), torch.tensor(hand, dtype=torch.float64), rtol=1e-14, atol=1e-14)


def test_frozen_estimate_drives_the_class_rule():
    loss = PartialAnnotationLoss(
        BinaryCrossEntropyLoss(), mode="selective", likelihood_topk=0, prior_threshold=0.5
    )
    # epoch 0: class 0 predicted present (p ~ 1), the others absent (p ~ 0)
    loss(torch.tensor([[20.0, -20.0, -20.0, -20.0]] * 4, dtype=torch.float64), torch.zeros(4, 4))
    before = loss.resolve(LOGITS, TARGETS)[0]
    assert_close(before, TARGETS.clamp(min=0).double())  # no prior yet, K = 0: all un-annotated are negatives
    loss.start_epoch()
    after = loss.resolve(LOGITS, TARGETS)[0]
    expected = TARGETS.clamp(min=0).double()
    expected[1, 0] = -1.0  # the only un-annotated entry of class 0
    assert_close(after, expected)


def test_state_dict_round_trip_keeps_the_prior_and_the_selection():
    loss = PartialAnnotationLoss(create_loss("asl"), mode="selective", likelihood_topk=1, prior_threshold=0.4)
    for seed in (5, 6):
        loss(*_batch(seed))
    loss.start_epoch()
    loss(*_batch(7))  # running sums mid-epoch
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert {"prior_sum", "prior_rows", "epoch_prior", "epoch_prior_rows"} <= set(state)
    fresh = PartialAnnotationLoss(
        create_loss("asl"), mode="selective", likelihood_topk=1, prior_threshold=0.4
    )
    assert fresh.prior_sum.numel() == 0  # sized lazily, by the checkpoint here
    fresh.load_state_dict(state)
    saved_prior = loss.selection_prior()
    assert saved_prior is not None
    saved_prior = saved_prior.clone()
    assert_close(fresh.selection_prior(), saved_prior, rtol=0, atol=0)
    assert_close(fresh.prior_estimate(), loss.prior_estimate(), rtol=0, atol=0)
    logits, targets = _batch(8)
    assert_close(fresh.resolve(logits, targets)[0], loss.resolve(logits, targets)[0])
    fresh.start_epoch()
    loss.start_epoch()
    assert_close(fresh.selection_prior(), loss.selection_prior(), rtol=0, atol=0)
    sized = PartialAnnotationLoss(create_loss("asl"), num_classes=4)
    sized.load_state_dict(state)
    assert_close(sized.selection_prior(), saved_prior, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["negative", "ignore", "selective"])
@pytest.mark.parametrize("name", ["bce", "asl", "db"])
def test_gradcheck_and_zero_gradient_on_ignored_entries(mode, name):
    loss = PartialAnnotationLoss(BASES[name](), mode=mode, prior=[0.3, 0.01, 0.06, 0.04], likelihood_topk=0.5)
    loss.eval()
    logits, targets = _batch(9, batch=6)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    loss(logits, targets).backward()
    ignored = loss.resolve(logits, targets)[0] == -1
    assert bool((logits.grad[ignored] == 0).all())
    assert bool((logits.grad[~ignored] != 0).any())


def test_errors():
    base = BinaryCrossEntropyLoss()
    with pytest.raises(TypeError, match=r"base must be an nn\.Module"):
        PartialAnnotationLoss(lambda z, t: z.sum())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        PartialAnnotationLoss(base, mode="positive")
    with pytest.raises(ValueError, match=r"prior must hold probabilities in \[0, 1\]; got 1.5 for class 1"):
        PartialAnnotationLoss(base, prior=[0.1, 1.5])
    with pytest.raises(ValueError, match="prior has 2 entries but logits have 4 classes"):
        PartialAnnotationLoss(base, prior=[0.1, 0.5])(LOGITS, TARGETS)
    with pytest.raises(ValueError, match="prior has 2 entries but num_classes is 4"):
        PartialAnnotationLoss(base, prior=[0.1, 0.5], num_classes=4)
    with pytest.raises(ValueError, match="logits have 4 classes but this loss tracks a prior over 3"):
        PartialAnnotationLoss(base, num_classes=3)(LOGITS, TARGETS)
    with pytest.raises(ValueError, match="likelihood_topk"):
        PartialAnnotationLoss(base, likelihood_topk=-1)
    with pytest.raises(ValueError, match="prior_threshold"):
        PartialAnnotationLoss(base, prior_threshold=2.0)
    with pytest.raises(ValueError, match="unannotated_weight"):
        PartialAnnotationLoss(base, unannotated_weight=float("nan"))
    with pytest.raises(
        ValueError, match=r"targets must have shape \(B, C\) = \(3, 4\) like logits, got \(3, 3\)"
    ):
        PartialAnnotationLoss(base)(LOGITS, TARGETS[:, :3])
