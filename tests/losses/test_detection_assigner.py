"""The task-aligned assigner on hand-made cases, and the detector loss on simple ones."""

from __future__ import annotations

import pytest
import torch

from frugalvision.losses import DetectionLoss, TaskAlignedAssigner, create_loss, list_losses, loss_entry


def _grid(n: int, stride: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of an n x n grid at ``stride`` (row-major), and the strides."""
    ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * stride
    return points, torch.full((n * n,), stride)


def _boxes_around(points: torch.Tensor, half: float) -> torch.Tensor:
    return torch.cat([points - half, points + half], 1)


def test_topk_by_alignment_and_normalised_targets() -> None:
    points, strides = _grid(4)  # 16 points, 8 px apart, centres 4, 12, 20, 28
    # predictions: boxes of side 16 around each point; class-0 scores rising with the index
    pred = _boxes_around(points, 8.0)[None]
    scores = torch.zeros(1, 16, 2)
    scores[0, :, 0] = torch.linspace(0.1, 0.9, 16)
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])  # covers points 0, 1, 4, 5 (centres 4 and 12)
    assigner = TaskAlignedAssigner(topk=2, alpha=1.0, beta=6.0, radius=0.0)
    a = assigner(scores, pred, points, strides, torch.tensor([[0]]), gt, torch.tensor([[True]]))

    # hand computation: the four inside points; IoU of a 16x16 box at (4,4)/(12,4)/(4,12)/(12,12) with [0,16]^2
    from torchvision.ops import box_iou

    inside = [0, 1, 4, 5]
    iou = box_iou(gt[0], pred[0])[0]
    align = scores[0, :, 0] * iou**6
    top = sorted(inside, key=lambda i: -float(align[i]))[:2]
    assert sorted(torch.nonzero(a.foreground[0]).squeeze(1).tolist()) == sorted(top)
    expected = align[top] / align[top].max() * iou[top].max()
    torch.testing.assert_close(a.scores[0, top, 0], expected)
    assert float(a.scores[0, :, 1].abs().sum()) == 0.0
    torch.testing.assert_close(a.boxes[0, top], gt[0].expand(2, 4))
    assert a.labels[0, top].tolist() == [0, 0]


def test_point_claimed_twice_goes_to_the_larger_overlap() -> None:
    points, strides = _grid(2)  # centres (4,4), (12,4), (4,12), (12,12)
    pred = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 4])
    scores = torch.full((1, 4, 2), 0.5)
    scores[0, 0] = 0.9  # point 0 is the best aligned with both boxes
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 16.0, 16.0]]])  # both contain point 0
    labels = torch.tensor([[0, 1]])
    a = TaskAlignedAssigner(topk=1, radius=0.0)(
        scores, pred, points, strides, labels, gts, torch.ones(1, 2, dtype=torch.bool)
    )
    # point 0 is the top-1 of both boxes; its prediction overlaps box 0 exactly (IoU 1) and box 1 with IoU 100/256
    assert a.foreground[0].tolist() == [True, False, False, False]
    assert int(a.gt_index[0, 0]) == 0 and int(a.labels[0, 0]) == 0


def test_padding_negatives_and_centre_prior() -> None:
    points, strides = _grid(4)
    pred = _boxes_around(points, 4.0)[None].repeat(2, 1, 1)
    scores = torch.full((2, 16, 1), 0.5)
    # image 0: a 2-px box between cell centres (no centre inside) ; image 1: no boxes (padding only)
    gts = torch.tensor([[[13.0, 13.0, 15.0, 15.0]], [[0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True], [False]])
    labels = torch.zeros(2, 1, dtype=torch.long)
    without = TaskAlignedAssigner(topk=3, radius=0.0)(scores, pred, points, strides, labels, gts, mask)
    assert not without.foreground.any()
    a = TaskAlignedAssigner(topk=3, radius=1.0)(scores, pred, points, strides, labels, gts, mask)
    # within one stride (8 px) of the centre (14, 14): the points at 12 and 20 on each axis, the best 3 by IoU
    assert int(a.foreground[0].sum()) == 3 and int(a.foreground[1].sum()) == 0
    assert a.foreground[0, 5]  # the cell centred at (12, 12), closest to the box


def test_detection_loss_registered_and_negative_images() -> None:
    assert loss_entry("detection").task == "detection" and "yolo" in list_losses(task="detection")
    loss = create_loss("yolo", num_classes=2)
    assert isinstance(loss, DetectionLoss)
    points, strides = _grid(4)
    logits = torch.full((2, 16, 2), -2.0, requires_grad=True)
    boxes = _boxes_around(points, 6.0)[None].repeat(2, 1, 1).requires_grad_(True)
    outputs = {"cls": logits, "boxes": boxes, "points": points, "strides": strides}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    terms = loss(outputs, [empty, empty])
    # negatives only: VFL = sum alpha p^2 * -log(1 - p) over 64 entries, normalised by 1
    p = torch.sigmoid(torch.tensor(-2.0))
    torch.testing.assert_close(terms["cls"], 64 * 0.75 * p**2 * -torch.log(1 - p))
    assert float(terms["box"]) == 0.0
    terms["loss"].backward()
    assert boxes.grad is not None and logits.grad is not None
    with pytest.raises(ValueError, match="labels must be in"):
        loss(outputs, [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([5])}, empty])
