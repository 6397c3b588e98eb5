"""The anchor-free head with distribution focal loss (``dfl_bins``): the integral decoding against a float64 loop,
the option off equal to softplus distances, the anchor head refused, gradients, and the ONNX export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

from frugalvision.losses import DetectionLoss
from frugalvision.models.detection import DetectionHead, DetectorConfig, create_detector, grid_points
from frugalvision.train import ConfigError, load_config
from helpers import TINY_DETECTOR

pytestmark = pytest.mark.usefixtures("one_thread")

STRIDES = (8, 16, 32)


def _head_and_raw(dfl_bins: int, seed: int = 0) -> tuple[DetectionHead, list[torch.Tensor], tuple, list]:
    """A float64 head over random maps at strides 8/16/32 of a 64 px input, its outputs, and the raw box-branch
    maps ``(B, K, h, w)`` caught by forward hooks."""
    torch.manual_seed(seed)
    head = DetectionHead((8, 12, 16), 3, STRIDES, 16, dfl_bins=dfl_bins).double().eval()
    raw: list[torch.Tensor] = []
    for branch in head.box:
        branch.register_forward_hook(lambda _m, _i, out: raw.append(out.detach().clone()))
    g = torch.Generator().manual_seed(seed + 1)
    feats = [torch.randn(2, c, 64 // s, 64 // s, generator=g, dtype=torch.float64) * 2 for c, s in
             zip((8, 12, 16), STRIDES, strict=True)]  # fmt: skip
    with torch.no_grad():
        out = head(feats)
    return head, feats, out, raw


def _integral_loop(raw: list[torch.Tensor], bins: int) -> torch.Tensor:
    """Boxes ``(B, N, 4)`` from raw maps, written out cell by cell in float64: for side ``k`` of cell ``(y, x)``
    the logits are channels ``k (R + 1) .. k (R + 1) + R``; ``d_k = s * sum_i softmax(z)_i * i``."""
    out = []
    for level, r in enumerate(raw):
        s = STRIDES[level]
        b, _, h, w = r.shape
        boxes = torch.zeros(b, h * w, 4, dtype=torch.float64)
        for n in range(b):
            for y in range(h):
                for x in range(w):
                    px, py = (x + 0.5) * s, (y + 0.5) * s
                    d = []
                    for k in range(4):
                        z = r[n, k * bins : (k + 1) * bins, y, x].double().tolist()
                        m = max(z)
                        e = [math.exp(v - m) for v in z]
                        d.append(s * sum(i * v for i, v in enumerate(e)) / sum(e))
                    boxes[n, y * w + x] = torch.tensor(
                        [px - d[0], py - d[1], px + d[2], py + d[3]], dtype=torch.float64
                    )
        out.append(boxes)
    return torch.cat(out, 1)


@pytest.mark.parametrize("bins", [2, 16])
def test_integral_decoding_equals_a_float64_loop(bins: int) -> None:
    head, _, (_, boxes, _, _, dist), raw = _head_and_raw(bins)
    n = sum((64 // s) ** 2 for s in STRIDES)
    assert boxes.shape == (2, n, 4) and dist is not None and dist.shape == (2, n, 4, bins)
    assert all(r.shape[1] == 4 * bins for r in raw)
    expected = _integral_loop(raw, bins)
    # the head decodes in float32 (as the plain head does): compare at float32 precision
    torch.testing.assert_close(boxes.double(), expected, atol=1e-4, rtol=1e-6)
    # the distribution logits are the raw channels, side-major, bin-minor
    first = raw[0].permute(0, 2, 3, 1).reshape(2, -1, 4, bins)
    torch.testing.assert_close(dist[:, : first.shape[1]].double(), first)
    # _decode itself in float64, against the loop at float64 precision
    t = raw[0].permute(0, 2, 3, 1).reshape(2, 64, 1, 4 * bins)
    p = grid_points(8, 8, 8, t.device, t.dtype)
    got = head._decode(t, p, 8, 0).reshape(2, 64, 4)
    torch.testing.assert_close(got, _integral_loop(raw[:1], bins), atol=1e-10, rtol=1e-10)


def test_initial_distributions_put_boxes_about_two_strides_from_the_centre() -> None:
    head = DetectionHead((8,), 1, (8,), 16, dfl_bins=16)
    bias = head.box[0].pred.bias.detach().reshape(4, 16)
    expected = (torch.softmax(bias, -1) * torch.arange(16.0)).sum(-1)
    torch.testing.assert_close(expected, torch.full((4,), 2.0), atol=0.05, rtol=0)


def test_option_off_equals_the_softplus_distances_exactly() -> None:
    _, _, (_, boxes, _, _, dist), raw = _head_and_raw(0)
    assert dist is None and all(r.shape[1] == 4 for r in raw)
    expected = []
    for level, r in enumerate(raw):
        s = STRIDES[level]
        h, w = r.shape[2:]
        t = r.float().permute(0, 2, 3, 1).reshape(2, h * w, 4)
        p = grid_points(h, w, s, t.device, t.dtype)[None]
        d = F.softplus(t) * s
        expected.append(torch.cat([p - d[..., :2], p + d[..., 2:]], -1))
    torch.testing.assert_close(boxes, torch.cat(expected, 1), atol=0, rtol=0)
    # a detector without the field: same parameters, no distribution in the train-mode dict
    cfg = DetectorConfig(num_classes=2, **TINY_DETECTOR)
    assert cfg.dfl_bins == 0
    assert DetectorConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "dfl_bins"}) == cfg
    det = create_detector(cfg).train()
    assert "box_dist" not in det(torch.zeros(1, 3, 64, 64))
    assert all(b.pred.out_channels == 4 for b in det.head.box)


def test_anchor_head_with_dfl_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dfl_bins needs head='anchor_free'") as info:
        DetectorConfig(num_classes=2, head="anchor", dfl_bins=16)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"dfl_bins needs an anchor-free head"):
        DetectionHead((8,), 1, (8,), 16, anchors=[[(10.0, 10.0)]], dfl_bins=16)
    for bad in (1, -3, True, 2.5):
        with pytest.raises(ValueError, match=r"dfl_bins must be 0 \(off\) or an int >= 2"):
            DetectorConfig(num_classes=2, dfl_bins=bad)  # type: ignore[arg-type]
    common = ["task=detection", f"data.path={tmp_path}", f"out={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=r"detection\.dfl_bins needs detection\.head=anchor_free") as e:
        load_config(None, [*common, "detection.head=anchor", "detection.dfl_bins=16"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"detection\.dfl_bins must be 0 \(off\) or >= 2"):
        load_config(None, [*common, "detection.dfl_bins=1"])
    assert load_config(None, [*common, "detection.dfl_bins=16"]).detection.dfl_bins == 16


def test_dfl_bins_auto_resolves_by_head(tmp_path: Path) -> None:
    """``detection.dfl_bins="auto"`` (the training default) is 16 bins with the anchor-free head and 0 with
    anchors; a value given is kept, and resolving twice changes nothing."""
    from frugalvision.train import TrainConfig, resolve_config

    assert TrainConfig().detection.dfl_bins == "auto"
    common = ["task=detection", f"data.path={tmp_path}", f"out={tmp_path / 'out'}"]
    resolved = load_config(None, common)
    assert resolved.detection.dfl_bins == 16
    assert resolve_config(resolved) is resolved
    assert load_config(None, [*common, "detection.head=anchor"]).detection.dfl_bins == 0
    assert load_config(None, [*common, "detection.dfl_bins=0"]).detection.dfl_bins == 0
    assert load_config(None, [*common, "detection.dfl_bins=auto"]).detection.dfl_bins == 16
    with pytest.raises(ConfigError, match=r"detection\.dfl_bins must be"):
        load_config(None, [*common, "detection.dfl_bins=many"])


def test_dfl_detector_bundle_round_trip(tmp_path: Path) -> None:
    from frugalvision.bundle import load_detector, save_detection_bundle

    torch.manual_seed(0)
    det = create_detector(DetectorConfig(num_classes=2, dfl_bins=8, **TINY_DETECTOR))
    folder = save_detection_bundle(det, tmp_path / "bundle", classes=["a", "b"])
    loaded = load_detector(folder)
    assert loaded.config.dfl_bins == 8
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(loaded(x), det(x), strict=True):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_dfl_detector_trains_with_finite_gradients_and_exports_the_train_dict() -> None:
    torch.manual_seed(0)
    det = create_detector(DetectorConfig(num_classes=2, dfl_bins=16, aux_head=True, **TINY_DETECTOR)).train()
    out = det(torch.randn(2, 3, 64, 64))
    n = 8 * 8 + 4 * 4 + 2 * 2
    assert out["box_dist"].shape == (2, n, 4, 16) and out["aux"]["box_dist"].shape == (2, n, 4, 16)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 20.0, 60.0, 62.0]]), "labels": torch.tensor([0])}]  # fmt: skip
    terms = DetectionLoss(num_classes=2)(out, targets)
    assert float(terms["dfl"].detach()) > 0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    grads = [p.grad for p in det.head.box.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


@pytest.mark.filterwarnings(
    "ignore:the parity inputs give tied scores"
)  # random head: raw outputs compared here
def test_dfl_detector_exports_to_onnx_and_equals_torch(tmp_path: Path) -> None:
    """The exported graph (``frugalvision.deploy.export_detector``, NMS inside) computes the integral as a softmax and
    a product with the fixed weights ``0..R``; ONNX Runtime's raw boxes equal torch's within 1e-4 relative (IoU >=
    0.99 box by box) and its scores within 1e-4, on a batch size other than the traced one."""
    import onnx
    import onnxruntime as ort

    from frugalvision.deploy import export_detector

    torch.manual_seed(0)
    det = create_detector(DetectorConfig(num_classes=3, dfl_bins=16, repconv=True, **TINY_DETECTOR))
    with (
        torch.no_grad()
    ):  # varied class scores, so that the NMS has boxes to keep (the prior gives 0.01 everywhere)
        for branch in det.head.cls:
            branch.pred.bias.normal_(0.0, 1.0)
    det.fuse()
    data = det.data_config
    result = export_detector(det, tmp_path / "onnx", image_size=64, mean=data["mean"], std=data["std"],
                             classes=["a", "b", "c"], score_threshold=0.2, iou_threshold=0.6,
                             max_detections=50)  # fmt: skip
    model = onnx.load(str(result.model_path))
    ops = [node.op_type for node in model.graph.node]
    assert (
        "Softmax" in ops and "MatMul" in ops
    )  # the integral: a softmax, then a product with the weights 0..R
    # expose the raw (pre-NMS) outputs of the body next to the detections
    model.graph.output.extend(
        [
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in ("raw_boxes", "raw_scores")
        ]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # batch 5: the dynamic axis
    raw_boxes, raw_scores, count = session.run(["raw_boxes", "raw_scores", "num_detections"],
                                               {"images": images.numpy()})  # fmt: skip
    with torch.inference_mode():
        t_boxes, t_scores = det(images)
    assert raw_boxes.shape == tuple(t_boxes.shape) and int(count.sum()) > 0
    rel = np.abs(raw_boxes - t_boxes.numpy()) / np.maximum(64.0, np.abs(t_boxes.numpy()))
    assert float(rel.max()) <= 1e-4
    iou = box_iou(torch.from_numpy(raw_boxes).reshape(-1, 4), t_boxes.reshape(-1, 4)).diagonal()
    assert float(iou.min()) >= 0.99
    np.testing.assert_allclose(raw_scores, t_scores.numpy(), atol=1e-4, rtol=0)
    assert result.parity["boxes_max_rel"] <= 1e-4
