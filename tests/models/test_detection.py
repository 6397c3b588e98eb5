"""The detector: shapes, RepConv / whole-model fusion equality, anchors, NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms

from frugalvision.errors import DataWarning
from frugalvision.models.detection import (
    ConvBNAct,
    DetectorConfig,
    RepConv,
    best_possible_recall,
    choose_anchors,
    create_detector,
    default_anchors,
    fit_anchors,
    postprocess,
)
from helpers import TINY_DETECTOR, randomise_batchnorm


@pytest.mark.parametrize("c_in,c_out,stride", [(8, 8, 1), (8, 16, 1), (8, 8, 2)])
def test_repconv_fuses_into_one_conv(c_in: int, c_out: int, stride: int) -> None:
    torch.manual_seed(0)
    block = RepConv(c_in, c_out, stride).double()
    randomise_batchnorm(block)
    block.eval()
    x = torch.randn(2, c_in, 9, 9, dtype=torch.float64)
    before = block(x)
    # the identity branch exists exactly when shapes allow it
    assert (block.bn_id is not None) == (c_in == c_out and stride == 1)
    block.reparameterize()
    assert isinstance(block.fused, nn.Conv2d) and block.fused.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    torch.testing.assert_close(block(x), before, atol=1e-5, rtol=0)


def test_conv_bn_folding_equals_eval_batchnorm() -> None:
    torch.manual_seed(0)
    block = ConvBNAct(4, 6, 3, 2).double()
    randomise_batchnorm(block)
    block.eval()
    x = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    before = block(x)
    block.reparameterize()
    torch.testing.assert_close(block(x), before, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"head": "anchor", "repconv": True, "aux_head": True, "size": "s"},
    ],
    ids=["anchor_free", "anchor_rep_aux"],
)
def test_detector_shapes_and_fused_equals_unfused(options: dict) -> None:
    torch.manual_seed(0)
    det = create_detector(DetectorConfig(num_classes=3, **TINY_DETECTOR, **options)).double()
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
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    det.fuse()
    assert det.aux_head is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.neck.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.head.modules())
    fused_boxes, fused_scores = det(x)
    torch.testing.assert_close(fused_boxes, boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_scores, scores, atol=1e-5, rtol=0)


def test_timm_reparameterizable_backbone_fuses() -> None:
    """timm's MobileOne blocks re-parameterize through ``Detector.fuse`` (timm.utils.reparameterize_model)."""
    torch.manual_seed(0)
    cfg = DetectorConfig(num_classes=2, backbone="mobileone_s0", pretrained=False, image_size=64)
    det = create_detector(cfg).double()
    randomise_batchnorm(det)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    boxes, scores = det(x)
    branches = sum(1 for m in det.backbone.modules() if hasattr(m, "reparameterize"))
    assert branches > 0
    det.fuse()
    assert any(getattr(m, "reparam_conv", None) is not None for m in det.backbone.modules())
    fused_boxes, fused_scores = det(x)
    # random BatchNorm statistics through a deep random network give large activations: relative tolerance
    torch.testing.assert_close(fused_boxes, boxes, atol=1e-5, rtol=1e-9)
    torch.testing.assert_close(fused_scores, scores, atol=1e-5, rtol=1e-9)


def test_config_round_trip_and_errors() -> None:
    cfg = DetectorConfig(num_classes=2, head="anchor", anchors=default_anchors(64), **TINY_DETECTOR)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 32"):
        DetectorConfig(num_classes=2, image_size=100)
    with pytest.raises(ValueError, match="size must be one of"):
        DetectorConfig(num_classes=2, size="xl")
    with pytest.raises(ValueError, match="unknown detector config field"):
        DetectorConfig.from_dict({"num_classes": 2, "depth": 3})


def test_anchor_decoding_reaches_the_anchor_at_zero() -> None:
    """With raw outputs 0 the anchor-based head predicts each anchor centred on its cell."""
    anchors = [[(10.0, 20.0)], [(30.0, 30.0)], [(50.0, 40.0)]]
    det = create_detector(DetectorConfig(num_classes=1, head="anchor", anchors=anchors, **TINY_DETECTOR))
    for branch in det.head.box:
        nn.init.zeros_(branch.pred.weight)
        nn.init.zeros_(branch.pred.bias)
    boxes, _ = det(torch.zeros(1, 3, 64, 64))
    first = boxes[0, 0]  # stride 8, cell (0, 0), centre (4, 4), anchor 10 x 20
    torch.testing.assert_close(first, torch.tensor([-1.0, -6.0, 9.0, 14.0]))
    last = boxes[0, -1]  # stride 32, cell (1, 1), centre (48, 48), anchor 50 x 40
    torch.testing.assert_close(last, torch.tensor([23.0, 28.0, 73.0, 68.0]))


def test_best_possible_recall_by_hand_and_kmeans_refit() -> None:
    anchors = [[(10.0, 10.0)]]
    wh = np.array([[10.0, 10.0], [39.0, 10.0], [41.0, 10.0], [2.0, 2.0]])
    # ratios: 1, 3.9 (ok), 4.1 (no), 5 (no)
    assert best_possible_recall(wh, anchors) == 0.5
    rng = np.random.default_rng(0)
    # long thin boxes that YOLOv3's anchors do not reach at 64 px
    thin = np.stack([rng.uniform(40, 60, 300), rng.uniform(1.0, 1.5, 300)], 1)
    assert best_possible_recall(thin, default_anchors(64)) < 0.98
    chosen, bpr = choose_anchors(thin, 64)
    assert bpr >= 0.98 and chosen != default_anchors(64)
    assert len(chosen) == 3 and all(len(level) == 3 for level in chosen)
    areas = [w * h for level in chosen for w, h in level]
    assert areas == sorted(areas)
    with pytest.warns(DataWarning, match="too few distinct boxes"):
        choose_anchors(np.array([[60.0, 1.0]] * 5), 64)
    with pytest.raises(ValueError, match="distinct box sizes"):
        fit_anchors(np.array([[5.0, 5.0]] * 3))


def test_postprocess_equals_batched_nms_per_class() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 50, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(2, 50, 2, generator=g) * 20 + 1], -1)
    scores = torch.rand(2, 50, 3, generator=g)
    out = postprocess(boxes, scores, score_threshold=0.5, iou_threshold=0.5, max_detections=20)
    for b in range(2):
        idx, cls = torch.nonzero(scores[b] > 0.5, as_tuple=True)
        keep = batched_nms(boxes[b, idx], scores[b, idx, cls], cls, 0.5)[:20]
        torch.testing.assert_close(out[b]["boxes"], boxes[b, idx[keep]])
        torch.testing.assert_close(out[b]["scores"], scores[b, idx[keep], cls[keep]])
        assert out[b]["labels"].tolist() == cls[keep].tolist()
        assert len(out[b]["scores"]) <= 20
    with pytest.raises(ValueError, match="postprocess expects boxes"):
        postprocess(boxes[0], scores[0])


def test_boxes_are_decoded_in_float32_under_autocast() -> None:
    """bfloat16 has 8 bits of mantissa: a box edge near 400 px would be off by up to 1 px."""
    det = create_detector(DetectorConfig(num_classes=2, **TINY_DETECTOR))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        boxes, _ = det(torch.randn(1, 3, 64, 64))
        det.train()
        out = det(torch.randn(2, 3, 64, 64))
    assert boxes.dtype == torch.float32 and out["boxes"].dtype == torch.float32
