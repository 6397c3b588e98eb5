"""Predictor on a hand-built ONNX model whose output is known in closed form; the runtime imports no torch."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from frugalvision.errors import FrugalVisionError, StoreError
from frugalvision.runtime import DeployConfig, Predictor, read_deploy_config
from helpers import make_bundle, reference


def test_embed_matches_reference(tiny_bundle, photos: list) -> None:
    folder, weight = tiny_bundle
    p = Predictor(folder, threads=1)
    batch = p.preprocess(photos)
    assert batch.shape == (4, 3, 24, 32)
    got = p.embed(photos)
    assert got.shape == (4, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(batch, weight, l2=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(p.embed(photos[0]), got[:1])  # one image is a batch of one


def test_batches_are_split(tiny_bundle, photos: list) -> None:
    folder, _ = tiny_bundle
    whole = Predictor(folder).embed(photos)
    split = Predictor(folder, batch_size=3, threads=2, spin=False).embed(photos)
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-7)
    assert Predictor(folder).run(np.zeros((0, 3, 24, 32), np.float32)).shape == (0, 5)


def test_classification_and_multilabel(tmp_path: Path, photos: list) -> None:
    classes = ("cat", "dog", "car", "sky")
    folder = tmp_path / "cls"
    weight = make_bundle(folder, task="classification", dim=4, classes=classes)
    p = Predictor(folder)
    logits = reference(p.preprocess(photos), weight, l2=False)
    preds = p.predict(photos, top_k=2)
    for pred, row in zip(preds, logits, strict=True):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(pred.probabilities, probs, rtol=1e-4)
        order = np.argsort(-row)
        assert pred.labels == (classes[order[0]], classes[order[1]])
        assert pred.scores[0] >= pred.scores[1]
    with pytest.raises(FrugalVisionError, match="use predict"):
        p.embed(photos)

    thresholds = (0.3, 0.5, 0.5, 0.99)
    folder = tmp_path / "tags"
    weight = make_bundle(folder, task="multilabel", dim=4, classes=classes, thresholds=thresholds)
    p = Predictor(folder)
    logits = reference(p.preprocess(photos), weight, l2=False)
    for pred, row in zip(p.predict(photos), logits, strict=True):
        sig = 1 / (1 + np.exp(-row))
        np.testing.assert_allclose(pred.probabilities, sig, rtol=1e-4)
        assert set(pred.labels) == {c for c, s, t in zip(classes, sig, thresholds, strict=True) if s >= t}


def test_sigmoid_softmax_extremes(tmp_path: Path) -> None:
    make_bundle(tmp_path / "m", task="multilabel", dim=2, classes=("a", "b"))
    p = Predictor(tmp_path / "m")
    probs = p.probabilities(np.array([[1000.0, -1000.0]]))
    np.testing.assert_array_equal(probs, [[1.0, 0.0]])


def test_lone_onnx_file_uses_its_metadata(tiny_bundle, photos: list) -> None:
    folder, _ = tiny_bundle
    lone = Predictor(folder / "model.onnx")
    assert lone.task == "embedding" and lone.config.data_config["input_size"] == [3, 24, 32]
    np.testing.assert_allclose(lone.embed(photos), Predictor(folder).embed(photos), rtol=1e-6)


def test_errors(tiny_bundle, tmp_path: Path) -> None:
    folder, _ = tiny_bundle
    with pytest.raises(StoreError, match="no 'int8' model"):
        Predictor(folder, precision="int8")
    with pytest.raises(ValueError, match="precision"):
        Predictor(folder, precision="fp16")
    with pytest.raises(ValueError, match="threads"):
        Predictor(folder, threads=0)
    p = Predictor(folder)
    with pytest.raises(ValueError, match=r"\(B, 3, 24, 32\)"):
        p.run(np.zeros((1, 3, 32, 24), np.float32))
    with pytest.raises(FrugalVisionError, match="embed"):
        p.predict([np.zeros((8, 8, 3), np.uint8)])
    bundle = tmp_path / "trained"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    (bundle / "model.safetensors").write_bytes(b"")
    with pytest.raises(StoreError, match="frugalvision export"):
        Predictor(bundle)
    (folder / "model.onnx").unlink()
    with pytest.raises(StoreError, match="missing"):
        Predictor(folder)


@pytest.mark.skipif(platform.machine().lower() in ("aarch64", "arm64"), reason="bf16 fast-math runs on ARM64")
def test_bf16_refused_off_arm(tiny_bundle) -> None:
    folder, _ = tiny_bundle
    config = read_deploy_config(folder)
    record = {"file": "model.onnx", "session_config": {"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"}}
    DeployConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                    "models": {**config.models, "bf16": record}}).write(folder)  # fmt: skip
    with pytest.raises(FrugalVisionError, match="ARM64"):
        Predictor(folder, precision="bf16")


def test_deploy_config_validation(tiny_bundle) -> None:
    folder, _ = tiny_bundle
    data = json.loads((folder / "deploy.json").read_text())
    assert DeployConfig.from_dict(data).to_dict()["output"] == data["output"]
    for change, match in [
        ({"task": "segmentation"}, "task"),
        ({"format_version": 99}, "version"),
        ({"format": "other"}, "format"),
        ({"task": "classification", "classes": ["a"]}, "one class name per output"),
        ({"thresholds": [0.5] * 5}, "multilabel"),
        ({"output": {"size": 0}}, r"'output\.size' must be an integer in \[1, inf\], got 0"),
        ({"models": {"fp32": {"name": "x"}}}, "file"),
    ]:
        with pytest.raises(StoreError, match=match):
            DeployConfig.from_dict({**data, **change})
    (folder / "deploy.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        read_deploy_config(folder)


def test_runtime_imports_no_torch(tiny_bundle) -> None:
    folder, _ = tiny_bundle
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import frugalvision
        import frugalvision.runtime
        from frugalvision.runtime import Predictor
        p = Predictor({str(folder)!r})
        out = p.embed([np.zeros((40, 50, 3), np.uint8)])
        assert out.shape == (1, 5), out.shape
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_long_image_is_refused_with_its_name(tiny_bundle, photos: list, long_png, bounded_resize) -> None:
    """The deployed model's preprocessing refuses a 1 x 30000 PNG before resizing it (issue 12, item 1)."""
    from frugalvision.errors import ImageTooLargeError

    folder, _ = tiny_bundle
    p = Predictor(folder, threads=1)
    path = long_png(1, 30000)
    with pytest.raises(ImageTooLargeError, match=rf"^{path}: 1x30000 pixels has an aspect ratio of 30000:1"):
        p.embed([photos[0], path])
    assert p.embed(photos[:1]).shape == (1, 5)  # and it goes on serving


