from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from frugalvision.errors import CheckpointError
from frugalvision.train._checkpoint import (
    AtomicCheckpointIO,
    check_resumable,
    last_checkpoint,
    read_checkpoint,
)


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
    with pytest.raises(CheckpointError, match=r"bad\.ckpt holds objects other than tensors") as caught:
        AtomicCheckpointIO().load_checkpoint(tmp_path / "bad.ckpt")
    assert "weights_only" not in str(caught.value)  # torch's advice to turn the safety off is not repeated
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write_run(tmp_path: Path, checkpoint: bytes) -> Path:
    """A run folder (its config.yaml) whose ``checkpoints/last.ckpt`` holds ``checkpoint``."""
    from frugalvision.train import load_config

    out = tmp_path / "run"
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
    load_config(None, [f"data.path={data}", f"out={out}", "model.name=test_efficientnet",
                       "model.pretrained=false"]).save_yaml(out / "config.yaml")  # fmt: skip
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
    return out


def _good_checkpoint(tmp_path: Path) -> bytes:
    state = {"state_dict": {"w": torch.arange(1000.0)}, "epoch": 0, "hyper_parameters": {"lr": 1e-3}}
    AtomicCheckpointIO().save_checkpoint(state, tmp_path / "good.ckpt")
    return (tmp_path / "good.ckpt").read_bytes()


@pytest.mark.parametrize("damage", ["malicious", "truncated", "garbage", "empty", "not a checkpoint"])
def test_a_damaged_last_checkpoint_stops_resume_in_one_line(tmp_path: Path, damage: str) -> None:
    from click.testing import CliRunner

    from frugalvision.cli import train  # noqa: F401  (registers the command)
    from frugalvision.cli.main import cli

    marker = tmp_path / "code-ran"
    if damage == "malicious":
        torch.save({"state_dict": {}, "epoch": 0, "x": RunsCode(marker)}, tmp_path / "evil.ckpt")
        content = (tmp_path / "evil.ckpt").read_bytes()
    elif damage == "not a checkpoint":
        torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
        content = (tmp_path / "tensor.ckpt").read_bytes()
    else:
        good = _good_checkpoint(tmp_path)
        content = {"truncated": good[: len(good) // 2], "garbage": b"not a checkpoint", "empty": b""}[damage]
    out = _write_run(tmp_path, content)
    last = out / "checkpoints" / "last.ckpt"

    with pytest.raises(CheckpointError, match=f"checkpoint {last}"):
        last_checkpoint(out, resume=True)
    if damage != "not a checkpoint":  # a readable file of other content is refused by last_checkpoint only
        with pytest.raises(CheckpointError):
            AtomicCheckpointIO().load_checkpoint(last)  # what Lightning calls
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, (result.output, result.exception)
    assert f"checkpoint {last}" in errors[0] and "--resume" in errors[0]
    assert "weights_only" not in result.output and "Traceback" not in result.output
    assert not marker.exists()
    assert last.read_bytes() == content  # nothing deleted or rewritten on the user's behalf


def test_read_checkpoint_maps_or_reads_the_same_values(tmp_path: Path) -> None:
    (tmp_path / "good.ckpt").write_bytes(_good_checkpoint(tmp_path))
    for mmap in (False, True):
        state = read_checkpoint(tmp_path / "good.ckpt", mmap=mmap)
        torch.testing.assert_close(state["state_dict"]["w"], torch.arange(1000.0))
    check_resumable(tmp_path / "good.ckpt")


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
