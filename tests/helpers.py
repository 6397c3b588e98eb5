"""Helpers the tests import (plain functions and constants; fixtures live in the ``conftest.py`` files).

Importable as ``helpers`` from any test: ``pyproject.toml`` puts ``tests/`` on ``sys.path`` (pytest's
``pythonpath`` setting), which ``--import-mode=importlib`` needs, as it imports test files and conftests under
unique names that cannot import each other.

- :func:`make_bundle` / :func:`reference`: a tiny deploy bundle built by hand with ``onnx.helper`` (no torch,
  milliseconds) and its float64 reference. The model: ``y = mean_{h,w}(x) @ W`` (``(B, 3, H, W) -> (B, D)``),
  then L2 normalisation for ``"l2"`` embeddings; classifiers output ``y`` as logits.
- :func:`tiny_cnn` / :func:`tiny_vit` with :data:`TIMM_DATA_CONFIG`: small random timm models for export tests.
- :func:`live_server`: an app under a real uvicorn on 127.0.0.1.
- :func:`make_labelled_folder`: a small class-per-folder image set that a tiny model learns in seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# --- a tiny hand-built ONNX deploy bundle ------------------------------------------------------------------
BUNDLE_DATA_CONFIG = {
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
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from frugalvision.runtime import DeployConfig

    weight = np.random.default_rng(seed).standard_normal((3, dim)).astype(np.float32)
    out_name = "embeddings" if task == "embedding" else "logits"
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["y" if task == "embedding" else out_name]),
    ]
    if task == "embedding":
        nodes.append(helper.make_node("LpNormalization", ["y"], [out_name], axis=1, p=2))
    _, h, w = BUNDLE_DATA_CONFIG["input_size"]
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
        task=task, data_config=dict(BUNDLE_DATA_CONFIG), output_size=dim,
        normalization="l2" if task == "embedding" else "none", classes=classes, thresholds=thresholds,
        models={"fp32": {"file": "model.onnx"}}, output_name=out_name,
        source={"kind": "backbone", "backbone": {"name": "tiny", "pretrained": False, "weights": None}},
    )  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = "frugalvision", json.dumps(config.essentials())
    onnx.save(model, str(folder / "model.onnx"))
    config.write(folder)
    return weight


def reference(batch: np.ndarray, weight: np.ndarray, l2: bool) -> np.ndarray:
    """The bundle of :func:`make_bundle` computed in float64: ``mean_{h,w}(batch) @ W``, L2-normalised if ``l2``."""
    y = batch.astype(np.float64).mean(axis=(2, 3)) @ weight.astype(np.float64)
    return y / np.linalg.norm(y, axis=1, keepdims=True) if l2 else y


# --- tiny timm models for export ----------------------------------------------------------------------------
TIMM_DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                    "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip


def tiny_cnn() -> torch.nn.Module:
    """A random ResNet-10-T (seed 0) in eval mode, pooled features (no classifier)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=0).eval()


def tiny_vit() -> torch.nn.Module:
    """A random 2-block ViT-Tiny at 32 px with 8 px patches (seed 0) in eval mode."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2).eval()


# --- a live HTTP server -------------------------------------------------------------------------------------
@contextlib.contextmanager
def live_server(app: Any, **config: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


# --- generated image folders --------------------------------------------------------------------------------
def make_labelled_folder(root: Path, classes: int = 8, per_class: int = 5, size: int = 24) -> Path:
    """``classes`` folders of ``per_class`` noisy images around a class colour and pattern."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(40, 215, 3)
        stripes = (np.arange(size) // (2 + c % 4) % 2)[None, :, None] * 40
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(colour + stripes + rng.normal(0, 45, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c:02d}" / f"img{i}.png")
    return root
