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
- Detection: :func:`write_coco` (coloured rectangles and their COCO JSON), :func:`detection_config` (a tiny
  detection run), :func:`torchvision_nms_reference` (class-aware ``batched_nms`` written from the definition) and
  :func:`assert_detections_match` (an exported graph's detections against it).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
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


#: ``DetectorConfig`` keywords of a tiny random detector (timm's ``test_efficientnet`` trunk, 64 px).
TINY_DETECTOR: dict[str, Any] = {"backbone": "test_efficientnet", "pretrained": False, "image_size": 64}


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding them (``fuse()``) is really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)


def load_benchmark(file: str, name: str | None = None) -> ModuleType:
    """``benchmarks/<file>`` imported as the module ``name`` (default: the file's stem), once per process; the
    benchmarks folder goes on ``sys.path`` for the modules it imports itself (e.g. ``shared_data``)."""
    import importlib.util
    import sys

    name = name or Path(file).stem
    if name in sys.modules:
        return sys.modules[name]
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


# --- detection ----------------------------------------------------------------------------------------------------
DETECTION_OUTPUTS = ["boxes", "scores", "labels", "num_detections"]  # an exported detector's graph outputs
COLOURS = [(220, 40, 40), (40, 40, 220)]  # class 0 red, class 1 blue


def write_coco(root: Path, n: int = 10, seed: int = 0, boxes: bool = True) -> Path:
    """``n`` images of 1-2 red / blue rectangles (the last one empty: a negative) and their COCO JSON."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        w, h = (96, 64) if i % 2 else (64, 80)  # two aspect ratios: the letterbox pads both ways
        pixels = np.full((h, w, 3), 128, np.uint8)
        for _ in range(0 if i == n - 1 else int(rng.integers(1, 3))):
            bw, bh = int(rng.integers(12, 30)), int(rng.integers(12, 30))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            c = int(rng.integers(0, 2))
            pixels[y : y + bh, x : x + bw] = COLOURS[c]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [x, y, bw, bh]}
            )
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    data = {
        "images": images,
        "annotations": annotations if boxes else [],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}],
    }
    path = root / "train.json"
    path.write_text(json.dumps(data))
    return path


def detection_config(data: Path, out: Path, *overrides: str) -> Any:
    """A resolved training config of a tiny detection run (64 px, random tiny backbone, 2 epochs) on ``data``."""
    from frugalvision.train import load_config

    return load_config(
        None,
        [
            "task=detection",
            f"data.path={data}",
            f"out={out}",
            "model.name=test_efficientnet",
            "model.pretrained=false",
            "detection.image_size=64",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.val_fraction=0.3",
            "data.num_workers=0",
            "optim.lr=1e-3",
            "trainer.epochs=2",
            "trainer.progress=false",
            *overrides,
        ],
    )


def torchvision_nms_reference(
    boxes: Any, scores: Any, thr: float, iou: float, max_det: int, multi_label: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (box, class) pairs with score > thr (each box's best class only unless multi_label), class-aware
    torchvision batched_nms, the max_det best. Written from the definition, independent of the package."""
    import torch
    from torchvision.ops import batched_nms

    out = []
    for b, s in zip(torch.as_tensor(boxes), torch.as_tensor(scores), strict=True):
        if not multi_label:
            best = s.argmax(dim=1)
            s = torch.zeros_like(s).scatter_(1, best[:, None], s.gather(1, best[:, None]))
        box_i, cls = torch.nonzero(s > thr, as_tuple=True)
        val = s[box_i, cls]
        keep = batched_nms(b[box_i], val, cls, iou)[:max_det]
        out.append((b[box_i][keep].numpy(), val[keep].numpy(), cls[keep].numpy()))
    return out


def assert_detections_match(
    outputs: Any, t_boxes: Any, t_scores: Any, thr: float, iou: float, max_det: int = 300
) -> int:
    """An exported detector's ``outputs`` (:data:`DETECTION_OUTPUTS` from ONNX Runtime) against torch's raw
    ``t_boxes, t_scores`` + :func:`torchvision_nms_reference`: the same count per image, and each detection has a
    twin (same class, IoU >= 0.99, score within 1e-4 -- near-ties may swap order). Returns the detections."""
    import torch
    from torchvision.ops import box_iou

    boxes, scores, labels, count = outputs
    total = 0
    for i, (e_boxes, e_scores, e_labels) in enumerate(
        torchvision_nms_reference(t_boxes, t_scores, thr, iou, max_det, True)
    ):
        k = int(count[i])
        assert k == len(e_scores)
        total += k
        if k:
            overlap = box_iou(torch.from_numpy(boxes[i, :k]), torch.from_numpy(e_boxes)).numpy()
            twin = (
                (overlap >= 0.99)
                & (labels[i, :k, None] == e_labels[None, :])
                & (np.abs(scores[i, :k, None] - e_scores[None, :]) <= 1e-4)
            )
            assert twin.any(axis=1).all() and twin.any(axis=0).all()
    return total
