"""``frugalvision train --task classification`` -> ``evaluate`` -> ``predict`` -> ``export`` -> the runtime and
``serve /predict``: the same calibrated probabilities everywhere; resume after SIGKILL."""

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
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from frugalvision.cli import deploy, retrieval, tagging, train  # noqa: F401  (registers the commands)
from frugalvision.cli.main import cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.usefixtures("one_thread"),
]

SCRIPT = Path(sys.executable).parent / "frugalvision"
TINY = [
    "--task", "classification", "--model", "test_efficientnet", "--no-pretrained", "--set", "model.input_size=32",
    "-b", "8", "--val-fraction", "0.25", "--lr", "1e-3", "--no-progress", "--workers", "0",
]  # fmt: skip


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def bundle(labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output = _run(["train", "--data", str(labelled_folder), "--out", str(out), *TINY, "--epochs", "2"])
    finally:
        torch.set_num_threads(threads)
    assert "top1" in output and "temperature" in output and "frugalvision predict" in output
    return out / "model"


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_round_trip_evaluate_predict_export_runtime_and_serve(
    bundle: Path, labelled_folder: Path, tmp_path: Path
) -> None:
    from frugalvision.bundle import load

    config = json.loads((bundle / "config.json").read_text())
    classes, t = config["classes"], config["temperature"]
    images = sorted(labelled_folder.rglob("*.png"))
    truth = np.array([classes.index(p.parent.name) for p in images])

    # evaluate: the bundle's own logits on every image, scored by scikit-learn
    model = load(bundle)
    transform = model.transform()
    from PIL import Image

    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        logits = model(batch).double().numpy()
    pred = logits.argmax(axis=1)
    result = json.loads(
        _run(["evaluate", str(bundle), "--data", str(labelled_folder), "--json", "-j", "0", "--no-progress"])
    )
    m = result["metrics"]
    assert result["images"] == len(images) == 40
    assert m["top1"] == pytest.approx(accuracy_score(truth, pred), abs=1e-9)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, pred), abs=1e-9)
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-9)
    assert m["temperature"] == pytest.approx(t) and len(result["per_class"]) == 8
    text = _run(["evaluate", str(bundle), "--data", str(labelled_folder), "-j", "0", "--no-progress"])
    assert "top1" in text and "ECE" in text and "class07" in text

    # predict (torch): top-k labels with softmax(logits / T)
    probs = _softmax(logits, t)
    rows = [
        json.loads(x)
        for x in _run(["predict", str(bundle), *map(str, images[:6]), "--json", "--top-k", "3"]).splitlines()
    ]
    for row, p in zip(rows, probs[:6], strict=True):
        order = np.argsort(-p, kind="stable")[:3]
        assert row["labels"] == [classes[i] for i in order]
        np.testing.assert_allclose(row["scores"], p[order], atol=1e-6)
    plain = _run(["predict", str(bundle), str(images[0])])
    assert plain.count(",") == 4  # five classes by default
    refused = CliRunner().invoke(cli, ["predict", str(bundle), str(images[0]), "--threshold", "0.5"])
    assert refused.exit_code != 0 and "--threshold is for multilabel" in refused.output

    # export: the graph outputs logits / T; the runtime's probabilities equal torch's within 1e-5
    deploy_dir = tmp_path / "deploy"
    _run(["export", str(bundle), "--out", str(deploy_dir)])
    deployed = json.loads((deploy_dir / "deploy.json").read_text())
    assert deployed["task"] == "classification" and deployed["calibration"] == {
        "temperature": t,
        "applied_in_graph": True,
    }
    from frugalvision.runtime import Predictor

    predictor = Predictor(deploy_dir, threads=1)
    x = predictor.preprocess([str(p) for p in images[:8]])
    with torch.no_grad():
        torch_probs = _softmax(model(torch.from_numpy(x)).double().numpy(), t)
    runtime_probs = predictor.probabilities(predictor.run(x))
    np.testing.assert_allclose(runtime_probs, torch_probs, atol=1e-5, rtol=0)
    onnx_rows = [
        json.loads(r)
        for r in _run(
            ["predict", str(deploy_dir), *map(str, images[:6]), "--json", "--top-k", "3"]
        ).splitlines()
    ]
    assert [r["labels"] for r in onnx_rows] == [r["labels"] for r in rows]
    for a, b in zip(onnx_rows, rows, strict=True):
        np.testing.assert_allclose(
            a["scores"], b["scores"], atol=1e-4
        )  # torch's and the runtime's resizing differ

    # serve /predict returns the runtime's calibrated probabilities
    from fastapi.testclient import TestClient

    from frugalvision.serve import create_app

    with TestClient(create_app(predictor, max_batch=4, max_wait_ms=2)) as client:
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images[:3]]
        response = client.post("/predict", files=files, params={"top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "classification"
    expected = predictor.predict([str(p) for p in images[:3]], top_k=2)
    for item, want in zip(body["predictions"], expected, strict=True):
        assert item["labels"] == list(want.labels)
        np.testing.assert_allclose(item["scores"], want.scores, atol=1e-6)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training exited early ({process.returncode})"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.skipif(not SCRIPT.exists(), reason="the frugalvision console script is not installed")
def test_resume_after_sigkill_matches_an_uninterrupted_run(labelled_folder: Path, tmp_path: Path) -> None:
    args = [
        "train", "--data", str(labelled_folder), *TINY, "--epochs", "4", "--seed", "5",
        "--set", "data.steps_per_epoch=3", "--set", "augment.mixup=0.4", "--set", "augment.cutmix=1.0",
        "--set", "model.head_epochs=1", "--set", "model.drop_rate=0.2", "--set", "trainer.patience=null",
    ]  # fmt: skip
    _run([*args, "--out", str(tmp_path / "reference")])
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [str(SCRIPT), *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
    assert len(resumed["history"]) == 4 and resumed["history"] == reference["history"]
    assert resumed["metrics"] == reference["metrics"] and resumed["temperature"] == reference["temperature"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
