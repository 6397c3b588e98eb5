from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import QuadrupletLoss, create_loss, quadruplet_loss, triplet_margin_loss
from frugalvision.losses.distances import pairwise_distance

LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 4])


def _reduce(terms: list[torch.Tensor], reduction: str, like: torch.Tensor) -> torch.Tensor:
    if not terms:
        return like.sum() * 0
    t = torch.stack(terms)
    if reduction == "sum":
        return t.sum()
    if reduction == "mean":
        return t.mean()
    nonzero = t[t > 0]
    return nonzero.mean() if len(nonzero) else t.sum() * 0


def _loop_all(x, y, m1, m2, w, reduction, distance="squared_euclidean"):
    """The paper's equation term by term, over ordered index tuples."""
    d = pairwise_distance(x, distance=distance)
    n, yl = len(y), y.tolist()
    t1 = [
        torch.relu(d[i, j] - d[i, k] + m1)
        for i, j, k in itertools.product(range(n), repeat=3)
        if i != j and yl[i] == yl[j] and yl[k] != yl[i]
    ]
    t2 = [
        torch.relu(d[i, j] - d[m, k] + m2)
        for i, j, m, k in itertools.product(range(n), repeat=4)
        if i != j and yl[i] == yl[j] and yl[m] != yl[k] and yl[m] != yl[i] and yl[k] != yl[i]
    ]
    return _reduce(t1, reduction, x) + w * _reduce(t2, reduction, x)


def _loop_hard(x, y, m1, m2, reduction):
    d = pairwise_distance(x, distance="squared_euclidean")
    n, yl = len(y), y.tolist()
    t1, t2 = [], []
    for a in range(n):
        pos = [d[a, p] for p in range(n) if p != a and yl[p] == yl[a]]
        neg = [d[a, k] for k in range(n) if yl[k] != yl[a]]
        pairs = [
            d[m, k]
            for m, k in itertools.product(range(n), repeat=2)
            if yl[m] != yl[k] and yl[m] != yl[a] and yl[k] != yl[a]
        ]
        if pos and neg:
            t1.append(torch.relu(torch.stack(pos).max() - torch.stack(neg).min() + m1))
        if pos and pairs:
            t2.append(torch.relu(torch.stack(pos).max() - torch.stack(pairs).min() + m2))
    return _reduce(t1, reduction, x) + _reduce(t2, reduction, x)


@pytest.mark.parametrize("reduction", ["sum", "mean", "nonzero_mean"])
@pytest.mark.parametrize("margin2", [0.05, 0.8, 5.0])
def test_batch_all_matches_float64_loop(reduction, margin2) -> None:
    x = torch.randn(len(LABELS), 4, dtype=torch.float64, requires_grad=True)
    ours = quadruplet_loss(x, LABELS, margin1=0.3, margin2=margin2, pair_weight=0.7, reduction=reduction)
    ref = _loop_all(x, LABELS, 0.3, margin2, 0.7, reduction)
    assert_close(ours, ref)
    assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


@pytest.mark.parametrize("reduction", ["sum", "mean", "nonzero_mean"])
def test_batch_hard_matches_float64_loop(reduction) -> None:
    x = torch.randn(len(LABELS), 4, dtype=torch.float64, requires_grad=True)
    ours = quadruplet_loss(x, LABELS, margin1=0.3, margin2=0.6, mining="hard", reduction=reduction)
    ref = _loop_hard(x, LABELS, 0.3, 0.6, reduction)
    assert_close(ours, ref)
    assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


def test_float32_large_batch_matches_dense_enumeration() -> None:
    """The sorted/prefix-sum pair term in float32 against a dense (P, B, B) evaluation in float64."""
    labels = torch.arange(12).repeat_interleave(4)
    x = torch.randn(48, 16)
    ours = quadruplet_loss(x, labels, margin2=0.5, pair_weight=1.0, reduction="mean")
    d = pairwise_distance(x.double(), distance="squared_euclidean")
    a, p = (labels.unsqueeze(1) == labels.unsqueeze(0)).fill_diagonal_(False).nonzero(as_tuple=True)
    neg = labels.unsqueeze(1) != labels.unsqueeze(0)
    touch = labels[a].view(-1, 1, 1)
    valid = neg.unsqueeze(0) & (labels.view(1, -1, 1) != touch) & (labels.view(1, 1, -1) != touch)
    pair_terms = torch.relu(d[a, p].view(-1, 1, 1) - d.unsqueeze(0) + 0.5)
    expected_pair = pair_terms[valid].mean()
    triplet = triplet_margin_loss(x.double(), labels, distance="squared_euclidean", reduction="mean")
    assert_close(ours.double(), triplet + expected_pair, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_without_pair_term_equals_triplet(mining, distance) -> None:
    x = torch.randn(len(LABELS), 5, dtype=torch.float64)
    kwargs = {"distance": distance, "mining": mining, "reduction": "nonzero_mean"}
    expected = triplet_margin_loss(x, LABELS, margin=0.25, **kwargs)
    assert_close(quadruplet_loss(x, LABELS, margin1=0.25, pair_weight=0.0, **kwargs), expected)
    # with only two classes no (l, k) pair avoids the anchor's class: the second term vanishes
    two = (LABELS > 1).long()
    assert_close(
        quadruplet_loss(x, two, margin1=0.25, margin2=3.0, **kwargs),
        triplet_margin_loss(x, two, margin=0.25, **kwargs),
    )


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_gradcheck(mining) -> None:
    x = torch.randn(len(LABELS), 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: quadruplet_loss(e, LABELS, margin2=0.5, mining=mining), (x,))


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_no_positive_pair_gives_zero_with_gradient(mining) -> None:
    x = torch.randn(5, 3, requires_grad=True)
    loss = quadruplet_loss(x, torch.arange(5), mining=mining)
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None and float(x.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_stable_for_large_norms(mining) -> None:
    x = torch.randn(len(LABELS), 6) * 1e4
    x[1] = x[0]
    x.requires_grad_(True)
    loss = quadruplet_loss(x, LABELS, mining=mining, distance="euclidean", normalize=False)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_module_equals_function_and_registry() -> None:
    x = torch.randn(len(LABELS), 6)
    kwargs = {"margin1": 0.3, "margin2": 0.2, "pair_weight": 0.5, "mining": "hard"}
    expected = quadruplet_loss(x, LABELS, **kwargs)
    assert_close(QuadrupletLoss(**kwargs)(x, LABELS), expected)
    loss = create_loss("quadruplet", **kwargs)
    assert isinstance(loss, QuadrupletLoss)
    assert_close(loss(x, LABELS), expected)


def test_errors() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 2])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        quadruplet_loss(x[:1], y[:1])
    with pytest.raises(ValueError, match="mining"):
        quadruplet_loss(x, y, mining="semihard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin2"):
        QuadrupletLoss(margin2=-1.0)
    with pytest.raises(TypeError, match="integer"):
        quadruplet_loss(x, y.double())
