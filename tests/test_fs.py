"""frugalvision._fs: image listing, atomic writes, and the leftovers of killed saves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frugalvision._fs import IMAGE_EXTENSIONS, list_images, read_json, replacing_dir, write_text_atomic
from frugalvision.errors import DataError, StoreError


def dead_pid() -> int:
    """The id of a process that has exited (a killed writer's pid)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_list_images_walks_recursively_with_one_extension_set(tmp_path: Path) -> None:
    names = [
        "b/z.JPG",
        "a.png",
        "b/c/d.webp",
        "notes.txt",
        ".hidden.jpg",
        ".cache/x.jpg",
        "b/y.Tiff",
        "e.gif",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()  # a folder named like an image is not one
    expected = sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
        and not any(part.startswith(".") for part in p.relative_to(tmp_path).parts)
    )
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == expected
    assert expected == ["a.png", "b/c/d.webp", "b/y.Tiff", "b/z.JPG", "e.gif"]
    assert [p.name for p in list_images(tmp_path, ["PNG"])] == ["a.png"]
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def test_write_text_atomic_keeps_the_old_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "deploy.json"
    write_text_atomic(target, "old")
    assert target.read_text(encoding="utf-8") == "old"

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(target.parent) == ["deploy.json"], "no temporary file may be left behind"


def test_replacing_dir_swaps_the_folder_in_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with replacing_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError, match="killed"), replacing_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "1", "a failed save leaves the previous folder"
    assert sorted(os.listdir(tmp_path)) == ["model"], "and no temporary folder"


def test_leftovers_of_a_killed_folder_save_are_cleaned_by_the_next(tmp_path: Path) -> None:
    pid = dead_pid()
    ours = [f".model.tmp-{pid}-k2j4x9", f".model.old-{pid}"]
    others = [".model.tmp-notes", f".other.tmp-{pid}-abc", f".model.tmp-{os.getpid()}-live"]
    for name in ours + others:
        (tmp_path / name).mkdir()
    with replacing_dir(tmp_path / "model") as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["model", *others]
    )  # a running writer's and foreign folders stay


def test_read_json_names_the_file_of_bad_json(tmp_path: Path) -> None:
    good = tmp_path / "info.json"
    good.write_text('{"format": 2, "name": "caf\u00e9"}', encoding="utf-8")
    assert read_json(good) == {"format": 2, "name": "café"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 2,}', encoding="utf-8")
    with pytest.raises(StoreError, match=r"bad\.json is not valid JSON: Expecting property name"):
        read_json(bad)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "café"}'.encode("latin-1"))
    with pytest.raises(StoreError, match=r"latin\.json is not valid JSON: 'utf-8' codec"):
        read_json(latin)
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        read_json(bad, DataError)
