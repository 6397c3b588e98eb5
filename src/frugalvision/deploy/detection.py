"""Export a detector to ONNX with the non-maximum suppression inside the graph, so the runtime needs ONNX Runtime only.

Any module keeping the detection contract of issue 14 exports: in ``eval()`` mode ``forward(images (B, 3, S, S))``
returns ``(boxes (B, N, 4) xyxy in input pixels, scores (B, N, C) class probabilities)`` before NMS.

How: the module (the "body") is exported as usual (:mod:`frugalvision.deploy.export`'s exporters, dynamic batch
axis), then the post-processing is appended to its graph with ``onnx.helper`` -- robust whatever exporter produced
the body, and independent of torch's support for custom ops::

    S'      = scores                        (multi_label)   or  scores * onehot(argmax_c scores)   (one class per box)
    keep    = NonMaxSuppression(boxes, S'^T (B, C, N), max_detections, iou_threshold, score_threshold)   # (k, 3)
    dense   = ScatterND(zeros (B, C, N), keep, S'^T[keep])        # scores of the kept (class, box) pairs, else 0
    top, i  = TopK(dense.reshape(B, C * N), K = min(max_detections, C * N))
    outputs = boxes[b, i mod N], top, label = i div N (-1 where top = 0), num_detections = #(top > 0)

ONNX ``NonMaxSuppression`` runs per image and per class (class-aware NMS), keeps scores ``> score_threshold`` and
drops a box whose IoU with a kept one is ``> iou_threshold`` -- the same rule as ``torchvision.ops.batched_nms``
with ``idxs = class`` on the pairs over the threshold, followed by the ``max_detections`` best (a test checks it).

Outputs (``K = min(max_detections, C * N)`` rows per image, best first; rows past ``num_detections`` are padding
with box 0, score 0 and label -1)::

    boxes (B, K, 4) float32 xyxy in input pixels | scores (B, K) float32 | labels (B, K) int64 | num_detections (B,) int64

The thresholds are baked into the graph as initializers (``nms/score_threshold``, ``nms/iou_threshold``,
``nms/max_detections``) and recorded in ``deploy.json`` with the letterbox preprocessing.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from frugalvision._fs import replacing_dir
from frugalvision.deploy.export import (
    DEFAULT_OPSET,
    MODEL_FILE,
    _deploy_target,
    _export_with_fallback,
    _first_line,
    _fp32_fields,
    _ort_session,
    set_onnx_metadata,
)
from frugalvision.errors import ExportError
from frugalvision.runtime.config import DeployConfig
from frugalvision.runtime.detection import DEFAULT_FILL, DETECTION_OUTPUTS

__all__ = [
    "DetectionExportResult",
    "add_nms_to_graph",
    "detection_agreement",
    "export_detector",
    "export_detector_bundle",
    "float_nodes",
    "graph_detections",
    "int8_detection_agreement",
    "reference_nms",
]

_RAW = ("raw_boxes", "raw_scores")


@dataclass(frozen=True)
class DetectionExportResult:
    """What :func:`export_detector` wrote and measured.

    Attributes:
        folder, model_path, exporter, config: as :class:`~frugalvision.deploy.ExportResult`.
        parity: the body's ONNX Runtime outputs against PyTorch (``boxes_max_abs``, ``scores_max_abs``) and the
            whole graph's detections against :func:`reference_nms` on PyTorch's outputs (:func:`detection_agreement`).
    """

    folder: Path
    model_path: Path
    exporter: str
    parity: dict[str, Any]
    config: DeployConfig


def add_nms_to_graph(
    model: onnx.ModelProto,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    multi_label: bool = True,
    boxes: str = _RAW[0],
    scores: str = _RAW[1],
) -> onnx.ModelProto:
    """Append the class-aware NMS (module docstring) to ``model`` whose outputs ``boxes`` and ``scores`` are
    ``(B, N, 4)`` and ``(B, N, C)``; the graph's outputs become :data:`DETECTION_OUTPUTS`. Returns a new model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    names = [o.name for o in g.output]
    if boxes not in names or scores not in names:
        raise ExportError(f"the detector graph must output {boxes!r} and {scores!r}, it outputs {names}")
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([max_detections], dtype=np.int64), "nms/max_detections"),
            numpy_helper.from_array(np.array([iou_threshold], dtype=np.float32), "nms/iou_threshold"),
            numpy_helper.from_array(np.array([score_threshold], dtype=np.float32), "nms/score_threshold"),
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "nms/shape_b_flat"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "nms/one"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "nms/two"),
            numpy_helper.from_array(np.array([4], dtype=np.int64), "nms/four"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "nms/zero_f"),
            numpy_helper.from_array(np.array(-1, dtype=np.int64), "nms/minus_one"),
        ]
    )
    n = helper.make_node
    nodes = []
    score_src = scores
    if not multi_label:  # one class per box: zero every score but the box's best class
        nodes += [
            n("ArgMax", [scores], ["nms/best"], name="nms/argmax", axis=2, keepdims=0),
            n("Shape", [scores], ["nms/scores_shape"], name="nms/scores_shape", start=2, end=3),
            n(
                "OneHot",
                ["nms/best", "nms/scores_shape", "nms/onehot_values"],
                ["nms/onehot"],
                name="nms/onehot",
            ),
            n("Mul", [scores, "nms/onehot"], ["nms/scores_single"], name="nms/mask_best"),
        ]
        g.initializer.append(numpy_helper.from_array(np.array([0, 1], dtype=np.float32), "nms/onehot_values"))
        score_src = "nms/scores_single"
    nodes += [
        n("Transpose", [score_src], ["nms/scores_t"], name="nms/transpose", perm=[0, 2, 1]),  # (B, C, N)
        n(
            "NonMaxSuppression",
            [boxes, "nms/scores_t", "nms/max_detections", "nms/iou_threshold", "nms/score_threshold"],
            ["nms/selected"],
            name="nms/nms",
            center_point_box=0,
        ),  # (k, 3): batch, class, box
        n("GatherND", ["nms/scores_t", "nms/selected"], ["nms/selected_scores"], name="nms/gather_scores"),
        n("Shape", ["nms/scores_t"], ["nms/bcn"], name="nms/shape_bcn"),
        n("ConstantOfShape", ["nms/bcn"], ["nms/zeros"], name="nms/zeros"),
        n(
            "ScatterND",
            ["nms/zeros", "nms/selected", "nms/selected_scores"],
            ["nms/dense"],
            name="nms/scatter",
        ),
        n("Reshape", ["nms/dense", "nms/shape_b_flat"], ["nms/flat"], name="nms/flatten"),  # (B, C*N)
        # K = min(max_detections, C * N)
        n("Shape", ["nms/flat"], ["nms/flat_len"], name="nms/flat_len", start=1, end=2),
        n("Min", ["nms/flat_len", "nms/max_detections"], ["nms/k"], name="nms/k"),
        n(
            "TopK",
            ["nms/flat", "nms/k"],
            ["nms/top", "nms/top_index"],
            name="nms/topk",
            axis=1,
            largest=1,
            sorted=1,
        ),
        n("Shape", [boxes], ["nms/n"], name="nms/n", start=1, end=2),
        n("Div", ["nms/top_index", "nms/n"], ["nms/label_raw"], name="nms/label"),
        n("Mod", ["nms/top_index", "nms/n"], ["nms/box_index"], name="nms/box_index"),
        n("Greater", ["nms/top", "nms/zero_f"], ["nms/valid"], name="nms/valid"),
        # boxes[b, box_index] via GatherElements on an index expanded to (B, K, 4)
        n("Unsqueeze", ["nms/box_index", "nms/two"], ["nms/box_index3"], name="nms/unsqueeze_index"),
        n("Shape", ["nms/box_index"], ["nms/bk"], name="nms/shape_bk"),
        n("Concat", ["nms/bk", "nms/four"], ["nms/bk4"], name="nms/bk4", axis=0),
        n("Expand", ["nms/box_index3", "nms/bk4"], ["nms/box_index4"], name="nms/expand_index"),
        n("GatherElements", [boxes, "nms/box_index4"], ["nms/gathered"], name="nms/gather_boxes", axis=1),
        n("Unsqueeze", ["nms/valid", "nms/two"], ["nms/valid3"], name="nms/unsqueeze_valid"),
        n("Where", ["nms/valid3", "nms/gathered", "nms/zero_f"], ["boxes"], name="nms/boxes"),
        n("Where", ["nms/valid", "nms/top", "nms/zero_f"], ["scores"], name="nms/scores"),
        n("Where", ["nms/valid", "nms/label_raw", "nms/minus_one"], ["labels"], name="nms/labels"),
        n("Cast", ["nms/valid"], ["nms/valid_int"], name="nms/valid_int", to=TensorProto.INT64),
        n("ReduceSum", ["nms/valid_int", "nms/one"], ["num_detections"], name="nms/count", keepdims=0),
    ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", "detections", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "detections"]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", "detections"]),
            helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["batch"]),
        ]
    )
    # NonMaxSuppression is opset >= 10, ReduceSum with axes as an input >= 13, Shape(start, end) >= 15
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 15:
            raise ExportError(f"the detector graph has opset {opset.version}; NMS export needs opset >= 15")
    return out


