"""read_folder: class-per-folder trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from frugalvision.data import read_folder
from frugalvision.errors import DataError


def test_happy_path_is_sorted_recursive_and_skips_hidden(tmp_path: Path, write_image) -> None:
    root = tmp_path / "ds"
    for rel in ["dog/b.jpg", "dog/a.PNG", "cat/z.png", "cat/sub/deeper/y.jpeg", "cat/m.bmp"]:
        write_image(root / rel)
    write_image(root / "cat/.hidden.jpg")
    write_image(root / "cat/.cache/x.jpg")
    write_image(root / ".trash/x.jpg")
    (root / "cat/notes.txt").write_text("ignore me")
    (root / "cat/README").write_text("ignore me")

    ds = read_folder(root)
    assert ds.classes == ["cat", "dog"]
    rel = [p.relative_to(root).as_posix() for p in ds.paths]
    assert rel == ["cat/m.bmp", "cat/sub/deeper/y.jpeg", "cat/z.png", "dog/a.PNG", "dog/b.jpg"]
    assert [s.labels for s in ds.samples] == [(0,), (0,), (0,), (1,), (1,)]
    assert not ds.multilabel and ds.on_corrupt == "skip"
    assert ds.samples[0].boxes is None
    assert str(root) in repr(ds)
    assert read_folder(root).samples == ds.samples  # deterministic


def test_order_does_not_depend_on_creation_order(tmp_path: Path, write_image) -> None:
    names = ["b10.jpg", "a.jpg", "b2.jpg", "B.jpg"]
    for order, root in [(names, tmp_path / "one"), (names[::-1], tmp_path / "two")]:
        for n in order:
            write_image(root / "c" / n)
    one = [p.name for p in read_folder(tmp_path / "one").paths]
    two = [p.name for p in read_folder(tmp_path / "two").paths]
    assert one == two == sorted(names)


def test_extensions_option(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "c/a.png")
    write_image(tmp_path / "c/b.jpg")
    assert [p.name for p in read_folder(tmp_path, extensions=["PNG"]).paths] == ["a.png"]
    with pytest.raises(TypeError, match="sequence"):
        read_folder(tmp_path, extensions=".png")


def test_empty_class_folder_warns_and_keeps_the_class(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a/1.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "c/readme.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"2 class folder\(s\).*no images.*b, c"):
        ds = read_folder(tmp_path)
    assert ds.classes == ["a", "b", "c"]
    assert ds.class_counts() == {"a": 1, "b": 0, "c": 0}


def test_loose_images_warn(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a/1.png")
    write_image(tmp_path / "stray.jpg")
    with pytest.warns(UserWarning, match=r"1 image\(s\) directly under .*stray\.jpg"):
        assert len(read_folder(tmp_path)) == 1


def test_errors(tmp_path: Path, write_image) -> None:
    with pytest.raises(DataError, match=r"not found: .*missing"):
        read_folder(tmp_path / "missing")
    file = write_image(tmp_path / "file.png")
    with pytest.raises(DataError, match=r"must be a directory.*file\.png"):
        read_folder(file)
    flat = tmp_path / "flat"
    write_image(flat / "x.jpg")
    with pytest.raises(DataError, match=r"no class folders found in .*flat.*1 image\(s\) directly"):
        read_folder(flat)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b" / "deep").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images found in the 2 class folder\(s\) of .*empty"):
        read_folder(empty)
    with pytest.raises(ValueError, match="on_corrupt"):
        read_folder(flat, on_corrupt="warn")  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlinked_class_folder_is_read(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "store/cats/1.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds/cat").symlink_to(tmp_path / "store/cats", target_is_directory=True)
    assert [p.name for p in read_folder(tmp_path / "ds").paths] == ["1.png"]
