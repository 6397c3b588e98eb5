"""A tiny deploy bundle built by hand with onnx.helper (no torch, milliseconds), with a numpy reference.

The model: ``y = mean_{h,w}(x) @ W`` (``(B, 3, H, W) -> (B, D)``), then L2 normalisation for ``"l2"``
embeddings; classifiers output ``y`` as logits. The reference computes the same in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frugalvision.runtime import DeployConfig

DATA_CONFIG = {
    "input_size": (3, 24, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def make_bundle(
    folder: Path,
    *,
    task: str = "embedding",
    dim: int = 5,
    classes: tuple[str, ...] = (),
    thresholds: tuple[float, ...] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Write ``folder/model.onnx`` + ``deploy.json``; returns the weight matrix ``W (3, dim)``."""
    weight = np.random.default_rng(seed).standard_normal((3, dim)).astype(np.float32)
    out_name = "embeddings" if task == "embedding" else "logits"
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["y" if task == "embedding" else out_name]),
    ]
    if task == "embedding":
        nodes.append(helper.make_node("LpNormalization", ["y"], [out_name], axis=1, p=2))
    _, h, w = DATA_CONFIG["input_size"]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", dim])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    config = DeployConfig(
        task=task, data_config=dict(DATA_CONFIG), output_size=dim, normalization="l2" if task == "embedding" else "none",
        classes=classes, thresholds=thresholds, models={"fp32": {"file": "model.onnx"}}, output_name=out_name,
        source={"kind": "backbone", "backbone": {"name": "tiny", "pretrained": False, "weights": None}},
    )  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = "frugalvision", __import__("json").dumps(config.essentials())
    onnx.save(model, str(folder / "model.onnx"))
    config.write(folder)
    return weight


def reference(batch: np.ndarray, weight: np.ndarray, l2: bool) -> np.ndarray:
    y = batch.astype(np.float64).mean(axis=(2, 3)) @ weight.astype(np.float64)
    return y / np.linalg.norm(y, axis=1, keepdims=True) if l2 else y


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> tuple[Path, np.ndarray]:
    folder = tmp_path / "tiny-onnx"
    return folder, make_bundle(folder)


@pytest.fixture
def photos() -> list:
    """Real photos from scikit-image (RGB arrays of various sizes)."""
    import skimage.data as data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
