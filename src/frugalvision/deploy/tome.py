"""Token Merging as an export path: a ViT that merges tokens block after block (:mod:`frugalvision.models.tome`),
exported to ONNX and quantised, as extra candidates of :func:`~frugalvision.deploy.choose_model`.

On a CPU whose int8 products are only ~2x its fp32 ones (AVX2) and where torch eager already runs a ViT near the
fp32 peak at batch 32, lower precision alone cannot make the model much faster; doing less work adds to it. ToMe
with ``r`` tokens merged per block cuts ViT-S/16's patch tokens from 196 to ``196 - 12 r`` by the last block
(``r = 8``: 100, ``r = 13``: 40), so the matrix products shrink with the token count (ViT-S/16, r = 8: 6.8 GFLOP
per image against 9.2; measured in ONNX Runtime at batch 32 on a 2-core AVX2 machine, ``benchmarks/deploy.py``:
1.47x the fp32 model's speed, 1.16x the dynamic int8 model's). It changes the outputs (it is an approximation, not a
re-implementation), so the ToMe models are chosen only within the accuracy budget: with ``--validate`` when
Recall@1 (accuracy, mAP) stays within 1 point of fp32's, else when the mean cosine with fp32's outputs is >= 0.99,
which merging may fail -- then fp32 or int8 is kept.

:func:`add_tome` adds to a deploy bundle:

- ``model.tome.onnx`` (precision ``"tome"``): the ToMe model in fp32, checked against the same ToMe model in torch
  (per-row cosine >= 0.9999); the merge uses only ops ONNX Runtime has (``TopK`` for the sort, ``GatherElements``,
  ``ScatterElements`` with ``add``, then a division for the size-weighted mean);
- ``model.tome-int8-dynamic.onnx`` (``"tome-int8-dynamic"``): its dynamic int8 quantisation
  (:func:`~frugalvision.deploy.add_dynamic_int8`).

Each record holds ``r``, the token count after every block, and the agreement of its outputs with fp32's.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from frugalvision.deploy.export import (
    _export_with_fallback,
    _first_line,
    _ort_outputs,
    _resolve_exporter,
    _torch_parity,
    output_agreement,
    set_onnx_metadata,
)
from frugalvision.deploy.transformer import _add_model, _check_batch, _folder_config, add_dynamic_int8
from frugalvision.errors import ExportError, UnsupportedModelError
from frugalvision.models.tome import apply_tome, find_vit, merged_token_counts, tome_support
from frugalvision.runtime.config import DeployConfig

__all__ = ["DEFAULT_MERGE_FRACTION", "TOME_FILE", "add_tome", "default_tome_r", "tome_support"]

TOME_FILE = "model.tome.onnx"
#: Share of the patch tokens merged away by the last block when ``r`` is not given:
#: ``r = round(fraction * patches / depth)`` (ViT-S/16 at 224 px: r = 8, 196 -> 100 patch tokens). On the one
#: meaningful ViT we have (the offline Lite0 distilled into a ViT-Tiny at 112 px, 25 held-out Caltech-101 classes)
#: Recall@1 stayed within 1 point of fp32 at every r tried (up to 94 % merged), so that check could not set the
#: limit; half is a moderate choice, and ``export --validate`` checks each model anyway.
DEFAULT_MERGE_FRACTION = 0.5


def default_tome_r(model: nn.Module, fraction: float = DEFAULT_MERGE_FRACTION) -> int:
    """``r`` that merges about ``fraction`` of the patch tokens by the last block: ``round(fraction * N / L)``
    (``N`` patches, ``L`` blocks), at least 1."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    vit = find_vit(model)
    if vit is None:
        raise UnsupportedModelError(f"{type(model).__name__} holds no timm VisionTransformer")
    patches = int(vit.patch_embed.num_patches)  # type: ignore[union-attr,arg-type]
    return max(1, round(fraction * patches / len(vit.blocks)))  # type: ignore[arg-type]


def add_tome(
    deploy_dir: str | os.PathLike[str],
    model: nn.Module,
    *,
    r: int | Sequence[int] | None = None,
    int8: bool = True,
    check_images: Sequence[Any] | None = None,
    min_cosine: float = 0.9999,
    seed: int = 0,
) -> DeployConfig:
    """Add the ToMe models of ``model`` (the torch module the bundle's ``model.onnx`` was exported from) to the
    deploy bundle ``deploy_dir``: ``"tome"`` and, with ``int8``, ``"tome-int8-dynamic"``.

    Args:
        model: the exported module (images ``(B, 3, H, W)`` -> ``(B, D)``) holding a timm ViT; not modified.
        r: tokens merged per block (an int, or one per block); ``None``: :func:`default_tome_r`.
        check_images: images for the checks (random inputs if none).
        min_cosine: smallest per-row cosine between ONNX Runtime's and torch's ToMe outputs accepted.

    Raises:
        UnsupportedModelError: the model is not a ViT ToMe supports (the message says why).
        ExportError: the export failed or ONNX Runtime disagrees with torch on the ToMe model.
    """
    folder, config = _folder_config(deploy_dir)
    why = tome_support(model)
    if why is not None:
        raise UnsupportedModelError(f"Token Merging cannot be applied: {why}")
    r = default_tome_r(model) if r is None else r
    tome = apply_tome(model, r).eval()
    vit = find_vit(tome)
    assert vit is not None
    rs: list[int] = list(vit.tome_r)  # type: ignore[arg-type]
    fp32 = config.models["fp32"]
    exporter = _resolve_exporter(str(fp32.get("exporter", "auto")))
    opset = int(fp32.get("opset", 18))
    _, h, w = (int(s) for s in config.data_config["input_size"])
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    batch = _check_batch(config, check_images, 16, seed + 1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".tome-", dir=folder) as tmp:
        out_tmp = Path(tmp) / TOME_FILE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export_with_fallback(
                    tome, example, out_tmp, exporter, opset, [config.output_name], what="ToMe model"
                )
            onnx.checker.check_model(str(out_tmp), full_check=True)
        except Exception as e:  # the exporters and the checker raise many types
            raise ExportError(f"ONNX export of the ToMe model failed ({exporter}): {_first_line(e)}") from e
        parity, got = _torch_parity(tome, out_tmp, batch, min_cosine, what=" on the ToMe model")
        agreement = output_agreement(_ort_outputs(config.model_path("fp32"), batch), got)
        set_onnx_metadata(out_tmp, config, precision="tome")
        os.replace(out_tmp, folder / TOME_FILE)
    prefix = int(vit.num_prefix_tokens)  # type: ignore[arg-type]
    tokens = prefix + int(vit.patch_embed.num_patches)  # type: ignore[union-attr,arg-type]
    record: dict[str, Any] = {
        "file": TOME_FILE,
        "r": rs,
        "tokens_after_block": merged_token_counts(tokens, prefix, rs),
        "tokens_at_input": tokens,
        "parity_with_torch": parity,
        "agreement_with_fp32": agreement,
        "exporter": exporter,
        "opset": opset,
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    config = _add_model(folder, config, "tome", record)
    if int8:
        config = add_dynamic_int8(
            folder, source="tome", precision="tome-int8-dynamic", check_images=check_images, seed=seed
        )
    return config
