"""Backbone selection: which pretrained backbone fits my labelled images, before any training (issue 15).

:func:`select_backbones` embeds the images once per candidate (cached, resumable), scores the frozen features
(kNN Recall@1, MAP@R, cross-validated linear probe, LogME) and measures the cost (parameters, ONNX Runtime
images/s); :func:`save_selection_plot` draws quality against speed with the Pareto front::

    from frugalvision.data import open_dataset
    from frugalvision.selection import parse_candidates, select_backbones

    cands = parse_candidates("tf_efficientnet_lite0.in1k_offline,tf_efficientnet_lite2.in1k_offline")
    result = select_backbones(open_dataset("photos/"), cands, "select-out/cache")
    print(result.table())
"""

from frugalvision.selection.candidates import Candidate, check_candidate, parse_candidates
from frugalvision.selection.cost import SPEED_BATCHES, export_for_speed, measure_speed, parameter_count
from frugalvision.selection.plot import save_selection_plot
from frugalvision.selection.run import (
    ModelReport,
    SelectionResult,
    labelled_subset,
    pareto_front,
    select_backbones,
)
from frugalvision.selection.scores import SCORES, check_labels, feature_scores, linear_probe_accuracy

__all__ = [
    "SCORES",
    "SPEED_BATCHES",
    "Candidate",
    "ModelReport",
    "SelectionResult",
    "check_candidate",
    "check_labels",
    "export_for_speed",
    "feature_scores",
    "labelled_subset",
    "linear_probe_accuracy",
    "measure_speed",
    "parameter_count",
    "pareto_front",
    "parse_candidates",
    "save_selection_plot",
    "select_backbones",
]
