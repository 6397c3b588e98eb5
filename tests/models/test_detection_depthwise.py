"""``DetectorConfig.depthwise``: depthwise-separable 3x3 convolutions in the neck and head (YOLOX-nano's way).

Fusion equality (with and without RepConv), shapes, FLOPs against the per-layer equation, ONNX export parity, and
the option off leaving the detector exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from timm.utils import reparameterize_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from frugalvision.models.detection import (
    DetectorConfig,
    DWConv,
    RepConv,
    create_detector,
)
from helpers import (
    DETECTION_OUTPUTS,
    TINY_DETECTOR,
    assert_detections_match,
    detection_config,
    randomise_batchnorm,
    write_coco,
)


def _spatial_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.mark.parametrize("channels,groups,stride", [(8, 8, 1), (8, 8, 2), (8, 4, 1), (8, 2, 1)])
def test_grouped_repconv_fuses_into_one_grouped_conv(channels: int, groups: int, stride: int) -> None:
    """The identity branch of a grouped RepConv sits at index ``i mod (c / groups)`` of channel ``i``'s kernel."""
    torch.manual_seed(0)
    block = RepConv(channels, channels, stride, groups=groups).double()
    randomise_batchnorm(block)
    block.eval()
    assert (block.bn_id is not None) == (stride == 1)
    x = torch.randn(2, channels, 9, 9, dtype=torch.float64)
    before = block(x)
    block.reparameterize()
    assert isinstance(block.fused, nn.Conv2d) and block.fused.groups == groups
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(block(x), before, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="groups=3 must divide c_in=8"):
        RepConv(8, 8, groups=3)


