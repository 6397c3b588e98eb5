"""Sample, ImageDataset and collate_images, including skip/fail through a real DataLoader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import PILToTensor

from frugalvision.data import ImageDataset, Sample, collate_images
from frugalvision.errors import CorruptImageError, ImageFileMissingError


@pytest.fixture
def mixed(tmp_path: Path, write_image) -> ImageDataset:
    """6 images, three classes; index 2 is a text file named .jpg and index 4 is missing."""
    paths = [write_image(tmp_path / f"{i}.png", color=(i * 10, 0, 0)) for i in range(6)]
    paths[2] = tmp_path / "bad.jpg"
    paths[2].write_text("not an image")
    paths[4] = tmp_path / "gone.png"
    labels = [(0,), (1,), (2,), (0, 2), (), (1,)]
    samples = [Sample(p, lab) for p, lab in zip(paths, labels, strict=True)]
    return ImageDataset(samples, ["cat", "dog", "emu"], multilabel=True, source="test")


def test_sample_normalises_and_freezes(tmp_path: Path) -> None:
    s = Sample(
        str(tmp_path / "a.jpg"), [np.int64(2), 0], boxes=[[0, 0, 1, 1], [1, 1, 3, 4]], box_labels=[2, 0]
    )
    assert s.path == tmp_path / "a.jpg"
    assert s.labels == (2, 0)
    assert s.boxes is not None and s.box_labels is not None
    assert s.boxes.dtype == np.float32 and s.boxes.shape == (2, 4)
    assert s.box_labels.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        s.boxes[0, 0] = 5
    assert s == Sample(tmp_path / "a.jpg", (2, 0), boxes=s.boxes.copy(), box_labels=[2, 0])
    assert s != Sample(tmp_path / "a.jpg", (2, 0), boxes=[[0, 0, 1, 1], [1, 1, 3, 5]], box_labels=[2, 0])
    assert Sample(tmp_path, (), boxes=[], box_labels=[]).boxes.shape == (0, 4)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"boxes": [[0, 0, 1, 1]]}, ValueError, "both"),
        ({"boxes": [[0, 0, 1]], "box_labels": [0]}, ValueError, r"\(N, 4\)"),
        ({"boxes": [[0, 0, 1, 1]], "box_labels": [0, 1]}, ValueError, "box_labels"),
        ({"labels": (0.5,)}, TypeError, "integer"),
    ],
)
def test_sample_rejects_bad_fields(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Sample(Path("a.jpg"), **kwargs)


def test_dataset_rejects_bad_labels_and_options() -> None:
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        ImageDataset([Sample(Path("a.jpg"), (3,))], ["a", "b", "c"])
    with pytest.raises(ValueError, match="class index 5"):
        ImageDataset([Sample(Path("a.jpg"), (), boxes=[[0, 0, 1, 1]], box_labels=[5])], ["a"])
    with pytest.raises(ValueError, match="multilabel=True"):
        ImageDataset([Sample(Path("a.jpg"), (0, 1))], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        ImageDataset([], ["a", "a"])
    with pytest.raises(ValueError, match="on_corrupt"):
        ImageDataset([], ["a"], on_corrupt="ignore")  # type: ignore[arg-type]


def test_label_views(mixed: ImageDataset) -> None:
    assert len(mixed) == 6
    assert mixed.classes == ["cat", "dog", "emu"]
    assert mixed.paths[4].name == "gone.png"
    assert mixed.label_names(3) == ("cat", "emu")
    np.testing.assert_array_equal(mixed.primary_labels(), [0, 1, 2, 0, -1, 1])
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(mixed.label_matrix(), expected)
    assert mixed.label_matrix(bool).dtype == np.bool_
    assert mixed.class_counts() == {"cat": 2, "dog": 2, "emu": 2}
    assert repr(mixed) == (
        "ImageDataset(6 images, 3 classes, multi-label, 1 without labels, source='test', on_corrupt='skip')"
    )


def test_getitem_skip_and_fail(mixed: ImageDataset) -> None:
    item = mixed[0]
    assert set(item) == {"image", "index"} and item["index"] == 0
    assert isinstance(item["image"], Image.Image) and item["image"].getpixel((0, 0)) == (0, 0, 0)
    assert mixed[-1]["index"] == 5
    bad = mixed[2]
    assert bad["image"] is None and bad["index"] == 2 and "bad.jpg" in bad["error"]
    assert "gone.png" in mixed[4]["error"]
    with pytest.raises(IndexError):
        mixed[6]

    strict = ImageDataset(mixed.samples, mixed.classes, on_corrupt="fail", multilabel=True)
    with pytest.raises(CorruptImageError, match=r"bad\.jpg"):
        strict[2]
    with pytest.raises(ImageFileMissingError, match=r"gone\.png"):
        strict[4]


def test_with_transform_and_subset_share_samples(mixed: ImageDataset) -> None:
    tensors = mixed.with_transform(PILToTensor())
    assert isinstance(tensors[0]["image"], torch.Tensor) and mixed.transform is None
    assert tensors.samples is mixed.samples

    sub = mixed.subset([5, 0])
    assert sub.paths == [mixed.paths[5], mixed.paths[0]]
    assert sub[0]["index"] == 0  # indices are positions in the subset
    assert "subset of 2" in sub.source
    mask = np.zeros(6, dtype=bool)
    mask[[1, 3]] = True
    assert mixed.subset(mask).paths == [mixed.paths[1], mixed.paths[3]]
    with pytest.raises(IndexError):
        mixed.subset([6])
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        mixed.subset(np.ones(3, dtype=bool))


def test_collate_images() -> None:
    batch = [
        {"image": torch.zeros(3, 2, 2), "index": 4},
        {"image": None, "index": 7, "error": "corrupt image x.jpg"},
        {"image": torch.ones(3, 2, 2), "index": 9},
    ]
    out = collate_images(batch)
    assert out["image"].shape == (3 - 1, 3, 2, 2)
    torch.testing.assert_close(out["image"][1], torch.ones(3, 2, 2))
    torch.testing.assert_close(out["index"], torch.tensor([4, 9]))
    assert out["skipped"] == [(7, "corrupt image x.jpg")]

    empty = collate_images([batch[1]])
    assert empty["image"] is None and empty["index"].dtype == torch.long and empty["index"].numel() == 0
    with pytest.raises(TypeError, match="transform"):
        collate_images([{"image": Image.new("RGB", (2, 2)), "index": 0}])
    assert pickle.loads(pickle.dumps(collate_images)) is collate_images


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_skips_bad_images(mixed: ImageDataset, num_workers: int) -> None:
    ds = mixed.with_transform(PILToTensor())
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=collate_images)
    indices, skipped, images = [], [], []
    for batch in loader:
        indices += batch["index"].tolist()
        skipped += batch["skipped"]
        images.append(batch["image"])
    assert indices == [0, 1, 3, 5]
    assert [i for i, _ in skipped] == [2, 4]
    assert "bad.jpg" in skipped[0][1] and "gone.png" in skipped[1][1]
    reds = torch.cat(images)[:, 0, 0, 0]
    torch.testing.assert_close(reds, torch.tensor([0, 10, 30, 50], dtype=torch.uint8))


def test_dataloader_fail_policy_raises(mixed: ImageDataset) -> None:
    ds = ImageDataset(
        mixed.samples, mixed.classes, transform=PILToTensor(), on_corrupt="fail", multilabel=True
    )
    loader = DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate_images)
    with pytest.raises(CorruptImageError, match=r"bad\.jpg"):
        list(loader)


def test_find_corrupt(mixed: ImageDataset) -> None:
    bad = mixed.find_corrupt(progress=False)
    assert [p.name for p, _ in bad] == ["bad.jpg", "gone.png"]
    assert "not a recognised image format" in bad[0][1] and "not found" in bad[1][1]


def test_dataset_pickles(mixed: ImageDataset) -> None:
    copy = pickle.loads(pickle.dumps(mixed.with_transform(PILToTensor())))
    assert copy.samples == mixed.samples and copy.classes == mixed.classes
    assert copy[1]["image"].shape == (3, 6, 8)


def test_transform_resize_is_checked_before_decoding(tmp_path: Path, long_png, bounded_resize) -> None:
    """The data set reads the resize step of its transform (issue 12, item 1): a 20 x 1000 image (50:1, allowed) that
    ``Resize(1000)`` would bring to 1000 x 50000 pixels is refused like a corrupt one, before it is decoded."""
    from torchvision import transforms as T

    from frugalvision.errors import ImageTooLargeError

    thin, square = long_png(20, 1000), long_png(30, 30)
    transform = T.Compose([T.Resize(1000), T.CenterCrop(8), PILToTensor()])
    ds = ImageDataset([Sample(square), Sample(thin)], [], transform=transform)
    assert ds[0]["image"].shape == (3, 8, 8)
    item = ds[1]
    assert item["image"] is None and item["error"] == (
        f"{thin}: 20x1000 pixels would be resized to 1000x50000 = 50,000,000 pixels, over the limit of 40,000,000"
    )
    assert ds.find_corrupt(progress=False) == [(thin, item["error"])]
    with pytest.raises(ImageTooLargeError, match=r"1000x50000"):
        ImageDataset([Sample(thin)], [], transform=transform, on_corrupt="fail")[0]
    assert ImageDataset([Sample(thin)], [])[0]["image"].size == (20, 1000)  # no transform: nothing to resize


def test_load_for_transform_checks_the_resize_before_decoding(long_png, bounded_resize) -> None:
    """A single image (a search query, a tagger's input) is checked against its transform's resize step: 40 x 2000
    is within the 50:1 aspect limit, but ``Resize(2048)`` would make it 2048 x 102400 (210 MP)."""
    from torchvision import transforms

    from frugalvision.data import load_for_transform
    from frugalvision.errors import ImageTooLargeError

    path = long_png(40, 2000)
    with pytest.raises(
        ImageTooLargeError, match=r"long-40x2000\.png: 40x2000 pixels would be resized to 2048x102400"
    ):
        load_for_transform(path, transforms.Resize(2048))
    ok = load_for_transform(
        long_png(20, 40), transforms.Compose([transforms.Resize(8), transforms.ToTensor()])
    )
    assert tuple(ok.shape) == (3, 16, 8)  # load_image gives RGB
