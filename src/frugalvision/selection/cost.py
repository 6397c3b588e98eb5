"""The cost side of a candidate: parameters, and ONNX Runtime images per second on this machine.

The backbone is exported once with :func:`frugalvision.deploy.export_onnx` (pooled features, dynamic batch, checked
against PyTorch) into the candidate's cache folder; the speed is that of
:func:`frugalvision.deploy.evaluate.throughput`: the model alone on random inputs of its own input size (no image
decoding), with ``threads`` intra-op threads, one warm-up call, then repeated calls for about ``seconds``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["SPEED_BATCHES", "export_for_speed", "measure_speed", "parameter_count"]

#: Batch sizes whose images/s are measured.
SPEED_BATCHES: tuple[int, ...] = (1, 32)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (every tensor counted once, trainable or not)."""
    return int(sum(p.numel() for p in model.parameters()))


def export_for_speed(backbone: Any, out_dir: str | os.PathLike[str]) -> Path:
    """Export ``backbone`` (a :class:`~frugalvision.models.Backbone`) to the deploy bundle ``out_dir``; returns it."""
    from frugalvision.deploy import export_onnx

    result = export_onnx(
        backbone,
        out_dir,
        data_config=backbone.data_config,
        task="embedding",
        normalization="none",
        source={"kind": "backbone", "backbone": backbone.spec.to_dict()},
    )
    return result.folder


def measure_speed(
    deploy_dir: str | os.PathLike[str],
    *,
    threads: int = 2,
    batch_sizes: Sequence[int] = SPEED_BATCHES,
    seconds: float = 2.0,
) -> dict[str, float]:
    """Images per second of the exported model in ``deploy_dir`` at each batch size: ``{"1": 41.3, "32": 77.0}``."""
    from frugalvision.deploy.evaluate import throughput
    from frugalvision.runtime import Predictor

    out: dict[str, float] = {}
    for bs in batch_sizes:
        predictor = Predictor(deploy_dir, threads=threads, batch_size=bs)
        out[str(bs)] = float(throughput(predictor, bs, seconds=seconds))
    return out
