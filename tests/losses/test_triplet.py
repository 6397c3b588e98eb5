from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from torch.testing import assert_close

from frugalvision.losses import (
    TripletMarginLoss,
    all_triplets,
    create_loss,
    loss_param_groups,
    triplet_margin_loss,
)
from frugalvision.losses.distances import pairwise_distance

LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 0, 4, 2, 1, 3, 0, 4, 5, 2, 2, 1])
MARGIN = 0.3


def _pml_distance(name: str) -> pml_distances.BaseDistance:
    return {
        "euclidean": pml_distances.LpDistance(),
        "squared_euclidean": pml_distances.LpDistance(power=2),
        "cosine": pml_distances.CosineSimilarity(),
    }[name]


def _pml_triplet(
    x: torch.Tensor, mining: str, distance: str, swap: bool, smooth: bool = False
) -> torch.Tensor:
    pml_dist = _pml_distance(distance)
    loss = pml_losses.TripletMarginLoss(margin=MARGIN, swap=swap, smooth_loss=smooth, distance=pml_dist)
    if mining == "all":
        indices = None  # pml's default: every triplet, AvgNonZeroReducer
    elif mining == "semihard":
        indices = pml_miners.TripletMarginMiner(
            margin=MARGIN, type_of_triplets="semihard", distance=pml_dist
        )(x, LABELS)
    else:
        indices = pml_miners.BatchHardMiner(distance=pml_dist)(x, LABELS)
    return loss(x, LABELS, indices)


@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
def test_matches_pml_value_and_gradient(mining, distance, swap, dtype, tol, make_inputs) -> None:
    ours_x, ref_x = make_inputs(len(LABELS), 6, dtype)
    ours = triplet_margin_loss(ours_x, LABELS, margin=MARGIN, mining=mining, distance=distance, swap=swap)
    ref = _pml_triplet(ref_x, mining, distance, swap)
    assert float(ref.detach()) > 0
    assert_close(ours, ref, **tol)
    ours.backward()
    ref.backward()
    assert_close(ours_x.grad, ref_x.grad, **tol)


def test_batch_all_equals_pml_margin_miner_all(make_inputs) -> None:
    ours_x, ref_x = make_inputs(len(LABELS), 6, torch.float64)
    miner = pml_miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="all")
    ref = pml_losses.TripletMarginLoss(margin=MARGIN)(ref_x, LABELS, miner(ref_x, LABELS))
    assert_close(triplet_margin_loss(ours_x, LABELS, margin=MARGIN), ref)


def test_smooth_and_mean_reduction_match_pml(make_inputs) -> None:
    ours_x, ref_x = make_inputs(len(LABELS), 6, torch.float64)
    ours = triplet_margin_loss(ours_x, LABELS, margin=MARGIN, mining="hard", smooth=True, reduction="mean")
    ref = pml_losses.TripletMarginLoss(margin=MARGIN, smooth_loss=True, reducer=pml_reducers.MeanReducer())(
        ref_x, LABELS, pml_miners.BatchHardMiner()(ref_x, LABELS)
    )
    assert_close(ours, ref)
    ours.backward()
    ref.backward()
    assert_close(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "nonzero_mean"])
def test_batch_all_equals_loop_over_mined_indices(reduction) -> None:
    x = torch.randn(len(LABELS), 5, dtype=torch.float64)
    d = pairwise_distance(x)
    a, p, n = all_triplets(LABELS)
    per = torch.relu(d[a, p] - d[a, n] + MARGIN)
    expected = {"mean": per.mean(), "sum": per.sum(), "nonzero_mean": per[per > 0].mean()}[reduction]
    assert_close(triplet_margin_loss(x, LABELS, margin=MARGIN, reduction=reduction), expected)


@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
def test_gradcheck(mining) -> None:
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    labels = LABELS[:10]
    assert torch.autograd.gradcheck(lambda e: triplet_margin_loss(e, labels, margin=0.5, mining=mining), (x,))


@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
@pytest.mark.parametrize(
    "labels", [torch.arange(6), torch.zeros(6, dtype=torch.long)], ids=["distinct", "one_class"]
)
def test_no_valid_triplet_gives_zero_with_gradient(mining, labels) -> None:
    x = torch.randn(6, 4, requires_grad=True)
    loss = triplet_margin_loss(x, labels, mining=mining)
    assert loss.shape == () and float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
@pytest.mark.parametrize("normalize", [True, False])
def test_stable_for_large_norms_and_duplicates(mining, normalize) -> None:
    x = torch.randn(12, 8) * 1e4
    x[1] = x[0]  # identical positive pair: zero distance
    x.requires_grad_(True)
    loss = triplet_margin_loss(x, LABELS[:12], mining=mining, normalize=normalize)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_module_equals_function_and_registry() -> None:
    x = torch.randn(len(LABELS), 6)
    kwargs = {"margin": 0.1, "mining": "semihard", "distance": "cosine", "swap": True}
    expected = triplet_margin_loss(x, LABELS, **kwargs)
    assert_close(TripletMarginLoss(**kwargs)(x, LABELS), expected)
    for name in ("triplet", "triplet_margin", "Triplet"):
        loss = create_loss(name, **kwargs)
        assert isinstance(loss, TripletMarginLoss)
        assert_close(loss(x, LABELS), expected)
    assert loss_param_groups(TripletMarginLoss(), base_lr=0.1) == []
    assert "semihard" in repr(TripletMarginLoss(mining="semihard"))


def test_errors() -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        triplet_margin_loss(x[:1], y[:1])
    with pytest.raises(ValueError, match="one entry per row"):
        triplet_margin_loss(x, y[:3])
    with pytest.raises(ValueError, match="1-D"):
        triplet_margin_loss(x, y.unsqueeze(1))
    with pytest.raises(TypeError, match="integer"):
        triplet_margin_loss(x, y.float())
    with pytest.raises(ValueError, match="2-D"):
        triplet_margin_loss(x[0], y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        triplet_margin_loss(torch.tensor([[0.0, float("nan")]] * 4), y)
    with pytest.raises(ValueError, match="mining"):
        triplet_margin_loss(x, y, mining="easy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        TripletMarginLoss(reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin"):
        TripletMarginLoss(margin=-0.1)
    with pytest.raises(ValueError, match=">= 0"):
        triplet_margin_loss(x, torch.tensor([0, -1, 1, 1]))


def test_fast_finiteness_check_accepts_huge_finite_values_and_catches_inf() -> None:
    from frugalvision.losses._base import check_embeddings

    check_embeddings(torch.full((4, 2), 3e38))  # the sum overflows, every value is finite
    bad = torch.full((4, 2), 3e38)
    bad[2, 1] = float("-inf")
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        check_embeddings(bad)
