"""Unsupervised object discovery: MaskCut (CutLER) on ViT attention keys or CNN feature maps.

No labels are needed: each image's patch features form a graph, a normalized cut splits off the most
salient object, its patches are removed from the graph and the cut repeats.

- :func:`maskcut` finds up to ``N`` objects in one image (masks, boxes, scores);
  :func:`maskcut_patches`, :func:`affinity_graph`, :func:`second_smallest_eigenvector` and
  :func:`foreground_from_eigenvector` are its steps.
- :func:`create_discovery_backbone` and :func:`patch_features` give the features (last-block attention
  keys for ViTs, the stride-16 map for CNNs).
- :func:`to_coco` / :func:`save_coco_json` / :func:`load_discoveries` write and read COCO JSON with RLE
  masks; :func:`save_overlay` draws the masks and boxes.
- :func:`corloc`, :func:`average_precision` and :func:`evaluate_boxes` score boxes against ground truth;
  :func:`evaluate_discoveries` adds the centred half-area box baseline (:func:`centre_box_baseline`).

Example:
    >>> from frugalvision import discover
    >>> bb = discover.create_discovery_backbone("tf_efficientnet_lite0.in1k_offline")  # doctest: +SKIP
    >>> found = discover.maskcut("photo.jpg", bb, num_objects=3)  # doctest: +SKIP
    >>> found.boxes, found.scores  # doctest: +SKIP
"""

from frugalvision.discover.coco_output import (
    decode_rle,
    encode_rle,
    load_discoveries,
    save_coco_json,
    to_coco,
)
from frugalvision.discover.features import (
    create_discovery_backbone,
    feature_stride,
    is_vision_transformer,
    patch_features,
)
from frugalvision.discover.maskcut import (
    DEFAULT_IMAGE_SIZE,
    Discovery,
    ImageTooSmallError,
    maskcut,
    maskcut_patches,
    masks_to_boxes,
    upsample_masks,
)
from frugalvision.discover.metrics import (
    average_precision,
    box_iou,
    centre_box,
    centre_box_baseline,
    corloc,
    evaluate_boxes,
)
from frugalvision.discover.ncut import (
    affinity_graph,
    connected_component,
    foreground_from_eigenvector,
    second_smallest_eigenvector,
)
from frugalvision.discover.overlay import draw_discovery, save_overlay
from frugalvision.discover.pipeline import (
    DiscoverySet,
    discover_images,
    evaluate_discoveries,
    open_discovery_set,
)
from frugalvision.discover.voc import read_voc

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "Discovery",
    "DiscoverySet",
    "ImageTooSmallError",
    "affinity_graph",
    "average_precision",
    "box_iou",
    "centre_box",
    "centre_box_baseline",
    "connected_component",
    "corloc",
    "create_discovery_backbone",
    "decode_rle",
    "discover_images",
    "draw_discovery",
    "encode_rle",
    "evaluate_boxes",
    "evaluate_discoveries",
    "feature_stride",
    "foreground_from_eigenvector",
    "is_vision_transformer",
    "load_discoveries",
    "maskcut",
    "maskcut_patches",
    "masks_to_boxes",
    "open_discovery_set",
    "patch_features",
    "read_voc",
    "save_coco_json",
    "save_overlay",
    "second_smallest_eigenvector",
    "to_coco",
    "upsample_masks",
]
