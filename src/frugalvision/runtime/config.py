"""The deploy bundle: a folder of ONNX models plus ``deploy.json``, everything the runtime needs without torch.

Layout (written by :func:`frugalvision.deploy.export_onnx`)::

    deploy.json        format, task, classes, thresholds, output size and normalisation, preprocessing
                       (timm data_config), the model files per precision, parity and calibration records
    model.onnx         float32 model, dynamic batch axis: images (B, 3, H, W) -> output (B, D or C)
    model.int8.onnx    optional: int8 QDQ model from static quantisation

The essential fields (task, classes, thresholds, output, data_config) are also stored in each ONNX file's
``metadata_props`` under the key ``"frugalvision"``, so a lone ``.onnx`` file can be served too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frugalvision._fields import (
    check_data_config,
    check_file_inside,
    check_int_field,
    check_mapping_field,
    check_number_field,
    check_relative_file,
    check_str_list_field,
    field_error,
)
from frugalvision._fs import read_json, write_text_atomic
from frugalvision.errors import StoreError
from frugalvision.runtime.detection import check_detection_record, square_side

__all__ = [
    "DEPLOY_FILE",
    "DEPLOY_FORMAT",
    "DEPLOY_VERSION",
    "METADATA_KEY",
    "NORMALIZATIONS",
    "TASKS",
    "DeployConfig",
    "is_deploy_bundle",
    "read_deploy_config",
]

DEPLOY_FORMAT = "frugalvision-deploy"
DEPLOY_VERSION = 1
DEPLOY_FILE = "deploy.json"
#: Key of the JSON record in an ONNX model's ``metadata_props``.
METADATA_KEY = "frugalvision"
#: What a deployed model computes.
TASKS: tuple[str, ...] = ("embedding", "classification", "multilabel", "detection")
#: Normalisation of an embedding output.
NORMALIZATIONS: tuple[str, ...] = ("l2", "poincare", "none")
_KNOWN_FIELDS = ("format", "format_version", "task", "classes", "thresholds", "output", "input", "data_config",
                 "models", "source", "metrics", "detection")  # fmt: skip


@dataclass(frozen=True)
class DeployConfig:
    """What a deployed model is and how to feed it.

    Attributes:
        task: ``"embedding"`` (output ``(B, D)`` vectors), ``"classification"`` (``(B, C)`` logits, softmax; a
            trained classifier's export outputs its calibrated logits ``z / T``, see ``extra["calibration"]``),
            ``"multilabel"`` (``(B, C)`` logits, independent sigmoids with per-class ``thresholds``) or
            ``"detection"`` (boxes after the NMS inside the graph, see :mod:`frugalvision.runtime.detection`;
            ``output_size`` is the number of classes).
        data_config: timm preprocessing (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
            ``crop_mode``).
        output_size: ``D`` or ``C``.
        normalization: of embeddings: ``"l2"`` (unit rows), ``"poincare"`` or ``"none"``.
        classes: label names (the outputs of a classifier; the training classes of an embedding model).
        thresholds: multilabel decision thresholds, one per class (``None``: 0.5).
        models: precision (``"fp32"``, ``"int8"``, ``"bf16"``) -> record with at least ``"file"`` (relative to the
            folder) and optionally ``"session_config"`` (ONNX Runtime session options), parity/calibration reports.
        input_name, output_name: ONNX graph input and output names.
        source: what was exported (bundle path and id, or backbone spec).
        metrics: the bundle's validation metrics, copied for reference.
        extra: any other fields of ``deploy.json``, kept on rewrite.
        folder: the deploy bundle folder (``None`` for a config read from a lone ONNX file).
        detection: detectors only: ``{"letterbox": {"fill", "interpolation"}, "nms": {"score_threshold",
            "iou_threshold", "max_detections", "multi_label"}, "outputs": [...]}`` (the NMS settings baked into
            the graph, and the letterbox preprocessing of training).
    """

    task: str
    data_config: dict[str, Any]
    output_size: int
    normalization: str = "none"
    classes: tuple[str, ...] = ()
    thresholds: tuple[float, ...] | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_name: str = "images"
    output_name: str = "output"
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    detection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        where = f" in {self.folder / DEPLOY_FILE}" if self.folder else ""
        origin = str(self.folder / DEPLOY_FILE) if self.folder else "deploy config"
        check_data_config(self.data_config, origin)
        if self.task not in TASKS:
            raise StoreError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}{where}")
        if self.normalization not in NORMALIZATIONS:
            raise StoreError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}{where}"
            )
        if (
            isinstance(self.output_size, bool)
            or not isinstance(self.output_size, int)
            or self.output_size < 1
        ):
            raise StoreError(f"output_size must be a positive int, got {self.output_size!r}{where}")
        if self.task != "embedding" and len(self.classes) != self.output_size:
            raise StoreError(
                f"a {self.task} model needs one class name per output: {self.output_size} outputs but "
                f"{len(self.classes)} classes{where}"
            )
        if self.thresholds is not None:
            if self.task != "multilabel":
                raise StoreError(
                    f"thresholds apply to multilabel models only, this one is {self.task!r}{where}"
                )
            if len(self.thresholds) != len(self.classes):
                raise StoreError(
                    f"thresholds must have one value per class ({len(self.classes)}), got {len(self.thresholds)}{where}"
                )
        if (self.task == "detection") != (self.detection is not None):
            raise StoreError(
                f"field 'detection' is required for a detection model and only for one (task {self.task!r}){where}"
            )
        if self.detection is not None:
            check_detection_record(self.detection, origin, self.output_size)
            square_side(self.data_config, origin)
        for precision, record in self.models.items():
            if not isinstance(record, Mapping) or not isinstance(record.get("file"), str):
                raise StoreError(f"models[{precision!r}] must be an object with a 'file' name{where}")
            check_relative_file(record["file"], origin, f"models.{precision}.file")

    # -- (de)serialisation ----------------------------------------------------------------------------------
    @property
    def chosen_precision(self) -> str:
        """The model ``precision="auto"`` runs: ``engine.precision`` when ``deploy.json`` records a measured choice
        (:func:`frugalvision.deploy.choose_model`) naming one of ``models``, else ``"fp32"``."""
        engine = self.extra.get("engine")
        chosen = engine.get("precision") if isinstance(engine, Mapping) else None
        return chosen if isinstance(chosen, str) and chosen in self.models else "fp32"

    def essentials(self) -> dict[str, Any]:
        """The fields stored in each ONNX file's metadata (enough to run a lone ``.onnx`` file)."""
        out = {
            "format": DEPLOY_FORMAT,
            "format_version": DEPLOY_VERSION,
            "task": self.task,
            "classes": list(self.classes),
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "output": {
                "name": self.output_name,
                "size": self.output_size,
                "normalization": self.normalization,
            },
            "input": {"name": self.input_name, "shape": [None, *self.data_config["input_size"]]},
            "data_config": _jsonable_data_config(self.data_config),
        }
        if self.detection is not None:
            out["detection"] = dict(self.detection)
        return out

    def to_dict(self) -> dict[str, Any]:
        """``deploy.json``'s content."""
        return {
            **self.extra,
            **self.essentials(),
            "models": {k: dict(v) for k, v in self.models.items()},
            "source": dict(self.source),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], folder: Path | None = None, *, origin: str = DEPLOY_FILE
    ) -> DeployConfig:
        """Parse ``deploy.json`` (or ONNX metadata) content; raises :class:`StoreError` naming the bad field."""
        if not isinstance(d, Mapping):
            raise StoreError(f"{origin} must hold a JSON object, got {type(d).__name__}")
        if d.get("format") != DEPLOY_FORMAT:
            raise StoreError(f"{origin} is not a frugalvision deploy record (format is {d.get('format')!r})")
        if d.get("format_version") != DEPLOY_VERSION:
            raise StoreError(
                f"{origin} has deploy format version {d.get('format_version')!r}; this version reads {DEPLOY_VERSION}"
            )
        for key in ("task", "output", "input", "data_config"):
            if key not in d:
                raise StoreError(f"{origin} is incomplete: it has no {key!r} field")
        output = check_mapping_field(d["output"], origin, "output")
        inputs = check_mapping_field(d["input"], origin, "input")
        check_int_field(output.get("size"), origin, "output.size", low=1)
        for key in ("name", "normalization"):
            if key in output and not isinstance(output[key], str):
                raise field_error(origin, f"output.{key}", "a string", output[key])
        if "name" in inputs and not isinstance(inputs["name"], str):
            raise field_error(origin, "input.name", "a string", inputs["name"])
        check_data_config(d["data_config"], origin)
        classes = check_str_list_field(d.get("classes") or [], origin, "classes")
        thresholds = d.get("thresholds")
        if thresholds is not None:
            if not isinstance(thresholds, list):
                raise field_error(
                    origin, "thresholds", "null or a list of numbers (one per class)", thresholds
                )
            for i, t in enumerate(thresholds):
                check_number_field(t, origin, f"thresholds[{i}]", low=0, high=1)
        models = check_mapping_field(d.get("models"), origin, "models", optional=True)
        for precision, record in models.items():
            record = check_mapping_field(record, origin, f"models.{precision}")
            check_relative_file(record.get("file"), origin, f"models.{precision}.file")
        for key in ("source", "metrics"):
            check_mapping_field(d.get(key), origin, key, optional=True)
        detection = d.get("detection")
        if detection is not None:
            detection = dict(check_mapping_field(detection, origin, "detection"))
        try:
            known = set(_KNOWN_FIELDS)
            return cls(
                task=d["task"],
                data_config=dict(d["data_config"]),
                output_size=output["size"],
                normalization=output.get("normalization", "none"),
                classes=tuple(classes),
                thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
                models={str(k): dict(v) for k, v in models.items()},
                input_name=inputs.get("name", "images"),
                output_name=output.get("name", "output"),
                source=dict(d.get("source") or {}),
                metrics=dict(d.get("metrics") or {}),
                extra={k: v for k, v in d.items() if k not in known},
                folder=folder,
                detection=detection,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise StoreError(f"{origin} is incomplete or malformed: {type(e).__name__}: {e}") from e

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``deploy.json`` into ``folder`` (through a temporary file renamed into place)."""
        return write_text_atomic(
            Path(folder) / DEPLOY_FILE, json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        )

    def model_path(self, precision: str) -> Path:
        """Absolute path of the model file of ``precision``; raises :class:`StoreError` if there is none."""
        if precision not in self.models:
            have = ", ".join(self.models) or "none"
            raise StoreError(f"this deploy bundle has no {precision!r} model (it has: {have})")
        if self.folder is None:
            raise StoreError("this config was read from a lone ONNX file; it has no folder of model files")
        return check_file_inside(
            self.folder,
            self.models[precision]["file"],
            str(self.folder / DEPLOY_FILE),
            f"models.{precision}.file",
        )


def _jsonable_data_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in data_config.items()}


def is_deploy_bundle(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder with a ``deploy.json`` of this format."""
    file = Path(path) / DEPLOY_FILE
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("format") == DEPLOY_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_deploy_config(path: str | os.PathLike[str]) -> DeployConfig:
    """Read a deploy bundle folder's ``deploy.json``, or the metadata of a lone ``.onnx`` file.

    Raises:
        StoreError: missing folder or file, invalid JSON, another format version, or a malformed field; a model
            bundle that was not exported yet gets the command that exports it.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".onnx":
        return _config_from_onnx(path)
    if not path.is_dir():
        raise StoreError(f"no deploy bundle at {path}: expected a folder with {DEPLOY_FILE} or an .onnx file")
    file = path / DEPLOY_FILE
    if not file.is_file():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            raise StoreError(
                f"{path} is a model bundle, not an exported deploy bundle; export it first with "
                f"`frugalvision export {path} --out {path}-onnx` (needs torch), then use {path}-onnx"
            )
        raise StoreError(f"{path} is not a deploy bundle: {DEPLOY_FILE} is missing")
    data = read_json(file)
    return DeployConfig.from_dict(data, folder=path.resolve(), origin=str(file))


def _config_from_onnx(path: Path) -> DeployConfig:
    """The config stored in an ONNX file's metadata, with the file itself as the ``fp32`` model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata is read
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise StoreError(f"{path} cannot be read by ONNX Runtime: {e}") from e
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise StoreError(
            f"{path} holds no frugalvision metadata (key {METADATA_KEY!r}); export it with `frugalvision export`"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON: {e}") from e
    data = {**data, "models": {_precision_of(session): {"file": path.name}}}
    return DeployConfig.from_dict(data, folder=path.parent.resolve(), origin=f"{path} metadata")


def _precision_of(session: Any) -> str:
    meta = session.get_modelmeta().custom_metadata_map
    return str(meta.get(f"{METADATA_KEY}.precision", "fp32"))
