"""Object detection in the YOLO family: the model (:class:`Detector`), its blocks, anchors and NMS.

See :mod:`frugalvision.models.detection.detector` for the architecture, :mod:`.heads` for the box decoding and
:mod:`frugalvision.losses.detection` for the loss and the label assigner that train it.
"""

from frugalvision.models.detection.anchors import (
    best_possible_recall,
    choose_anchors,
    default_anchors,
    fit_anchors,
)
from frugalvision.models.detection.blocks import ConvBNAct, CSPBlock, DWConv, RepConv, fold_batchnorm
from frugalvision.models.detection.detector import SIZES, Detector, DetectorConfig, create_detector
from frugalvision.models.detection.heads import DetectionHead, grid_points
from frugalvision.models.detection.neck import PANNeck
from frugalvision.models.detection.postprocess import postprocess

__all__ = [
    "SIZES",
    "CSPBlock",
    "ConvBNAct",
    "DWConv",
    "DetectionHead",
    "Detector",
    "DetectorConfig",
    "PANNeck",
    "RepConv",
    "best_possible_recall",
    "choose_anchors",
    "create_detector",
    "default_anchors",
    "fit_anchors",
    "fold_batchnorm",
    "grid_points",
    "postprocess",
]
