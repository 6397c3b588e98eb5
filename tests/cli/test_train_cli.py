"""``frugalvision train`` and the retrieval commands with a trained bundle; resume after SIGKILL; DDP on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from frugalvision.cli.main import cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.usefixtures("one_thread"),
]

SCRIPT = Path(sys.executable).parent / "frugalvision"
TINY = [
    "--model",
    "test_efficientnet",
    "--no-pretrained",
    "--set",
    "model.input_size=32",
    "--set",
    "model.embedding_size=16",
    "-b",
    "8",
    "--m-per-class",
    "2",
    "--val-fraction",
    "0.25",
    "--no-progress",
    "--workers",
    "0",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def data(labelled_folder: Path) -> Path:
    """8 classes x 5 noisy images of a class colour and stripe pattern (``labelled_folder``, tests/conftest.py)."""
    return labelled_folder


def _run(args: list[str]) -> str:
    from frugalvision.cli import retrieval, train  # noqa: F401  (registers the commands)

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    _run(["train", "--data", str(data), "--out", str(out), *TINY, "--freeze-backbone", "--epochs", "2"])
    return out / "model"


def test_config_file_flags_and_overrides(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        "loss:\n  name: triplet\n  kwargs: {margin: 0.3}\ntrainer:\n  epochs: 5\noptim:\n  lr: 0.01\n"
    )
    out = tmp_path / "run"
    text = _run(
        [
            "train",
            "--config",
            str(config),
            "--data",
            str(data),
            "--out",
            str(out),
            *TINY,
            "--freeze-backbone",
            "--epochs",
            "1",
            "--set",
            "optim.lr=0.002",
            "--set",
            "loss.kwargs.mining=semihard",
        ]
    )
    assert "map@r" in text and f"model bundle: {out / 'model'}" in text
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["trainer"]["epochs"] == 1  # flag > file
    assert resolved["optim"]["lr"] == 0.002  # --set > file
    assert resolved["loss"]["name"] == "triplet"
    assert resolved["loss"]["kwargs"] == {"margin": 0.3, "mining": "semihard"}
    assert resolved["model"]["freeze_backbone"] is True


def test_user_errors_are_one_line(data: Path, tmp_path: Path) -> None:
    from frugalvision.cli import train  # noqa: F401

    runner = CliRunner()
    r = runner.invoke(
        cli, ["train", "--data", str(data), "--out", str(tmp_path), "--set", "optim.learnig_rate=1"]
    )
    assert (
        r.exit_code == 1
        and "Error: unknown config key 'optim.learnig_rate'; did you mean 'optim.lr'?" in r.output
    )
    r = runner.invoke(
        cli, ["train", "--data", str(data), "--out", str(tmp_path), "--set", "augment.mixup=0.5"]
    )
    assert r.exit_code == 1 and "Mixup and CutMix" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["train", "--data", str(data)])
    assert r.exit_code == 1 and "no run folder" in r.output
    r = runner.invoke(cli, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 1 and "no training data" in r.output


def test_config_file_is_read_once(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config gives the run folder and the settings: the command reads the file once, resuming or not (the
    resumed run's own config.yaml is the other file read)."""
    import frugalvision.train
    from frugalvision.cli import train  # noqa: F401

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "data": {"path": str(data)}}))
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    fitted: list[object] = []

    def fake_fit(cfg: object, resume: bool = False) -> object:
        fitted.append(cfg)
        return type("Result", (), {"bundle": None})()  # as a secondary process of a multi-device run

    monkeypatch.setattr(Path, "read_text", counting)
    monkeypatch.setattr(frugalvision.train, "fit", fake_fit)
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert reads.count(config) == 1
    assert fitted[0].out == str(tmp_path / "run") and fitted[0].trainer.epochs == 3  # type: ignore[attr-defined]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"epochs": 7}}))
    reads.clear()
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert reads.count(config) == 1 and reads.count(tmp_path / "run" / "config.yaml") == 1
    assert fitted[1].trainer.epochs == 7  # type: ignore[attr-defined]


def test_every_train_option_has_help() -> None:
    import click

    from frugalvision.cli import train  # noqa: F401

    command = cli.commands["train"]
    assert command.help
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"option {param.opts} of `frugalvision train` has no help text"


def test_bundle_works_with_embed_index_search_and_evaluate(bundle: Path, data: Path, tmp_path: Path) -> None:
    store, index = tmp_path / "store", tmp_path / "index"
    out = _run(
        ["embed", str(data), "--model", str(bundle), "--out", str(store), "--workers", "0", "--no-progress"]
    )
    assert "wrote 40 embeddings of size 16" in out
    info = json.loads((store / "info.json").read_text())
    assert info["backbone"]["bundle"] == str(bundle.resolve())

    from_store = json.loads(_run(["evaluate", str(store), "--json"]))
    from_bundle = json.loads(
        _run(["evaluate", str(bundle), "--data", str(data), "--json", "-j", "0", "--no-progress"])
    )
    assert from_bundle["count"] == 40 and from_bundle["map@r"] == pytest.approx(from_store["map@r"])

    _run(["index", str(store), "--out", str(index)])
    query = data / "class03" / "img0.png"
    hits = json.loads(_run(["search", str(index), str(query), "-k", "3", "--include-self", "--json"]))
    assert hits[0]["results"][0]["path"] == str(query.resolve())  # the query is re-embedded by the bundle
    assert hits[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)

    r = CliRunner().invoke(cli, ["evaluate", str(bundle)])
    assert r.exit_code != 0 and "pass --data" in r.output


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, (
            f"training exited early ({process.returncode}): {process.stdout.read()}"
        )  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.skipif(not SCRIPT.exists(), reason="the frugalvision console script is not installed")