def test_output_size_must_match_the_model(tiny_bundle, photos: list) -> None:
    """``deploy.json`` saying 512 outputs for a model of 5 is refused at load, naming the file and the field."""
    folder, _ = tiny_bundle
    data = json.loads((folder / "deploy.json").read_text())
    data["output"]["size"] = 512
    (folder / "deploy.json").write_text(json.dumps(data))
    with pytest.raises(
        StoreError, match=r"deploy\.json: field 'output\.size' is 512, but model\.onnx outputs"
    ):
        Predictor(folder)


def test_an_output_of_another_width_is_refused_when_run(tiny_bundle, photos: list) -> None:
    """A model whose output width ONNX Runtime cannot infer is checked on each run: here a session wrapper returns
    one column more than ``deploy.json`` says (ORT infers the width of every model we export, so a real graph
    cannot show this)."""
    folder, _ = tiny_bundle
    p = Predictor(folder)
    session = p.session

    class Wider:
        def run(self, names, feeds):
            out = session.run(names, feeds)[0]
            return [np.concatenate([out, out[:, :1]], axis=1)]

    p.session = Wider()  # type: ignore[assignment]
    with pytest.raises(StoreError, match=r"'output\.size' is 5, but model\.onnx returned shape \(1, 6\)"):
        p.embed(photos[:1])
