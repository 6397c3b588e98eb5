"""Detector export with the NMS inside the ONNX graph: the graph's NMS equals ``torchvision.ops.batched_nms`` on
the same raw outputs; the exported model equals PyTorch + batched_nms; deploy.json; int8; bad models refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.ops import box_iou

from det_standin import TinyDetector, export_tiny
from frugalvision.deploy import export_detector, export_onnx, quantize_int8
from frugalvision.deploy.detection import add_nms_to_graph
from frugalvision.errors import ExportError
from frugalvision.runtime import read_deploy_config
from helpers import DETECTION_OUTPUTS as OUTPUTS
from helpers import assert_detections_match
from helpers import torchvision_nms_reference as _torchvision_reference


def _nms_only_model(score_threshold, iou_threshold, max_detections, multi_label) -> bytes:
    """A graph that is only the appended NMS: inputs in_boxes (B, N, 4), in_scores (B, N, C) -> Identity -> NMS."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["in_boxes"], ["raw_boxes"]), helper.make_node("Identity", ["in_scores"], ["raw_scores"])],
        "nms_only",
        [helper.make_tensor_value_info("in_boxes", TensorProto.FLOAT, ["b", "n", 4]),
         helper.make_tensor_value_info("in_scores", TensorProto.FLOAT, ["b", "n", "c"])],
        [helper.make_tensor_value_info("raw_boxes", TensorProto.FLOAT, ["b", "n", 4]),
         helper.make_tensor_value_info("raw_scores", TensorProto.FLOAT, ["b", "n", "c"])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    full = add_nms_to_graph(model, score_threshold=score_threshold, iou_threshold=iou_threshold,
                            max_detections=max_detections, multi_label=multi_label)  # fmt: skip
    onnx.checker.check_model(full, full_check=True)
    return full.SerializeToString()


def _clustered(rng: np.random.Generator, batch: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in a few clusters (heavy overlaps, so NMS has work), distinct random scores."""
    centres = rng.uniform(20, 200, (batch, 6, 2))
    pick = rng.integers(0, 6, (batch, n))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (batch, n, 2))
    wh = rng.uniform(10, 60, (batch, n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=2).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, n, c)).astype(np.float32) ** 3
    return boxes, scores


@pytest.mark.parametrize(
    ("thr", "iou", "max_det", "multi_label"),
    [(0.25, 0.65, 300, True), (0.001, 0.5, 300, True), (0.1, 0.45, 7, True), (0.25, 0.65, 300, False), (0.05, 0.3, 20, False)],
)  # fmt: skip
def test_graph_nms_equals_torchvision_batched_nms(thr, iou, max_det, multi_label) -> None:
    rng = np.random.default_rng(7)
    boxes, scores = _clustered(rng, batch=3, n=250, c=4)
    scores[1] *= 0.0  # an image with nothing over the threshold
    session = ort.InferenceSession(
        _nms_only_model(thr, iou, max_det, multi_label), providers=["CPUExecutionProvider"]
    )
    got_boxes, got_scores, got_labels, count = session.run(OUTPUTS, {"in_boxes": boxes, "in_scores": scores})
    expected = _torchvision_reference(boxes, scores, thr, iou, max_det, multi_label)
    assert got_boxes.shape == (3, min(max_det, 250 * 4), 4) and count.dtype == np.int64
    for i, (e_boxes, e_scores, e_labels) in enumerate(expected):
        k = int(count[i])
        assert k == len(e_scores)
        np.testing.assert_array_equal(got_boxes[i, :k], e_boxes)  # same boxes, same order (best first)
        np.testing.assert_allclose(got_scores[i, :k], e_scores, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got_labels[i, :k], e_labels)
        # padding rows
        assert (
            (got_labels[i, k:] == -1).all()
            and (got_scores[i, k:] == 0).all()
            and (got_boxes[i, k:] == 0).all()
        )
    assert int(count[1]) == 0
    assert sum(len(e[1]) for e in expected) > 10  # the case is not trivial


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("det") / "det-onnx"
    model, result = export_tiny(
        folder, score_threshold=0.3, iou_threshold=0.6, max_detections=50, upsample=True
    )
    return model, result


def test_exported_detector_equals_torch_and_batched_nms(exported) -> None:
    model, result = exported
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # batch 5: dynamic axis
    boxes, scores, labels, count = session.run(OUTPUTS, {"images": images.numpy()})
    with torch.inference_mode():
        t_boxes, t_scores = model(images)
    expected = _torchvision_reference(t_boxes, t_scores, 0.3, 0.6, 50, True)
    total = 0
    for i, (e_boxes, e_scores, e_labels) in enumerate(expected):
        k = int(count[i])
        assert k == len(e_scores)
        total += k
        if k:  # the criterion: IoU >= 0.99 with torch's box, same score within 1e-4
            iou = box_iou(torch.from_numpy(boxes[i, :k]), torch.from_numpy(e_boxes)).diagonal()
            assert float(iou.min()) >= 0.99
            np.testing.assert_allclose(scores[i, :k], e_scores, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(labels[i, :k], e_labels)
    assert total > 0
    assert result.parity["nms_recall"] == 1.0 and result.parity["scores_max_abs"] < 1e-4


def test_deploy_json_records_task_letterbox_and_nms(exported) -> None:
    _, result = exported
    record = json.loads((result.folder / "deploy.json").read_text())
    assert record["task"] == "detection" and record["classes"] == ["a", "b", "c"]
    assert record["data_config"]["input_size"] == [3, 64, 64]
    assert record["detection"]["nms"] == {"score_threshold": 0.3, "iou_threshold": 0.6, "max_detections": 50,
                                          "multi_label": True}  # fmt: skip
    assert record["detection"]["letterbox"] == {"fill": 114, "interpolation": "bilinear"}
    names = [n for n in onnx.load(str(result.model_path)).graph.node if n.op_type == "NonMaxSuppression"]
    assert len(names) == 1
    # a lone .onnx file carries the same record in its metadata
    lone = read_deploy_config(result.model_path)
    assert lone.task == "detection" and lone.detection == read_deploy_config(result.folder).detection


def test_int8_quantises_the_body_and_keeps_the_nms_float(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from PIL import Image

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(
        cwd
    )  # ONNX Runtime's symbolic shape inference leaves files in the working folder on failure

    folder = tmp_path / "q"
    shutil.copytree(exported[1].folder, folder)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8)) for i in range(10)
    ]
    q = quantize_int8(folder, images, max_images=6, check_images=4)
    assert q.model_path.is_file() and read_deploy_config(folder).models["int8"]["agreement_with_fp32"]
    graph = onnx.load(str(q.model_path)).graph
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the body is quantised
    producers = {o: n for n in graph.node for o in n.output}
    nms = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    # NMS reads float boxes and scores (after a DequantizeLinear at most), and its outputs are never quantised
    assert all(i in producers or i.startswith("nms/") for i in nms.input)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in ("boxes", "scores") for n in graph.node)
    assert {"recall", "precision"} <= set(q.agreement)
    assert list(cwd.iterdir()) == []  # nothing left in the user's working folder


def test_int8_keeps_the_dfl_integral_float(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With distribution focal loss the head's integral (softmax, then a MatMul with the constant 0..R) stays float
    in the int8 model: quantised, the ramp itself would be rounded (bin 1 of 0..7 at scale 7/127 -> 0.992)."""
    from PIL import Image

    from frugalvision.models.detection import DetectorConfig, create_detector

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    config = DetectorConfig(
        num_classes=2, backbone="test_efficientnet", pretrained=False, image_size=64, dfl_bins=8
    )
    model = create_detector(config).eval().fuse()
    folder = tmp_path / "dfl"
    export_detector(model, folder, image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, classes=["a", "b"])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    q = quantize_int8(folder, images, max_images=4, check_images=2)
    graph = onnx.load(str(q.model_path)).graph
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)  # the body is quantised
    ramps = {t.name for t in graph.initializer if onnx.numpy_helper.to_array(t).tolist() == list(range(8))}
    producers = {o: n for n in graph.node for o in n.output}
    integrals = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in ramps]
    assert len(integrals) == 3  # one per level, the ramp read as the float initializer itself
    for node in integrals:
        # float probabilities: no DequantizeLinear between the Softmax and the integral
        assert producers[node.input[0]].op_type == "Softmax"
        assert not any(n.op_type == "QuantizeLinear" and n.input[0] == node.output[0] for n in graph.node)


