from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from frugalvision.data import read_folder
from frugalvision.errors import DataError
from frugalvision.train.data import FeatureItems, LabelledDataModule, collate_labelled, split_dataset
from frugalvision.train.samplers import SeededItems


def test_class_split_is_disjoint_and_relabelled(labelled_folder: Path) -> None:
    dataset = read_folder(labelled_folder)
    train, val = split_dataset(dataset, "classes", 0.25, seed=0)
    assert val is not None and len(train.classes) == 6 and len(val.classes) == 2
    assert not set(train.classes) & set(val.classes)
    assert sorted(train.labels.tolist()) == sorted(np.repeat(np.arange(6), 5).tolist())
    for split in (train, val):  # labels index the split's own class names
        names = [split.classes[y] for y in split.labels]
        assert names == [p.parent.name for p in split.dataset.paths]
    again, _ = split_dataset(dataset, "classes", 0.25, seed=0)
    other, _ = split_dataset(dataset, "classes", 0.25, seed=1)
    assert again.classes == train.classes and other.classes != train.classes


def test_image_split_keeps_every_class_on_both_sides(labelled_folder: Path) -> None:
    train, val = split_dataset(read_folder(labelled_folder), "images", 0.4, seed=0)
    assert val is not None and train.classes == val.classes
    assert np.bincount(val.labels).tolist() == [2] * 8 and np.bincount(train.labels).tolist() == [3] * 8
    assert not {str(p) for p in train.dataset.paths} & {str(p) for p in val.dataset.paths}
    full, none = split_dataset(read_folder(labelled_folder), "none", 0.2, seed=0)
    assert none is None and len(full.labels) == 40


def test_split_errors(labelled_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2 training classes"):
        split_dataset(read_folder(labelled_folder), "classes", 0.9, seed=0)
    for c in range(3):  # one image per class: no class of the validation split can be retrieved
        (tmp_path / f"c{c}").mkdir()
        (tmp_path / f"c{c}" / "a.png").write_bytes((labelled_folder / "class00" / "img0.png").read_bytes())
    with pytest.raises(DataError, match="no class with 2 or more images"):
        split_dataset(read_folder(tmp_path), "classes", 0.34, seed=0)


def test_collate_drops_unreadable_items() -> None:
    batch = collate_labelled(
        [
            {"image": torch.ones(2), "index": 0, "label": 3},
            {"image": None, "index": 1, "label": 4, "error": "broken.jpg: not an image"},
            {"image": torch.zeros(2), "index": 2, "label": 5},
        ]
    )
    assert (
        batch["image"].shape == (2, 2)
        and batch["label"].tolist() == [3, 5]
        and batch["index"].tolist() == [0, 2]
    )
    assert batch["skipped"] == [(1, "broken.jpg: not an image")]


def test_datamodule_takes_world_and_epoch_from_the_trainer() -> None:
    items = SeededItems(
        FeatureItems(np.random.default_rng(0).normal(size=(24, 4))), np.repeat(np.arange(6), 4)
    )
    dm = LabelledDataModule(
        items,
        items,
        batch_size=4,
        m_per_class=2,
        eval_batch_size=5,
        seed=0,
        num_workers=0,
        steps_per_epoch=None,
    )
    progress = SimpleNamespace(current=SimpleNamespace(processed=3))
    dm.trainer = SimpleNamespace(
        world_size=2, global_rank=1, fit_loop=SimpleNamespace(epoch_progress=progress)
    )  # type: ignore[assignment]
    loader = dm.train_dataloader()
    assert dm.train_sampler is not None and dm.train_sampler.epoch == 3 and dm.train_sampler.rank == 1
    assert len(loader) == 24 // (4 * 2)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 4) and len(set(batch["label"].tolist())) == 2
    val_indices = [i for b in dm.val_dataloader() for i in b["index"].tolist()]
    assert val_indices == list(range(1, 24, 2))  # rank 1's shard


def test_loader_skips_or_fails_on_long_images(
    labelled_folder: Path, tmp_path: Path, long_png, bounded_resize
) -> None:
    """Training and validation items of a 1 x 30000 PNG: skipped from the header, or an ImageTooLargeError
    (issue 12, item 1). Before the fix the evaluation transform resized it to 36 x 1,080,000 pixels at 32 px."""
    from torch.utils.data import DataLoader

    from frugalvision.data import ImageDataset, Sample
    from frugalvision.errors import ImageTooLargeError
    from frugalvision.models import create_backbone
    from frugalvision.train.config import AugmentConfig
    from frugalvision.train.recipes import train_transform

    model = create_backbone("test_efficientnet", pretrained=False)
    model.data_config["input_size"] = (3, 32, 32)
    long = long_png(1, 30000)
    paths = [*sorted(labelled_folder.rglob("*.png"))[:3], long]
    transforms = {
        "eval": model.transform(),
        "no-augment": train_transform(model.data_config, AugmentConfig(random_crop=False)),
        "augment": train_transform(model.data_config, AugmentConfig()),
    }
    for name, transform in transforms.items():
        ds = ImageDataset([Sample(p, (0,)) for p in paths], ["a"], transform=transform)
        loader = DataLoader(SeededItems(ds, [0] * 4), batch_size=4, collate_fn=collate_labelled)
        batch = next(iter(loader))
        assert batch["image"].shape == (3, 3, 32, 32), name
        assert batch["skipped"] == [(3, f"{long}: 1x30000 pixels has an aspect ratio of 30000:1, over the limit of "
                                       "50:1 (preprocessing would scale its shorter side up to the model's input "
                                       "size)")], name  # fmt: skip
        strict = ImageDataset([Sample(p, (0,)) for p in paths], ["a"], transform=transform, on_corrupt="fail")
        with pytest.raises(ImageTooLargeError, match=rf"^{long}: 1x30000"):
            next(iter(DataLoader(SeededItems(strict, [0] * 4), batch_size=4, collate_fn=collate_labelled)))
