"""A tiny detector learns a few synthetic images (coloured rectangles at known places) to AP50 >= 0.9, with the
plain (softplus) box head and with distribution focal loss (``dfl_bins=16``).

The reference metric is torchmetrics' ``MeanAveragePrecision`` (pycocotools backend), which never calls our code.
Runs in about 35 s on one shared CPU core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frugalvision.losses import DetectionLoss
from frugalvision.models.detection import DetectorConfig, create_detector, postprocess

SIZE = 128
COLOURS = np.array([[220, 40, 40], [40, 40, 220]], dtype=np.float32)  # class 0 red, class 1 blue


def rectangles(n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` grey noisy images with 1-3 filled rectangles each, and their boxes (xyxy pixels) and classes."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image = np.full((SIZE, SIZE, 3), 128.0, np.float32) + rng.normal(0, 8, (SIZE, SIZE, 3))
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(16, 56, 2))
            x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
            label = int(rng.integers(0, 2))
            image[y : y + h, x : x + w] = COLOURS[label]
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(torch.from_numpy(((image - 128.0) / 64.0).transpose(2, 0, 1).copy()))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return torch.stack(images).float(), targets


@pytest.mark.parametrize("dfl_bins", [0, 16], ids=["softplus", "dfl"])
def test_tiny_detector_overfits_rectangles(one_thread: None, dfl_bins: int) -> None:
    from torchmetrics.detection import MeanAveragePrecision

    torch.manual_seed(0)
    images, targets = rectangles(4, seed=0)
    config = DetectorConfig(
        num_classes=2, backbone="test_efficientnet", pretrained=False, image_size=SIZE, dfl_bins=dfl_bins
    )
    detector = create_detector(config)
    loss = DetectionLoss(num_classes=2)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=5e-3, weight_decay=0.0)
    detector.train()
    first = None
    for _ in range(60):
        terms = loss(detector(images), targets)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        first = float(terms["loss"]) if first is None else first
    assert float(terms["loss"]) < 0.5 * first
    detector.eval()
    with torch.no_grad():
        predictions = postprocess(*detector(images))
    metric = MeanAveragePrecision(
        iou_type="bbox", backend="pycocotools", max_detection_thresholds=[1, 10, 300]
    )
    metric.update(predictions, targets)
    result = metric.compute()
    assert float(result["map_50"]) >= 0.9, result
