"""The precision comparison's accuracy metrics: one average precision for the whole package."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from frugalvision import metrics
from frugalvision.deploy import compare_precisions, evaluate, export_onnx, mean_average_precision
from helpers import TIMM_DATA_CONFIG as DATA_CONFIG


def _sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    return float(
        np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])
    )


def test_tied_scores_count_as_one_step_as_in_sklearn() -> None:
    # sklearn: 1 positive in the tied top three (precision 1/3), then the second one at the cut of 0.2
    # (precision 2/4): (1/3 + 1/2) / 2 = 5/12 = 0.4167. Breaking the tie by row order gave 0.5.
    scores = np.array([[0.5], [0.5], [0.5], [0.2]])
    targets = np.array([[0], [1], [0], [1]])
    assert average_precision_score(targets[:, 0], scores[:, 0]) == pytest.approx(5 / 12, abs=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(5 / 12, abs=1e-12)


def test_map_with_many_ties_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((60, 5)) < 0.3
    targets[0] = True  # every class has a positive
    scores = np.round(rng.random((60, 5)) + 0.3 * targets, 1)  # one decimal: many ties in every column
    assert mean_average_precision(scores, targets) == pytest.approx(_sklearn_map(scores, targets), abs=1e-12)


def test_one_average_precision_in_the_package() -> None:
    """deploy scores multi-label precisions with the metrics package's mAP, not a copy of its own."""
    assert evaluate.mean_average_precision is metrics.mean_average_precision
    assert mean_average_precision is metrics.mean_average_precision


def test_compare_precisions_scores_ties_as_sklearn(tmp_path: Path, image_folder: Path) -> None:
    """A multi-label bundle whose classifier gives every image the same scores: each class's positives are
    exactly tied with its negatives, so AP = positives / images = 6 / 12 (sklearn); a tie broken by row order
    (images sorted by class folder) gave AP 1 to the first class."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.copy_(torch.tensor([0.3, -0.2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(
            model.eval(),
            tmp_path / "tags",
            data_config=DATA_CONFIG,
            task="multilabel",
            classes=["astronaut", "coffee"],
            exporter="torchscript",
        )
    (row,) = compare_precisions(tmp_path / "tags", image_folder, speed_seconds=0)
    targets = np.repeat(np.eye(2, dtype=bool), 6, axis=0)
    expected = _sklearn_map(np.full((12, 2), 0.5), targets)
    assert expected == pytest.approx(0.5) and row["mAP"] == pytest.approx(expected, abs=1e-12)