def reference_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    multi_label: bool = True,
) -> list[dict[str, np.ndarray]]:
    """The graph's post-processing in torch, with ``torchvision.ops.batched_nms``: per image, the (box, class)
    pairs with ``score > score_threshold`` (only each box's best class unless ``multi_label``), class-aware NMS,
    then the ``max_detections`` best. Returns numpy ``{"boxes", "scores", "labels"}`` per image."""
    from torchvision.ops import batched_nms

    out = []
    for b, s in zip(boxes.float(), scores.float(), strict=True):
        if multi_label:
            box_i, cls = torch.nonzero(s > score_threshold, as_tuple=True)
            val = s[box_i, cls]
        else:
            val, cls = s.max(dim=1)
            box_i = torch.nonzero(val > score_threshold, as_tuple=True)[0]
            val, cls = val[box_i], cls[box_i]
        keep = batched_nms(b[box_i], val, cls, iou_threshold)[:max_detections]
        out.append(
            {
                "boxes": b[box_i][keep].numpy(),
                "scores": val[keep].numpy(),
                "labels": cls[keep].numpy().astype(np.int64),
            }
        )
    return out


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def detection_agreement(
    reference: Sequence[Mapping[str, np.ndarray]], other: Sequence[Mapping[str, np.ndarray]], iou: float = 0.5
) -> dict[str, float]:
    """How far two sets of detections agree, image by image: each reference detection is matched greedily (best
    score first) to an unmatched detection of ``other`` with the same label and the highest IoU (>= ``iou``).

    Returns ``reference``/``other`` counts, ``matched``, ``recall`` (matched / reference), ``precision``
    (matched / other), ``min_iou`` of the matches and ``max_score_diff`` between matched scores.
    """
    n_ref = n_other = matched = 0
    min_iou, max_diff = 1.0, 0.0
    for r, o in zip(reference, other, strict=True):
        n_ref, n_other = n_ref + len(r["scores"]), n_other + len(o["scores"])
        if not len(r["scores"]) or not len(o["scores"]):
            continue
        ious = _box_iou(r["boxes"], o["boxes"])
        ious[np.asarray(r["labels"])[:, None] != np.asarray(o["labels"])[None, :]] = -1.0
        used = np.zeros(ious.shape[1], dtype=bool)
        for i in np.argsort(-np.asarray(r["scores"]), kind="stable"):
            row = np.where(used, -1.0, ious[i])
            j = int(row.argmax())
            if row[j] >= iou:
                used[j] = True
                matched += 1
                min_iou = min(min_iou, float(row[j]))
                max_diff = max(max_diff, abs(float(r["scores"][i]) - float(o["scores"][j])))
    return {
        "reference": n_ref,
        "other": n_other,
        "matched": matched,
        "recall": matched / n_ref if n_ref else 1.0,
        "precision": matched / n_other if n_other else 1.0,
        "min_iou": min_iou,
        "max_score_diff": max_diff,
    }


