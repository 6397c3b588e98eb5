"""A classification bundle exported to ONNX: the graph outputs ``logits / T`` and the torch-free
:class:`~frugalvision.runtime.Predictor` gives ``softmax(logits / T)`` equal to torch's within 1e-5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_exported_classifier_gives_the_calibrated_probabilities(tmp_path: Path, photos: list) -> None:
    from frugalvision.bundle import save_bundle
    from frugalvision.classify import Classifier
    from frugalvision.deploy import export_bundle
    from frugalvision.runtime import Predictor
    from frugalvision.train import build_model, load_config

    cfg = load_config(
        None,
        [
            "task=classification",
            "model.name=test_efficientnet",
            "model.pretrained=false",
            "model.input_size=32",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5).eval()
    with torch.no_grad():
        model.head.out.weight.normal_(0, 2.0)  # logits of a few units, so that T matters
    classes = ["a", "b", "c", "d", "e"]
    temperature = 2.5
    bundle = save_bundle(
        model, tmp_path / "model", task="classification", classes=classes, temperature=temperature
    )
    result = export_bundle(bundle, tmp_path / "deploy")
    assert result.config.task == "classification" and result.config.extra["calibration"]["temperature"] == 2.5

    predictor = Predictor(tmp_path / "deploy", threads=1)
    x = predictor.preprocess(photos)
    with torch.no_grad():
        z = model(torch.from_numpy(x)).double().numpy()
    e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)  # float64 from the equation
    assert (
        np.abs(
            expected
            - np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
        ).max()
        > 1e-3
    )
    np.testing.assert_allclose(predictor.probabilities(predictor.run(x)), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(Classifier(bundle).calibrate(z), expected, atol=1e-6, rtol=0)
    top = predictor.predict(photos, top_k=2)
    assert [p.labels for p in top] == [
        tuple(classes[i] for i in np.argsort(-row, kind="stable")[:2]) for row in expected
    ]