def test_tied_scores_of_an_untrained_head_do_not_fail_the_export(tmp_path: Path) -> None:
    """Every score at the prior 0.01 (a freshly built head): ONNX Runtime and torchvision may keep different boxes
    among equal scores; the export checks the raw outputs and records the ties instead of failing."""
    model = TinyDetector()
    with torch.no_grad():
        for head in model.heads:
            head.weight[4:] = 0.0
            head.bias[4:] = -4.59512  # sigmoid = 0.01
    result = export_detector(model, tmp_path / "tied", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                             classes="abc", score_threshold=0.001, iou_threshold=0.65, max_detections=300)  # fmt: skip
    assert result.parity["nms_score_ties"] is True and result.parity["scores_max_abs"] < 1e-6


class _WrongOutput(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_models_breaking_the_contract_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    kw = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(ExportError, match=r"boxes \(B, N, 4\), scores \(B, N, C\)"):
        export_detector(_WrongOutput(), tmp_path / "a", image_size=64, classes=["x"], **kw)
    with pytest.raises(ValueError, match="scores 3 classes but 2 class names"):
        export_detector(TinyDetector(), tmp_path / "b", image_size=64, classes=["x", "y"], **kw)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_detector(TinyDetector(), tmp_path / "c", image_size=70, classes=["x", "y", "z"], **kw)
    with pytest.raises(ValueError, match="max_detections"):
        export_detector(TinyDetector(), tmp_path / "d", image_size=64, classes="xyz", max_detections=0, **kw)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    data_config = {"input_size": (3, 64, 64), "interpolation": "bilinear", **kw, "crop_pct": 1.0}
    with pytest.raises(ValueError, match="export_detector"):
        export_onnx(TinyDetector(), tmp_path / "e", data_config=data_config, task="detection")


def test_export_detector_bundle_exports_a_saved_detection_bundle(tmp_path: Path) -> None:
    """A bundle as ``train --task detection`` writes it (save_detection_bundle) exports through the library
    function; the graph's detections equal the bundle's unfused detector + torchvision's batched_nms."""
    from frugalvision.bundle import save_detection_bundle
    from frugalvision.deploy import export_detector_bundle
    from frugalvision.models.detection import DetectorConfig, create_detector

    torch.manual_seed(0)
    cfg = DetectorConfig(
        num_classes=2, backbone="test_efficientnet", pretrained=False, image_size=64, repconv=True
    )
    model = create_detector(cfg)
    with torch.no_grad():  # distinct scores (a fresh head scores every box at its prior: ties)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bundle = save_detection_bundle(model, tmp_path / "bundle", classes=["red", "blue"])
    result = export_detector_bundle(bundle, tmp_path / "onnx", score_threshold=0.005, iou_threshold=0.6)
    config = read_deploy_config(result.folder)
    assert config.task == "detection" and config.classes == ("red", "blue")
    assert (
        config.source["bundle"] == str(bundle)
        and config.source["id"] == json.loads((bundle / "config.json").read_text())["id"]
    )
    assert tuple(config.data_config["mean"]) == tuple(model.data_config["mean"])
    model.eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        t_boxes, t_scores = model(images)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    outputs = session.run(OUTPUTS, {"images": images.numpy()})
    assert assert_detections_match(outputs, t_boxes, t_scores, 0.005, 0.6) > 0