def test_resume_after_sigkill_matches_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    # Fine-tuning with augmentation, dropout and a data-loading worker: everything that makes runs random.
    args = [
        "train",
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "4",
        "--workers",
        "1",
        "--seed",
        "3",
        "--set",
        "data.steps_per_epoch=3",
        "--set",
        "model.drop_rate=0.3",
        "--set",
        "trainer.patience=null",
    ]
    _run([*args, "--out", str(tmp_path / "reference")])

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [str(SCRIPT), *args, "--out", str(killed)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(killed / "checkpoints" / "last.ckpt", process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model").exists(), "the run finished before it could be killed"

    _run(["train", "--out", str(killed), "--resume", "--no-progress"])
    reference = json.loads((tmp_path / "reference" / "model" / "config.json").read_text())
    resumed = json.loads((killed / "model" / "config.json").read_text())
    assert len(resumed["history"]) == 4
    assert resumed["history"] == reference["history"] and resumed["metrics"] == reference["metrics"]
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "reference" / "model" / "model.safetensors"),
        load_file(killed / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not SCRIPT.exists(), reason="the frugalvision console script is not installed")
def test_ddp_on_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = [
        str(SCRIPT),
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
        "--epochs",
        "2",
        "--workers",
        "0",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--set",
        "trainer.eval_k=[1]",
    ]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "Starting with 2 processes" in done.stdout + done.stderr and done.stdout.count("model bundle:") == 1
    )
    config = json.loads((out / "model" / "config.json").read_text())
    assert [h["epoch"] for h in config["history"]] == [0, 1]

    # The baseline (pretrained backbone alone) was measured on embeddings gathered from both processes: it must
    # equal the same metrics computed here in one process over the whole validation split.
    from frugalvision.data import read_folder
    from frugalvision.metrics import retrieval_metrics
    from frugalvision.train import build_model, load_config
    from frugalvision.train.data import split_dataset

    cfg = load_config(out / "config.yaml")
    _, val = split_dataset(read_folder(data), "classes", cfg.data.val_fraction, cfg.seed)
    assert val is not None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).eval()
    tf = model.transform()
    images = torch.stack([tf(Image.open(p).convert("RGB")) for p in val.dataset.paths])
    with torch.no_grad():
        features = model.features(images)
    expected = retrieval_metrics(
        features, val.labels, k=(1,), metric="cosine", include=("recall", "map_at_r", "nmi"), seed=cfg.seed
    )
    got = config["metrics"]["baseline"]
    assert got["val/recall@1"] == pytest.approx(expected["recall@1"])
    assert got["val/map@r"] == pytest.approx(expected["map@r"], abs=1e-6)
    # each process took its own slice of the epoch
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    steps = [int(line.split(",")[1]) for line in metrics[1:]]
    assert max(steps) == 2 * (30 // 16) - 1  # 2 epochs of 1 step (30 training images / (8 x 2 processes))


def _write_rectangles_coco(root: Path, n: int = 8) -> Path:
    """``n`` 48x48 grey images with one red or blue rectangle each (two classes) and their COCO JSON."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels = np.full((48, 48, 3), 128, np.uint8)
        x, y, colour = 4 + 2 * i, 20 - 2 * i, i % 2
        pixels[y : y + 16, x : x + 20] = [(220, 40, 40), (40, 40, 220)][colour]
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 48})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": colour + 1, "bbox": [x, y, 20, 16]}
        )
    path = root / "boxes.json"
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_class_agnostic_flag_trains_one_object_class(tmp_path: Path) -> None:
    """``--class-agnostic`` sets detection.class_agnostic: the two colours of the boxes train one class."""
    coco = _write_rectangles_coco(tmp_path / "coco")
    out = tmp_path / "run"
    tiny = ["--model", "test_efficientnet", "--no-pretrained", "-b", "4", "--epochs", "1", "--no-progress"]
    settings = ["--set", "detection.image_size=64", "--set", "data.eval_batch_size=4", "--workers", "0"]
    _run(
        [
            "train",
            "--task",
            "detection",
            "--data",
            str(coco),
            "--out",
            str(out),
            "--class-agnostic",
            *tiny,
            *settings,
        ]
    )
    assert json.loads((out / "model" / "config.json").read_text())["classes"] == ["object"]
    assert yaml.safe_load((out / "config.yaml").read_text())["detection"]["class_agnostic"] is True


def test_class_agnostic_flag_goes_with_the_detection_task(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--class-agnostic"]
    )
    assert result.exit_code == 1, result.output
    assert result.output == "Error: --class-agnostic goes with --task detection (the task is 'embedding')\n"
    assert not (tmp_path / "x").exists()
