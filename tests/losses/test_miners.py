from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from frugalvision.losses import (
    all_triplets,
    hard_triplets,
    pairwise_distance,
    positive_pairs,
    semihard_triplets,
)

LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0, 4])


def _stack(t: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack([x.long() for x in t])


def test_all_triplets_equal_brute_force_and_pml_order() -> None:
    expected = [
        [a, p, n]
        for a, p, n in itertools.product(range(len(LABELS)), repeat=3)
        if a != p and LABELS[a] == LABELS[p] and LABELS[n] != LABELS[a]
    ]
    got = _stack(all_triplets(LABELS))
    assert got.T.tolist() == expected
    assert torch.equal(got, _stack(lmu.get_all_triplets_indices(LABELS)))


def test_positive_pairs() -> None:
    a, p = positive_pairs(LABELS)
    expected = [
        (i, j)
        for i, j in itertools.product(range(len(LABELS)), repeat=2)
        if i != j and LABELS[i] == LABELS[j]
    ]
    assert list(zip(a.tolist(), p.tolist(), strict=True)) == expected


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_semihard_matches_pml_triplet_margin_miner(distance: str) -> None:
    x = torch.randn(len(LABELS), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_dist = pml_miners.TripletMarginMiner(
        margin=0.4, type_of_triplets="semihard", distance=_pml_distance(distance)
    )(x, LABELS)
    got = semihard_triplets(pairwise_distance(x, distance=distance), LABELS, 0.4)  # type: ignore[arg-type]
    assert got[0].numel() > 0
    assert torch.equal(_stack(got), _stack(ref_dist))


def test_hard_matches_pml_batch_hard_miner() -> None:
    x = torch.randn(len(LABELS), 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = pml_miners.BatchHardMiner()(x, LABELS)
    got = hard_triplets(pairwise_distance(x), LABELS)
    assert torch.equal(_stack(got), _stack(ref))
    # labels 2 and 4 are singletons: no positive, no triplet
    assert set(got[0].tolist()) == {0, 1, 2, 3, 4, 6, 7, 8}


def test_hard_picks_farthest_positive_and_closest_negative() -> None:
    dist = torch.tensor(
        [[0.0, 1.0, 3.0, 0.5], [1.0, 0.0, 0.2, 2.0], [3.0, 0.2, 0.0, 0.9], [0.5, 2.0, 0.9, 0.0]]
    )
    a, p, n = hard_triplets(dist, torch.tensor([0, 0, 0, 1]))
    assert a.tolist() == [0, 1, 2, 3][:3]
    assert p.tolist() == [2, 0, 0] and n.tolist() == [3, 3, 3]


def test_no_triplets() -> None:
    for labels in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        assert all(t.numel() == 0 for t in all_triplets(labels))
        assert all(t.numel() == 0 for t in hard_triplets(torch.rand(5, 5), labels))


def test_errors() -> None:
    with pytest.raises(ValueError, match="square"):
        hard_triplets(torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one entry per row"):
        hard_triplets(torch.rand(3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        all_triplets(torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        semihard_triplets(torch.rand(3, 3), torch.zeros(3, dtype=torch.long), 0.0)


def _pml_distance(name: str):
    from pytorch_metric_learning import distances

    return distances.CosineSimilarity() if name == "cosine" else distances.LpDistance()
