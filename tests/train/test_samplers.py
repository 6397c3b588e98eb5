from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from frugalvision.train import MPerClassSampler, SeededItems, ShardSampler

# 7 classes of 3..9 images, plus two unlabeled items (-1)
LABELS = np.array([c for c in range(7) for _ in range(3 + c)] + [-1, -1])


def test_every_batch_has_m_images_of_distinct_classes() -> None:
    sampler = MPerClassSampler(LABELS, m=3, batch_size=12, seed=1, num_batches=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        indices = [i for i, _ in batch]
        counts = Counter(LABELS[indices].tolist())
        assert len(indices) == 12 and len(counts) == 4 and set(counts.values()) == {3}
        assert -1 not in counts
        assert len(set(indices)) == 12  # every class has >= m images: no repeats inside a batch


def test_classes_are_balanced_and_images_cycle() -> None:
    sampler = MPerClassSampler(LABELS, m=2, batch_size=8, seed=0, num_batches=70)
    seen = Counter(LABELS[[i for b in sampler for i, _ in b]].tolist())
    assert max(seen.values()) - min(seen.values()) <= 8  # uniform over classes whatever their size
    # within a class, images come in shuffled cycles: class 6 (9 images) uses each one before repeating
    first_cycle = [i for b in sampler for i, _ in b if LABELS[i] == 6][:9]
    assert sorted(first_cycle) == np.flatnonzero(LABELS == 6).tolist()


def test_deterministic_per_epoch() -> None:
    a = MPerClassSampler(LABELS, m=2, batch_size=6, seed=3)
    b = MPerClassSampler(LABELS, m=2, batch_size=6, seed=3)
    assert list(a) == list(b) and list(a) == list(a)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    assert list(MPerClassSampler(LABELS, m=2, batch_size=6, seed=3, epoch=1)) != epoch0
    assert list(MPerClassSampler(LABELS, m=2, batch_size=6, seed=4)) != epoch0


@pytest.mark.parametrize("replicas", [2, 3])
def test_ddp_slices_are_disjoint_and_cover_the_epoch(replicas: int) -> None:
    kw = {"m": 2, "batch_size": 6, "seed": 5, "num_batches": 4, "num_replicas": replicas}
    ranks = [MPerClassSampler(LABELS, rank=r, **kw) for r in range(replicas)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert all(len(p) == 4 for p in per_rank)
    everything = ranks[0].global_batches()
    assert len(everything) == 4 * replicas
    # disjoint: no batch (identified by its position in the epoch) goes to two ranks; covering: all do go somewhere
    assert sorted(b for p in per_rank for b in map(tuple, p)) == sorted(map(tuple, everything))
    for r, p in enumerate(per_rank):
        assert p == everything[r::replicas]


def test_default_length_and_errors() -> None:
    assert len(MPerClassSampler(LABELS, m=2, batch_size=8)) == (LABELS >= 0).sum() // 8
    assert len(MPerClassSampler(LABELS, m=2, batch_size=8, num_replicas=2)) == (LABELS >= 0).sum() // 16
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(LABELS, m=3, batch_size=8)
    with pytest.raises(ValueError, match="needs 8 classes"):
        MPerClassSampler(LABELS, m=2, batch_size=16)
    with pytest.raises(ValueError, match="rank must be"):
        MPerClassSampler(LABELS, m=2, batch_size=8, num_replicas=2, rank=2)


def test_small_classes_repeat_images() -> None:
    labels = np.array([0, 1, 1, 1, 1])  # class 0 has a single image
    batch = next(iter(MPerClassSampler(labels, m=3, batch_size=6)))
    assert sorted(i for i, _ in batch).count(0) == 3


def test_shard_sampler_covers_every_item_once() -> None:
    shards = [list(ShardSampler(11, batch_size=3, num_replicas=3, rank=r)) for r in range(3)]
    items = sorted(i for s in shards for b in s for i in b)
    assert items == list(range(11)) and [len(s) for s in shards] == [2, 2, 1]


class _Noise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.rand(3) + np.random.rand()}  # noqa: NPY002  (draws from torch's and NumPy's global generators


def test_seeded_items_are_reproducible_and_leave_global_state_alone() -> None:
    items = SeededItems(_Noise(), [0, 0, 1, 1])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = items[(2, 11)], items[(2, 11)], items[(2, 12)]
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"]) and a["label"] == 1 and a["index"] == 2
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(
        SeededItems(_Noise(), [0] * 4, seeded=False)[(0, 1)]["image"], items[(0, 1)]["image"]
    )


def test_shuffle_sampler_visits_every_item_once_per_epoch_and_is_deterministic() -> None:
    from frugalvision.train.samplers import ShuffleSampler

    sampler = ShuffleSampler(20, batch_size=5, seed=3)
    batches = list(sampler)
    assert len(batches) == 4 and sorted(i for b in batches for i, _ in b) == list(range(20))
    assert batches == list(ShuffleSampler(20, batch_size=5, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ranks = [list(ShuffleSampler(20, batch_size=5, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    seen = [i for r in ranks for b in r for i, _ in b]
    assert sorted(seen) == list(range(20))  # the two ranks split one epoch


def test_class_aware_sampler_balances_a_long_tail() -> None:
    from frugalvision.train.samplers import ClassAwareSampler

    targets = np.zeros((200, 3), dtype=np.float32)
    targets[:190, 0] = 1  # head class: 190 images
    targets[190:198, 1] = 1  # 8 images
    targets[198:, 2] = 1  # tail: 2 images
    targets[0, 2] = -1  # unknown entries never make an item a member
    sampler = ClassAwareSampler(targets, batch_size=30, seed=0, num_batches=10)
    drawn = np.array([i for b in sampler for i, _ in b])
    per_class = [np.isin(drawn, np.flatnonzero(targets[:, c] == 1)).sum() for c in range(3)]
    assert per_class == [100, 100, 100]  # a uniform class cycle: each class a third of the draws
    assert set(drawn[np.isin(drawn, [198, 199])]) == {198, 199}
    assert list(sampler) == list(ClassAwareSampler(targets, batch_size=30, seed=0, num_batches=10))
    with pytest.raises(ValueError, match="at least one class with a positive"):
        ClassAwareSampler(np.zeros((4, 2)), batch_size=2)