@pytest.mark.parametrize("rep", [False, True])
def test_dwconv_shapes_flops_and_folding(rep: bool) -> None:
    """Depthwise 3x3 + pointwise 1x1; multiply-adds ``H' W' (9 c_in + c_in c_out)`` (the docstring's equation);
    folding (BN, and the depthwise RepConv's branches) keeps the output."""
    torch.manual_seed(0)
    c_in, c_out, h = 16, 24, 10
    block = DWConv(c_in, c_out, 3, 2, rep=rep).double()
    randomise_batchnorm(block)
    block.eval()
    x = torch.randn(2, c_in, h, h, dtype=torch.float64)
    before = block(x)
    assert before.shape == (2, c_out, h // 2, h // 2)
    reparameterize_model(block, inplace=True)  # what Detector.fuse does
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        after = block(x[:1])
    pixels = (h // 2) ** 2
    assert counter.get_total_flops() == 2 * pixels * (9 * c_in + c_in * c_out)
    torch.testing.assert_close(block(x), before, atol=1e-10, rtol=0)
    assert after.shape == (1, c_out, h // 2, h // 2)
    with pytest.raises(ValueError, match="rep=True needs k=3"):
        DWConv(8, 8, 5, rep=True)


@pytest.mark.parametrize(
    "options",
    [
        {"depthwise": True},
        {"depthwise": True, "head": "anchor", "repconv": True, "aux_head": True, "size": "s"},
    ],
    ids=["dw", "dw_anchor_rep_aux"],
)
def test_depthwise_detector_shapes_and_fused_equals_unfused(options: dict) -> None:
    torch.manual_seed(0)
    det = create_detector(DetectorConfig(num_classes=3, **TINY_DETECTOR, **options)).double()
    # every 3x3 convolution of the neck and the heads is depthwise (groups = channels)
    for part in (det.neck, det.head, det.aux_head):
        if part is not None:
            convs = _spatial_convs(part)
            assert convs and all(c.groups == c.in_channels == c.out_channels for c in convs)
    randomise_batchnorm(det)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    anchors_per_cell = 3 if options.get("head") == "anchor" else 1
    n = (8 * 8 + 4 * 4 + 2 * 2) * anchors_per_cell
    det.train()
    out = det(x)
    assert out["cls"].shape == (2, n, 3) and out["boxes"].shape == (2, n, 4) and out["points"].shape == (n, 2)
    assert ("aux" in out) == bool(options.get("aux_head"))
    det.eval()
    randomise_batchnorm(det)  # the train-mode pass moved the running statistics
    with torch.no_grad():
        boxes, scores = det(x)
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, 3)
    det.fuse()
    assert det.aux_head is None
    for part in (det.neck, det.head):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
        assert not any(isinstance(m, RepConv) and m.fused is None for m in part.modules())
    with torch.no_grad():
        fused_boxes, fused_scores = det(x)
    torch.testing.assert_close(fused_boxes, boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_scores, scores, atol=1e-5, rtol=0)


#: sha256 (first 16 hex digits) of the neck's and heads' ``name:shape`` state-dict lines and their parameter count,
#: computed with the code before ``depthwise`` existed (commit 5bdddd9): the option off builds the same detector.
BEFORE = {
    "plain": ({}, "fd7ee366b4de6ca0", 1353045),
    "anchor_rep_aux_s": (
        {"repconv": True, "aux_head": True, "head": "anchor", "size": "s"},
        "862328d3645b331c",
        7337854,
    ),
}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_depthwise_off_builds_the_detector_of_before(case: str) -> None:
    options, digest, count = BEFORE[case]
    det = create_detector(DetectorConfig(num_classes=3, **TINY_DETECTOR, **options))
    lines = "\n".join(
        f"{k}:{tuple(v.shape)}" for k, v in det.state_dict().items() if not k.startswith("backbone.")
    )
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest
    assert sum(p.numel() for k, p in det.named_parameters() if not k.startswith("backbone.")) == count
    assert not any(c.groups > 1 for c in _spatial_convs(det.neck) + _spatial_convs(det.head))
    # a bundle saved before the option existed has no "depthwise" key: it loads as the plain detector
    old = DetectorConfig(num_classes=3, **TINY_DETECTOR, **options).to_dict()
    del old["depthwise"]
    assert DetectorConfig.from_dict(old).depthwise is False
    with pytest.raises(ValueError, match="depthwise must be true or false"):
        DetectorConfig(num_classes=3, depthwise="yes")  # type: ignore[arg-type]


def test_depthwise_neck_and_head_cost_about_a_third() -> None:
    """Size n at 416 px, 80 classes (the benchmark's setting): the depthwise neck + head need under 0.4x the FLOPs
    and parameters of the dense ones; the trunk is untouched."""
    cost = {}
    for dw in (False, True):
        det = create_detector(DetectorConfig(num_classes=80, pretrained=False, depthwise=dw)).fuse()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            det(torch.zeros(1, 3, 416, 416))
        flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        params = sum(p.numel() for m in (det.neck, det.head) for p in m.parameters())
        cost[dw] = (flops["Detector.neck"] + flops["Detector.head"], params, counter.get_total_flops())
    assert cost[True][0] < 0.4 * cost[False][0] and cost[True][1] < 0.4 * cost[False][1]
    assert cost[False][2] - cost[True][2] == cost[False][0] - cost[True][0]  # the trunk's FLOPs are the same


def test_depthwise_rep_bundle_exports_with_parity(tmp_path: Path) -> None:
    """A depthwise + RepConv detector saved as a bundle exports (fused, NMS in the graph); ONNX Runtime's
    detections equal the unfused torch model + torchvision's batched_nms: same class, IoU >= 0.99, score 1e-4."""
    from frugalvision.bundle import save_detection_bundle
    from frugalvision.deploy import export_detector_bundle

    torch.manual_seed(0)
    cfg = DetectorConfig(num_classes=2, **TINY_DETECTOR, repconv=True, depthwise=True)
    model = create_detector(cfg)
    with torch.no_grad():  # distinct scores (a fresh head scores every box at its prior: ties)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    randomise_batchnorm(model)  # spreads the scores: no exact ties among the depthwise head's boxes
    bundle = save_detection_bundle(model, tmp_path / "bundle", classes=["red", "blue"])
    assert json.loads((bundle / "config.json").read_text())["model"]["detector"]["depthwise"] is True
    result = export_detector_bundle(bundle, tmp_path / "onnx", score_threshold=0.005, iou_threshold=0.6)
    model.eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        t_boxes, t_scores = model(images)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    outputs = session.run(DETECTION_OUTPUTS, {"images": images.numpy()})
    assert assert_detections_match(outputs, t_boxes, t_scores, 0.005, 0.6) > 0


@pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_training_config_builds_and_saves_the_depthwise_detector(tmp_path: Path) -> None:
    """``detection.depthwise=true`` trains the depthwise detector; its bundle reloads it (same outputs)."""
    from frugalvision.bundle import load_detector
    from frugalvision.train import fit

    coco = write_coco(tmp_path / "coco", n=6)
    result = fit(detection_config(coco, tmp_path / "run", "detection.depthwise=true", "trainer.epochs=1"))
    config = json.loads((result.bundle / "config.json").read_text())
    assert config["model"]["detector"]["depthwise"] is True
    loaded = load_detector(result.bundle)
    assert all(c.groups == c.in_channels for c in _spatial_convs(loaded.neck) + _spatial_convs(loaded.head))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), result.model.eval()(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
