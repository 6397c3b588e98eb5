from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from frugalvision.train._checkpoint import AtomicCheckpointIO


def test_save_and_load_with_weights_only(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 2, "hyper_parameters": {"config": {"lr": 1e-3}}}
    io.save_checkpoint(state, tmp_path / "ck" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "ck" / "last.ckpt")
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.arange(3.0))
    assert loaded["epoch"] == 2 and [p.name for p in (tmp_path / "ck").iterdir()] == ["last.ckpt"]


class Arbitrary:
    """A pickled object of an arbitrary class: weights_only loading refuses it."""


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint(
        {"obj": Arbitrary(), "d": collections.OrderedDict()}, tmp_path / "bad.ckpt"
    )
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if the process were stopped in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
