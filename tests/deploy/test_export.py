"""ONNX export: parity with PyTorch (cosine >= 0.9999) for a CNN, a ViT and a trained-model bundle."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from frugalvision.deploy import ExportError, export_bundle, export_onnx, output_agreement
from frugalvision.errors import StoreError
from frugalvision.runtime import Predictor
from helpers import TIMM_DATA_CONFIG as DATA_CONFIG
from helpers import tiny_cnn, tiny_vit


def _check_runtime_matches(model: nn.Module, folder: Path, batch_sizes=(1, 5)) -> None:
    """The runtime (its own preprocessing and session) gives PyTorch's outputs at several batch sizes."""
    p = Predictor(folder)
    for b in batch_sizes:
        x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        assert output_agreement(expected, p.run(x))["min_cosine"] >= 0.9999


@pytest.mark.parametrize(
    ("make", "exporter"),
    [(tiny_cnn, "auto"), (tiny_vit, "auto"), pytest.param(tiny_cnn, "torchscript", marks=pytest.mark.slow)],
)
def test_parity_cnn_and_vit(make, exporter: str, tmp_path: Path, image_folder: Path) -> None:
    model = make()
    samples = sorted(image_folder.rglob("*.jpg"))[:2]
    result = export_onnx(
        model, tmp_path / "out", data_config=DATA_CONFIG, exporter=exporter, sample_images=samples
    )
    assert result.parity["min_cosine"] >= 0.9999 and result.parity["rows"] == 5
    onnx.checker.check_model(str(result.model_path))
    graph = onnx.load(str(result.model_path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["frugalvision"])["data_config"]["input_size"] == [3, 32, 32]
    deploy = json.loads((tmp_path / "out" / "deploy.json").read_text())
    assert deploy["models"]["fp32"]["exporter"] == result.exporter
    assert deploy["output"] == {"name": "embeddings", "size": model.num_features, "normalization": "none"}
    _check_runtime_matches(model, tmp_path / "out")


class _DataDependent(nn.Module):
    """A check on tensor values in forward: torch.export cannot capture it, the TorchScript tracer can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))
        if not bool(torch.isfinite(y).all()):
            raise ValueError("non-finite")
        return y


def test_auto_falls_back_to_torchscript(tmp_path: Path) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        pytest.skip(
            "the dynamo exporter needs onnxscript; without it 'auto' is the TorchScript exporter already"
        )
    with pytest.warns(UserWarning, match="TorchScript exporter"):
        result = export_onnx(_DataDependent().eval(), tmp_path / "o", data_config=DATA_CONFIG)
    assert result.exporter == "torchscript" and result.parity["min_cosine"] >= 0.9999


def test_classifier_export_and_predict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path / "c", data_config=DATA_CONFIG, task="classification",
                    classes=["a", "b", "c"], exporter="torchscript")  # fmt: skip
    p = Predictor(tmp_path / "c")
    x = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    logits = model(torch.from_numpy(p.preprocess(x))).detach().numpy()[0]
    pred = p.predict(x, top_k=3)[0]
    assert pred.labels[0] == "abc"[int(logits.argmax())] and sum(pred.scores) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="classes"):
        export_onnx(model, tmp_path / "d", data_config=DATA_CONFIG, task="classification", classes=["a"])


def test_parity_failure_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import frugalvision.deploy.export as ex

    real = ex._ort_outputs
    monkeypatch.setattr(ex, "_ort_outputs", lambda path, batch: real(path, batch)[:, ::-1].copy())
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(tiny_cnn(), tmp_path / "bad", data_config=DATA_CONFIG, exporter="torchscript")
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_output_folder_rules_and_argument_checks(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    kw = {"data_config": DATA_CONFIG, "exporter": "torchscript"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="refusing"):
        export_onnx(model, other, **kw)
    first = export_onnx(model, tmp_path / "d", **kw)
    second = export_onnx(model, tmp_path / "d", **kw)  # a deploy bundle is replaced
    assert first.folder == second.folder and (tmp_path / "d" / "deploy.json").is_file()
    with pytest.raises(ValueError, match="task"):
        export_onnx(model, tmp_path / "e", data_config=DATA_CONFIG, task="segmentation")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "e", data_config=DATA_CONFIG, opset=11)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "e", data_config={**DATA_CONFIG, "input_size": (32, 32)})
    with pytest.raises(ExportError, match=r"\(B, D\)"):
        export_onnx(nn.Conv2d(3, 4, 3), tmp_path / "e", **kw)


@pytest.mark.parametrize(
    ("key", "value"), [("crop_pct", 0.01), ("crop_pct", 2.0), ("input_size", (3, 20000, 20000))]
)
def test_export_refuses_preprocessing_deploy_json_could_not_be_read_with(
    tmp_path: Path, key: str, value: object
) -> None:
    """The bounds ``deploy.json`` is read back with hold when it is written: no bundle the runtime refuses."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=rf"'data_config\.{key}' must be"):
        export_onnx(model, tmp_path / "e", data_config={**DATA_CONFIG, key: value}, exporter="torchscript")
    assert not (tmp_path / "e").exists()


def test_output_agreement_reference() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [3.0, 4.0]])
    got = output_agreement(a, b)
    assert got["min_cosine"] == pytest.approx(1 / np.sqrt(2)) and got["max_abs"] == 1.0
    assert got["mean_cosine"] == pytest.approx((1 / np.sqrt(2) + 2) / 3)


def _bundle(tmp_path: Path, pooling: str) -> Path:
    from frugalvision.bundle import save_bundle
    from frugalvision.models import create_embedding_model

    torch.manual_seed(0)
    model = create_embedding_model(
        "resnet10t", pretrained=False, pooling=pooling, embedding_size=16, input_size=32
    )
    return save_bundle(model, tmp_path / f"bundle-{pooling}", classes=["x", "y"], metrics={"val/map@r": 0.25})


def test_bundle_export(tmp_path: Path, image_folder: Path) -> None:
    import frugalvision

    bundle = _bundle(tmp_path, "native")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the fallback warning, while the head's input check blocks torch.export
        result = export_bundle(
            bundle, tmp_path / "b-onnx", sample_images=sorted(image_folder.rglob("*.jpg"))[:3]
        )
    assert result.parity["min_cosine"] >= 0.9999
    deploy = json.loads((tmp_path / "b-onnx" / "deploy.json").read_text())
    assert deploy["task"] == "embedding" and deploy["output"]["normalization"] == "l2"
    assert (
        deploy["source"]["kind"] == "bundle" and deploy["source"]["id"] == frugalvision.load(bundle).bundle_id
    )
    assert deploy["metrics"] == {"val/map@r": 0.25} and deploy["classes"] == ["x", "y"]
    _check_runtime_matches(frugalvision.load(bundle), tmp_path / "b-onnx")


@pytest.mark.slow
def test_bundle_export_gem(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_bundle(_bundle(tmp_path, "gem"), tmp_path / "g-onnx")
    assert result.parity["min_cosine"] >= 0.9999
