"""read_manifest: CSV and JSON Lines manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frugalvision.data import read_manifest
from frugalvision.errors import DataError


@pytest.fixture
def images(tmp_path: Path, write_image) -> Path:
    """``tmp_path/img/{a,b,c,d}.png``."""
    for name in "abcd":
        write_image(tmp_path / "img" / f"{name}.png")
    return tmp_path / "img"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_single_label(tmp_path: Path, images: Path) -> None:
    csv = write(
        tmp_path / "train.csv",
        "path,label,split\nimg/b.png,dog,train\nimg/a.png,cat,train\n\nimg/c.png,,val\n",
    )
    ds = read_manifest(csv)
    assert ds.classes == ["cat", "dog"]  # sorted union
    assert ds.paths == [images / "b.png", images / "a.png", images / "c.png"]  # manifest order
    assert [s.labels for s in ds.samples] == [(1,), (0,), ()]
    assert not ds.multilabel
    assert "train.csv" in ds.source


def test_csv_multilabel_and_given_classes(tmp_path: Path, images: Path) -> None:
    csv = write(
        tmp_path / "m.csv", "\ufeffpath , labels\n img/a.png , dog | cat \nimg/b.png,emu|emu\nimg/c.png,\n"
    )
    ds = read_manifest(csv, classes=["emu", "dog", "cat", "yak"])
    assert ds.classes == ["emu", "dog", "cat", "yak"]
    assert [s.labels for s in ds.samples] == [(1, 2), (0,), ()]  # order kept, duplicates dropped
    assert ds.multilabel
    np.testing.assert_array_equal(ds.primary_labels(), [1, 0, -1])
    # a 'label' column holding 'a|b' also makes the data set multi-label
    csv2 = write(tmp_path / "m2.csv", "path,label\nimg/a.png,cat|dog\n")
    assert read_manifest(csv2).multilabel


def test_csv_without_label_column_is_unlabeled(tmp_path: Path, images: Path) -> None:
    ds = read_manifest(write(tmp_path / "u.csv", "path\nimg/a.png\nimg/b.png\n"))
    assert ds.classes == [] and [s.labels for s in ds.samples] == [(), ()]


def test_root_and_absolute_paths(tmp_path: Path, images: Path) -> None:
    sub = tmp_path / "meta"
    sub.mkdir()
    csv = write(sub / "x.csv", f"path,label\na.png,cat\n{images / 'b.png'},dog\n")
    ds = read_manifest(csv, root=images)
    assert ds.paths == [images / "a.png", images / "b.png"]
    with pytest.raises(
        DataError, match=r"1 image file\(s\) referenced in .*x\.csv do not exist: line 2: .*meta/a\.png"
    ):
        read_manifest(csv)  # resolved against the manifest's own folder by default


def test_jsonl(tmp_path: Path, images: Path) -> None:
    lines = [
        {"path": "img/a.png", "label": "cat", "extra": 1},
        {"path": "img/b.png", "labels": ["dog", "cat"]},
        {"path": "img/c.png", "label": None},
        {"path": "img/d.png"},
    ]
    jl = write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = read_manifest(jl)
    assert ds.classes == ["cat", "dog"]
    assert [s.labels for s in ds.samples] == [(0,), (1, 0), (), ()]
    assert ds.multilabel
    single = write(tmp_path / "s.jsonl", json.dumps({"path": "img/a.png", "label": "cat"}))
    assert not read_manifest(single).multilabel


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("e.csv", "", r"e\.csv is empty"),
        ("h.csv", "path,label\n", r"h\.csv lists no images"),
        ("p.csv", "file,label\nimg/a.png,cat\n", r"p\.csv:1: no 'path' column"),
        ("b.csv", "path,label,labels\nimg/a.png,cat,cat\n", r"b\.csv:1: .*both 'label' and 'labels'"),
        ("f.csv", "path,label\nimg/a.png,cat\nimg/b.png,dog,extra\n", r"f\.csv:3: expected 2 fields"),
        ("s.csv", "path,label\nimg/a.png,cat||dog\n", r"empty label .* at .*s\.csv:2 \(field 'label'\)"),
        (
            "d.csv",
            "path,label\nimg/a.png,cat\n./img/a.png,dog\n",
            r"duplicate .*d\.csv:3 \(first listed at line 2\)",
        ),
        ("n.csv", "path,label\n,cat\n", r"n\.csv:2: empty image path"),
        ("j.jsonl", '{"path": "img/a.png"}\n{"path": "img/b.png",}\n', r"malformed JSON at .*j\.jsonl:2"),
        ("k.jsonl", '{"label": "cat"}\n', r"k\.jsonl:1: missing field 'path'"),
        ("o.jsonl", '["img/a.png"]\n', r"o\.jsonl:1: expected a JSON object"),
        ("l.jsonl", '{"path": "img/a.png", "labels": "cat"}\n', r"l\.jsonl:1: field 'labels' must be a list"),
        ("i.jsonl", '{"path": "img/a.png", "label": 3}\n', r"i\.jsonl:1: field 'label' must be a string"),
        ("t.txt", "img/a.png\n", r"unknown extension '\.txt'"),
    ],
)
def test_malformed_manifests(tmp_path: Path, images: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_manifest(write(tmp_path / name, text))


def test_unknown_label_names_file_line_and_field(tmp_path: Path, images: Path) -> None:
    rows = "".join(f"img/{n}.png,cat\n" for n in "abc")
    csv = write(tmp_path / "train.csv", "path,label\n" + rows + "img/d.png,dgo\n")
    with pytest.raises(DataError) as info:
        read_manifest(csv, classes=["cat", "dog"])
    assert str(info.value) == f"unknown label 'dgo' at {csv}:5 (field 'label'); known labels: cat, dog"
    jl = write(tmp_path / "v.jsonl", '{"path": "img/a.png", "labels": ["cat", "cow"]}\n')
    with pytest.raises(DataError, match=r"unknown label 'cow' at .*v\.jsonl:1 \(field 'labels'\)"):
        read_manifest(jl, classes=["cat"])


def test_missing_images_are_all_listed(tmp_path: Path, images: Path) -> None:
    csv = write(
        tmp_path / "m.csv", "path,label\nimg/a.png,x\nimg/nope1.png,x\nimg/b.png,x\nimg/nope2.png,x\n"
    )
    with pytest.raises(
        DataError, match=r"2 image file\(s\) .*m\.csv.*line 3: .*nope1\.png, line 5: .*nope2\.png"
    ):
        read_manifest(csv)


def test_bad_arguments(tmp_path: Path, images: Path) -> None:
    csv = write(tmp_path / "ok.csv", "path,label\nimg/a.png,cat\n")
    with pytest.raises(DataError, match=r"manifest not found: .*absent\.csv"):
        read_manifest(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="root folder not found"):
        read_manifest(csv, root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unique"):
        read_manifest(csv, classes=["cat", "cat"])
    with pytest.raises(TypeError, match="sequence"):
        read_manifest(csv, classes="cat")  # type: ignore[arg-type]


def test_unknown_labels_of_partial_annotation(tmp_path: Path, images: Path) -> None:
    csv = write(
        tmp_path / "p.csv", "path,labels,unknown\nimg/a.png,cat,dog|emu\nimg/b.png,dog,\nimg/c.png,,cat\n"
    )
    ds = read_manifest(csv)
    assert ds.classes == ["cat", "dog", "emu"] and ds.multilabel and ds.has_unknown
    assert [s.unknown for s in ds.samples] == [(1, 2), (), (0,)]
    np.testing.assert_array_equal(ds.target_matrix(), [[1, -1, -1], [0, 1, 0], [-1, 0, 0]])
    np.testing.assert_array_equal(ds.label_matrix(), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    jsonl = write(
        tmp_path / "p.jsonl",
        '{"path": "img/a.png", "labels": ["cat"], "unknown": ["dog"]}\n{"path": "img/b.png", "labels": []}\n',
    )
    np.testing.assert_array_equal(read_manifest(jsonl).target_matrix(), [[1, -1], [0, 0]])
    assert ds.subset([2]).samples[0].unknown == (0,)


def test_unknown_label_errors_name_the_line(tmp_path: Path, images: Path) -> None:
    both = write(tmp_path / "b.csv", "path,labels,unknown\nimg/a.png,cat,dog\nimg/b.png,cat,cat\n")
    with pytest.raises(DataError, match=r"b\.csv:3: label 'cat' is listed both as a label and as unknown"):
        read_manifest(both)
    bad = write(tmp_path / "u.jsonl", '{"path": "img/a.png", "labels": ["cat"], "unknown": "dog"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:1: field 'unknown' must be a list"):
        read_manifest(bad)
    unknown_name = write(tmp_path / "n.csv", "path,labels,unknown\nimg/a.png,cat,yak\n")
    with pytest.raises(DataError, match=r"unknown label 'yak' at .*n\.csv:2 \(field 'unknown'\)"):
        read_manifest(unknown_name, classes=["cat", "dog"])