def graph_detections(outputs: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The four graph outputs -> per image ``{"boxes", "scores", "labels"}`` without padding (input pixels)."""
    boxes, scores, labels, count = outputs
    return [
        {"boxes": boxes[i, : int(c)], "scores": scores[i, : int(c)], "labels": labels[i, : int(c)]}
        for i, c in enumerate(count)
    ]


class _Probe(nn.Module):
    """Returns the contract's tuple as a tuple (an exported graph needs exactly two outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.model(x)
        return boxes, scores


def export_detector(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    score_threshold: float = 0.25,
    iou_threshold: float = 0.65,
    max_detections: int = 300,
    multi_label: bool = True,
    interpolation: str = "bilinear",
    fill: int = DEFAULT_FILL,
    source: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> DetectionExportResult:
    """Export a detector (the contract's eval ``forward``) to the deploy bundle ``out_dir`` with NMS in the graph.

    Call ``model.fuse()`` first if it has re-parameterisable blocks (the exported graph is what ``forward`` does).

    Args:
        model: images ``(B, 3, S, S)`` -> ``(boxes (B, N, 4), scores (B, N, C))`` in eval mode.
        out_dir: deploy bundle folder (built aside and renamed into place; an existing deploy bundle is replaced).
        image_size: the input side ``S`` (a multiple of 32).
        mean, std: the backbone's normalisation of ``x / 255``.
        classes: ``C`` class names.
        score_threshold: keep (box, class) pairs with a score above it (predict / serve use 0.25; 0.001 for mAP).
        iou_threshold: suppress boxes overlapping a better one of their class by more than this IoU.
        max_detections: most detections per image.
        multi_label: a box may be kept for several classes (as for mAP evaluation); ``False``: its best class only.
        interpolation, fill: the letterbox's resize filter and border grey, recorded for the runtime (they must
            be those of training).
        source, metrics: recorded in ``deploy.json``.
        exporter, opset: see :func:`~frugalvision.deploy.export_onnx`.
        tolerance: largest difference allowed between ONNX Runtime's and PyTorch's raw outputs before NMS: scores
            absolute, box coordinates relative to ``max(S, |coordinate|)``.
        seed: seed of the random parity inputs.

    Raises:
        ExportError: the model breaks the contract, the export failed, or ONNX Runtime disagrees with PyTorch.
        StoreError: ``out_dir`` is a non-empty folder that is not a deploy bundle.
        ValueError: bad arguments.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size!r}")
    if not 0.0 <= score_threshold < 1.0 or not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(
            f"score_threshold must be in [0, 1) and iou_threshold in [0, 1], got {score_threshold} and {iou_threshold}"
        )
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections must be a positive int, got {max_detections!r}")
    classes = tuple(str(c) for c in classes)
    data_config = {
        "input_size": (3, image_size, image_size),
        "interpolation": interpolation,
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    nms_settings: dict[str, Any] = {
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "max_detections": int(max_detections),
        "multi_label": bool(multi_label),
    }
    detection: dict[str, Any] = {
        "letterbox": {"fill": int(fill), "interpolation": interpolation},
        "nms": nms_settings,
        "outputs": list(DETECTION_OUTPUTS),
        "box_format": "xyxy, input pixels; runtime maps to original pixels with (box - pad) / scale",
    }
    target = _deploy_target(out_dir, exporter, opset)
    was_training = model.training
    model.eval()
    try:
        probe_model = _Probe(model).eval()
        example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            try:
                probe = model(example)
            except Exception as e:
                raise ExportError(
                    f"the detector failed on a (2, 3, {image_size}, {image_size}) batch: {_first_line(e)}"
                ) from e
        if (
            not isinstance(probe, (tuple, list))
            or len(probe) != 2
            or not all(isinstance(t, torch.Tensor) for t in probe)
            or probe[0].ndim != 3
            or probe[0].shape[0] != 2
            or probe[0].shape[2] != 4
            or probe[1].ndim != 3
            or probe[1].shape[:2] != probe[0].shape[:2]
        ):
            got = (
                [tuple(t.shape) for t in probe] if isinstance(probe, (tuple, list)) else type(probe).__name__
            )
            raise ExportError(
                "a detector's eval forward must return (boxes (B, N, 4), scores (B, N, C)) "
                f"(the detection contract), got {got}"
            )
        num_classes = int(probe[1].shape[2])
        if len(classes) != num_classes:
            raise ValueError(
                f"the detector scores {num_classes} classes but {len(classes)} class names were given"
            )

        with replacing_dir(target) as tmp:
            body_path = tmp / "body.onnx"
            t0 = time.perf_counter()
            chosen = _export_with_fallback(
                probe_model, example, body_path, exporter, opset, _RAW, what="detector"
            )
            body = onnx.load(str(body_path))
            body_path.unlink()
            full = add_nms_to_graph(
                body, score_threshold=score_threshold, iou_threshold=iou_threshold,
                max_detections=max_detections, multi_label=multi_label,
            )  # fmt: skip
            model_path = tmp / MODEL_FILE
            onnx.save(full, str(model_path))
            export_seconds = time.perf_counter() - t0
            try:
                onnx.checker.check_model(str(model_path), full_check=True)
            except onnx.checker.ValidationError as e:
                raise ExportError(f"the exported detector fails onnx.checker: {_first_line(e)}") from e

            parity = _parity(probe_model, body, full, image_size, nms_settings, tolerance, seed)
            config = DeployConfig(
                task="detection",
                data_config=data_config,
                output_size=num_classes,
                classes=classes,
                output_name="detections",
                folder=target,
                detection=detection,
                **_fp32_fields(parity, chosen, opset, export_seconds, source, metrics),
            )
            set_onnx_metadata(model_path, config, precision="fp32")
            config.write(tmp)
        return DetectionExportResult(target, target / MODEL_FILE, chosen, parity, config)
    finally:
        model.train(was_training)


def _parity(
    model: nn.Module,
    body: onnx.ModelProto,
    full: onnx.ModelProto,
    size: int,
    nms: Mapping[str, Any],
    tolerance: float,
    seed: int,
) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on a batch of 3 (another size than the traced one): raw outputs of the body,
    then the detections of the whole graph against :func:`reference_nms` on PyTorch's raw outputs."""
    batch = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        t_boxes, t_scores = model(batch)
    ort_boxes, ort_scores = _ort_session(body.SerializeToString()).run(list(_RAW), {"images": batch.numpy()})
    ref_boxes = t_boxes.numpy().astype(np.float64)
    boxes_diff = float((np.abs(ort_boxes - ref_boxes) / np.maximum(np.abs(ref_boxes), size)).max())
    scores_diff = float(np.abs(ort_scores - t_scores.numpy()).max())
    if not (boxes_diff <= tolerance and scores_diff <= tolerance):
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree on the detector's raw outputs: boxes differ by {boxes_diff:.3g} (relative), "
            f"scores by {scores_diff:.3g} (tolerance {tolerance}); the exporter may not support an operation"
        )
    got = graph_detections(
        _ort_session(full.SerializeToString()).run(list(DETECTION_OUTPUTS), {"images": batch.numpy()})
    )
    expected = reference_nms(
        t_boxes, t_scores, score_threshold=nms["score_threshold"], iou_threshold=nms["iou_threshold"],
        max_detections=nms["max_detections"], multi_label=nms["multi_label"],
    )  # fmt: skip
    agreement: dict[str, Any] = detection_agreement(expected, got, iou=0.99)
    # tied scores (an untrained head: every score at its prior) make NMS's choice among equals arbitrary, and ONNX
    # Runtime and torchvision break ties differently: the detections are compared strictly only without ties
    candidates = t_scores.flatten(1)
    ties = any(
        int(torch.unique(row[row > nms["score_threshold"]]).numel())
        < int((row > nms["score_threshold"]).sum())
        for row in candidates
    )
    agreement["score_ties"] = ties
    if ties and (agreement["recall"] < 0.99 or agreement["precision"] < 0.99):
        warnings.warn(
            f"the parity inputs give tied scores, so the NMS of ONNX Runtime and torchvision may keep different boxes "
            f"among equals ({agreement['matched']} of {agreement['reference']} detections matched); the raw outputs "
            "agree, and the graph's NMS itself is tested against batched_nms",
            stacklevel=3,
        )
    elif agreement["recall"] < 0.99 or agreement["precision"] < 0.99:
        raise ExportError(
            f"the NMS inside the ONNX graph disagrees with torchvision's batched_nms: {agreement['matched']} of "
            f"{agreement['reference']} reference detections matched (IoU >= 0.99), {agreement['other']} found"
        )
    return {
        "boxes_max_rel": boxes_diff,
        "scores_max_abs": scores_diff,
        **{f"nms_{k}": v for k, v in agreement.items()},
    }


def float_nodes(model_path: str | os.PathLike[str]) -> list[str]:
    """Names of the nodes kept in float when quantising: the post-processing :func:`add_nms_to_graph` appended,
    and the distribution-focal-loss integral of the head (``dfl_bins``): each ``MatMul`` with the constant vector
    ``(0, 1, ..., R)`` and the ``Softmax`` feeding it. In int8 the integral would round the bin values themselves
    (a scale of ``R / 127`` puts bin 1 at 0.945) and the probabilities it averages."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [node.name for node in graph.node if node.name.startswith("nms/")]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 1}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        ramp = constants.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if ramp is None or ramp.size < 2 or not np.array_equal(ramp, np.arange(ramp.size)):
            continue
        names.append(node.name)
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Softmax":
            names.append(source.name)
    return names


def int8_detection_agreement(
    fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], batch: np.ndarray
) -> dict[str, float]:
    """:func:`detection_agreement` (IoU >= 0.5) of the int8 model's detections with the fp32 model's on ``batch``."""
    runs = [
        graph_detections(_ort_session(Path(p)).run(list(DETECTION_OUTPUTS), {"images": batch}))
        for p in (fp32_path, int8_path)
    ]
    return detection_agreement(runs[0], runs[1], iou=0.5)


def export_detector_bundle(
    bundle_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], **kwargs: Any
) -> DetectionExportResult:
    """Export a detection model bundle (``frugalvision train --task detection``,
    :func:`~frugalvision.bundle.save_detection_bundle`): loaded with :func:`~frugalvision.bundle.load_detector`,
    fused (``Detector.fuse()``: RepConv and conv-BN folded, auxiliary head dropped), with the bundle's classes,
    input side, normalisation and resize filter, its metrics, and the bundle as the recorded source.

    ``kwargs`` go to :func:`export_detector` (thresholds, ``multi_label``, letterbox ``fill``, ``exporter`` ...).
    Add an int8 model afterwards with :func:`~frugalvision.deploy.quantize_int8` (calibrated on letterboxed images,
    the NMS kept in float).

    Raises:
        StoreError: not a detection model bundle (or a broken one).
    """
    from frugalvision.bundle import load_detector

    model = load_detector(bundle_dir)
    config: dict[str, Any] = dict(getattr(model, "bundle_config", None) or {})
    data_config = config["data_config"]
    model.fuse()
    source = {
        "kind": "bundle",
        "bundle": str(Path(bundle_dir).expanduser().resolve()),
        "id": config.get("id"),
    }
    kwargs.setdefault("interpolation", str(data_config.get("interpolation", "bilinear")))
    return export_detector(
        model, out_dir, image_size=int(model.image_size), mean=data_config["mean"], std=data_config["std"],
        classes=config["classes"], source=source, metrics=config.get("metrics") or {}, **kwargs,
    )  # fmt: skip
