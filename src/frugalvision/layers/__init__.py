"""Reusable network layers: Poincaré-ball operations and head, message passing over a mini-batch."""

from frugalvision.layers.hyperbolic import (
    HyperbolicProjection,
    clip_features,
    expmap0,
    logmap0,
    mobius_add,
    poincare_distance,
    poincare_distance_matrix,
    project_to_ball,
    to_poincare,
)
from frugalvision.layers.message_passing import (
    IntraBatchMPN,
    MessagePassingLayer,
    MultiHeadGraphAttention,
    full_graph,
    knn_graph,
)

__all__ = [
    "HyperbolicProjection",
    "IntraBatchMPN",
    "MessagePassingLayer",
    "MultiHeadGraphAttention",
    "clip_features",
    "expmap0",
    "full_graph",
    "knn_graph",
    "logmap0",
    "mobius_add",
    "poincare_distance",
    "poincare_distance_matrix",
    "project_to_ball",
    "to_poincare",
]
