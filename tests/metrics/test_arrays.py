"""The score-matrix check shared by the classification and multi-label metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frugalvision.metrics import mean_average_precision, topk_accuracy
from frugalvision.metrics._arrays import score_matrix


def test_score_matrix_returns_float64_of_any_input():
    s = score_matrix(torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), "logits")
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros(3), r"scores must be 2-D \(N, C\), got shape \(3,\)"),
        (np.zeros((0, 3)), r"scores must hold at least one image and one class, got shape \(0, 3\)"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]]), r"scores contains 2 NaN or infinite value\(s\)"),
    ],
)
def test_score_matrix_names_what_is_wrong(x, message):
    with pytest.raises(ValueError, match=message):
        score_matrix(x, "scores", rows="image")


def test_both_metric_families_use_it():
    bad = np.array([[0.0, np.nan]])
    with pytest.raises(ValueError, match=r"logits_or_probs contains 1 NaN"):
        topk_accuracy(bad, np.array([0]))
    with pytest.raises(ValueError, match=r"scores contains 1 NaN"):
        mean_average_precision(bad, np.array([[1, 0]]))
    with pytest.raises(ValueError, match="at least one row and one class"):
        topk_accuracy(np.zeros((1, 0)), np.array([0]))
