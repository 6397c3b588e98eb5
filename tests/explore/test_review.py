"""Label review: decisions written atomically into the manifest, a change log, undo (also after a restart),
the review queue's order; checked against the manifest read back by frugalvision.data.read_manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frugalvision.data import read_manifest
from frugalvision.errors import DataError
from frugalvision.explore import LabelManifest


def _labels(path: Path) -> list[tuple[str, ...]]:
    ds = read_manifest(path)
    return [tuple(ds.classes[c] for c in s.labels) for s in ds.samples]


def test_correct_accept_unknown_and_undo(manifest, tmp_path):
    original = _labels(manifest)
    m = LabelManifest(manifest)
    m.apply("correct", [1, 2], "class07")
    m.apply("accept", [0])  # unlabeled row 0: accept takes the prediction
    m.apply("unknown", [3])
    now = _labels(manifest)
    assert now[1] == now[2] == ("class07",)
    assert now[0] == (Path(m.file_of(0)).parent.name,) and original[0] == ()
    assert now[3] == ()
    assert now[4:] == original[4:]
    log = [json.loads(line) for line in m.log_path.read_text().splitlines()]
    assert [e["action"] for e in log] == ["correct", "accept", "unknown"]
    assert log[0]["rows"][0]["before"]["label"] == original[1][0]
    # undo from a fresh process (the log is read again)
    again = LabelManifest(manifest)
    assert again.undo()["undoes"] == 3 and again.undo()["undoes"] == 2 and again.undo()["undoes"] == 1
    assert again.undo() is None and not again.can_undo()
    assert _labels(manifest) == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.csv",
        "labels.csv.changes.jsonl",
    ]  # nothing else


def test_queue_is_uncertain_first_and_skips_reviewed(manifest):
    m = LabelManifest(manifest)
    margins = np.array([float(m.get(i, "margin")) for i in range(len(m))])
    assert m.queue() == np.argsort(margins, kind="stable").tolist()
    first = m.queue()[0]
    m.apply("accept", [first])
    assert first not in m.queue() and len(m.queue()) == len(m) - 1


def test_bad_manifests_and_actions_are_named(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("path,labels\na.png,cat\n")
    with pytest.raises(DataError, match=r"x\.csv:1.*'labels'"):
        LabelManifest(bad)
    bad.write_text("file,label\na.png,cat\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        LabelManifest(bad)
    with pytest.raises(DataError, match="does not exist"):
        LabelManifest(tmp_path / "missing.csv")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"path": "a.png", "label": "cat", "extra": 1}\n{"path": "b.png", "label": null}\n')
    m = LabelManifest(ok)
    with pytest.raises(ValueError, match="class name"):
        m.apply("correct", [0], "a|b")
    with pytest.raises(ValueError, match="one of"):
        m.apply("delete", [0])
    with pytest.raises(ValueError, match="row 5"):
        m.apply("accept", [5])
    m.apply("correct", [1], "dog")
    rows = [json.loads(line) for line in ok.read_text().splitlines()]
    assert rows == [{"path": "a.png", "label": "cat", "extra": 1},
                    {"path": "b.png", "label": "dog", "review": "corrected"}]  # fmt: skip
