"""Model bundles: one folder holding a trained model, how to rebuild it, and how well it did.

Layout::

    config.json        format and versions, task, architecture (backbone name, pooling, head), preprocessing
                       (timm data_config), class names, loss, training settings, metrics and per-epoch history
    model.safetensors  the full EmbeddingModel state dict (backbone included: no download needed to load)
    report.md          human-readable summary: metrics table, settings, data
    curves.png         training loss and validation metrics per epoch
    (classification)   confusion_matrix.png and reliability.png (validation, before/after temperature scaling);
                       config.json's ``temperature`` T: calibrated probabilities are softmax(logits / T)

``save_bundle`` writes into a temporary sibling folder and renames it into place, so a reader never sees half a
bundle. ``frugalvision.load(path)`` rebuilds the model offline (backbone built with ``pretrained=False``, then the
weights from ``model.safetensors``)::

    import frugalvision
    model = frugalvision.load("runs/x/model")
    emb = model(model.transform()(pil_image).unsqueeze(0))
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from frugalvision._fields import (
    MAX_INPUT_SIDE,
    check_choice_field,
    check_data_config,
    check_int_field,
    check_mapping_field,
    check_number_field,
    check_str_list_field,
    field_error,
)
from frugalvision._fs import read_json, replacing_dir
from frugalvision._version import __version__
from frugalvision.errors import DataWarning, FrugalVisionError, StoreError
from frugalvision.models import Backbone, backbone_from_spec
from frugalvision.models.detection import Detector, DetectorConfig, create_detector
from frugalvision.models.embedding_model import EmbeddingModel, embedding_model_from_description
from frugalvision.models.heads import HEAD_KINDS, NORMALIZATIONS, POOLINGS
from frugalvision.plots import save_per_class_ap_plot, save_training_curves

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BundleRunner",
    "QueryEmbedder",
    "check_bundle_fields",
    "embedder_from_spec",
    "is_bundle",
    "load",
    "load_detector",
    "read_bundle_config",
    "save_bundle",
    "save_detection_bundle",
]

BUNDLE_FORMAT = "frugalvision-bundle"
BUNDLE_VERSION = 1
_WEIGHTS = "model.safetensors"
#: What a bundle's model does: embeddings, one independent sigmoid per class, or one softmax over the classes.
TASKS = ("embedding", "multilabel", "classification")
_MAX_WIDTH = 1 << 20  # embedding and hidden widths (a head's weight matrix grows with their product)


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder holding a bundle's ``config.json``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == BUNDLE_FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def read_bundle_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bundle's ``config.json``; raises :class:`~frugalvision.errors.StoreError` naming what is wrong."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise StoreError(f"no model bundle at {folder} (folder missing); train one with `frugalvision train`")
    for name in ("config.json", _WEIGHTS):
        if not (folder / name).is_file():
            raise StoreError(f"{folder} is not a complete model bundle: {name} is missing")
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise StoreError(f"{folder / 'config.json'} is not a frugalvision bundle config (format field)")
    if config.get("format_version") != BUNDLE_VERSION:
        raise StoreError(
            f"{folder} has bundle format version {config.get('format_version')!r}; this frugalvision "
            f"({__version__}) reads version {BUNDLE_VERSION}"
        )
    check_bundle_fields(config, str(folder / "config.json"))
    return config


def check_bundle_fields(config: Mapping[str, Any], where: str) -> None:
    """Check the type and range of every field of a bundle's ``config.json`` (``where`` names the file).

    Raises:
        StoreError: naming the file and the dotted field, e.g. ``field 'task' must be one of ...``.
    """
    for key in ("task", "model", "data_config"):
        if key not in config:
            raise StoreError(f"{where} has no {key!r} field")
    task = check_choice_field(config["task"], (*TASKS, "detection"), where, "task")
    if task == "detection":
        _check_detection_fields(config, where)
        return
    model = check_mapping_field(config["model"], where, "model")
    backbone = check_mapping_field(model.get("backbone"), where, "model.backbone")
    if not isinstance(backbone.get("name"), str) or not backbone["name"]:
        raise field_error(where, "model.backbone.name", "a timm model name", backbone.get("name"))
    kwargs = check_mapping_field(
        backbone.get("model_kwargs"), where, "model.backbone.model_kwargs", optional=True
    )
    if kwargs.get("img_size") is not None:  # a ViT's position embeddings grow with it
        sides = kwargs["img_size"] if isinstance(kwargs["img_size"], list) else [kwargs["img_size"]]
        for side in sides:
            check_int_field(side, where, "model.backbone.model_kwargs.img_size", low=1, high=MAX_INPUT_SIDE)
    if model.get("num_features") is not None:
        check_int_field(model["num_features"], where, "model.num_features", low=1)
    pooling = check_mapping_field(model.get("pooling"), where, "model.pooling")
    check_choice_field(pooling.get("kind"), POOLINGS, where, "model.pooling.kind")
    if "gem_p" in pooling:
        check_number_field(pooling["gem_p"], where, "model.pooling.gem_p", low=0, low_open=True)
    if not isinstance(pooling.get("gem_learnable", True), bool):
        raise field_error(where, "model.pooling.gem_learnable", "true or false", pooling["gem_learnable"])
    head = check_mapping_field(model.get("head"), where, "model.head")
    check_choice_field(head.get("kind"), HEAD_KINDS, where, "model.head.kind")
    size = check_int_field(
        head.get("embedding_size"), where, "model.head.embedding_size", low=1, high=_MAX_WIDTH
    )
    check_choice_field(head.get("normalization"), NORMALIZATIONS, where, "model.head.normalization")
    if head.get("hidden_size") is not None:
        check_int_field(head["hidden_size"], where, "model.head.hidden_size", low=1, high=_MAX_WIDTH)
    if "dropout" in head:
        check_number_field(head["dropout"], where, "model.head.dropout", low=0, high=1)
    if "c" in head:
        check_number_field(head["c"], where, "model.head.c", low=0, low_open=True)
    if head.get("clip_r") is not None:
        check_number_field(head["clip_r"], where, "model.head.clip_r", low=0, low_open=True)
    check_data_config(config["data_config"], where, "data_config")
    if "data_config" in model:
        check_data_config(model["data_config"], where, "model.data_config")
    classes = check_str_list_field(config.get("classes", []), where, "classes")
    if task != "embedding" and len(classes) != size:
        raise StoreError(
            f"{where}: a {task} model with {size} outputs (model.head.embedding_size) needs as many "
            f"'classes', got {len(classes)}"
        )
    if config.get("temperature") is not None:
        check_number_field(config["temperature"], where, "temperature", low=0, low_open=True)
    thresholds = config.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, list) or len(thresholds) != len(classes):
            raise field_error(
                where, "thresholds", f"null or a list of {len(classes)} numbers (one per class)", thresholds
            )
        for i, t in enumerate(thresholds):
            check_number_field(t, where, f"thresholds[{i}]", low=0, high=1)
    for key in ("loss", "training", "metrics", "data"):
        check_mapping_field(config.get(key), where, key, optional=True)
    for key in ("per_class", "history"):
        rows = config.get(key)
        if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows)):
            raise field_error(where, key, "null or a list of objects", rows)
    for key in ("id", "created", "frugalvision_version"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise field_error(where, key, "a string", config[key])


def save_bundle(
    model: EmbeddingModel,
    path: str | os.PathLike[str],
    *,
    task: str = "embedding",
    classes: Sequence[str] = (),
    thresholds: Sequence[float] | None = None,
    per_class: Sequence[Mapping[str, Any]] | None = None,
    loss: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    data: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    figures: Mapping[str, Callable[[Path], Any]] | None = None,
) -> Path:
    """Write ``model`` and its record to the bundle folder ``path`` (atomically; an old bundle is replaced).

    Args:
        model: the trained :class:`~frugalvision.models.EmbeddingModel`.
        path: bundle folder.
        task: what the model does: ``"embedding"`` (outputs embeddings), ``"multilabel"`` (outputs one logit per
            class; ``classes`` names them) or ``"classification"`` (one logit per class, one softmax over them).
        classes: training class names.
        thresholds: multi-label decision thresholds on the sigmoid probabilities, one per class.
        per_class: multi-label per-class validation report rows (``class``, ``ap``, ``precision``, ...), shown in
            ``report.md`` and drawn in ``per_class_ap.png``.
        loss: ``{"name": ..., "kwargs": {...}}``.
        training: resolved training settings (JSON-able).
        metrics: final metrics, e.g. ``{"val/map@r": 0.41, "best_epoch": 3, "baseline": {...}}``.
        history: one dict per epoch (``epoch``, ``train/loss``, ``val/<metric>``), drawn in ``curves.png``.
        data: data summary (images, classes, split).
        temperature: classification: the temperature ``T`` fitted on validation images; calibrated probabilities
            are ``softmax(logits / T)`` (``None``: not calibrated, ``T = 1``).
        figures: extra pictures: file name -> ``draw(path)`` called with the path inside the bundle folder (e.g.
            ``confusion_matrix.png``).

    Returns:
        The bundle folder. ``model.bundle_path``, ``model.bundle_id`` and ``model.config`` are set.
    """

    if not isinstance(model, EmbeddingModel):
        raise TypeError(f"save_bundle saves an EmbeddingModel, got {type(model).__name__}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    if task != "embedding" and len(classes) != model.embedding_size:
        raise ValueError(
            f"a {task} model with {model.embedding_size} outputs needs as many classes, got {len(classes)}"
        )
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if thresholds is not None and len(thresholds) != len(classes):
        raise ValueError(f"thresholds must have one value per class ({len(classes)}), got {len(thresholds)}")
    target = Path(path).expanduser().resolve()
    own = {
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        **({} if temperature is None else {"temperature": float(temperature)}),
        "per_class": None if per_class is None else _jsonable([dict(r) for r in per_class]),
    }
    config = _new_config(task, model.describe(), model.describe()["data_config"], classes, own, loss=loss,
                         training=training, metrics=metrics, history=history, data=data)  # fmt: skip
    with replacing_dir(target) as tmp:
        _write_bundle(model, tmp, config)
        for name, draw in (figures or {}).items():
            draw(tmp / name)
        if config["per_class"] and task == "multilabel":
            rows = config["per_class"]
            save_per_class_ap_plot(
                [
                    math.nan if r.get("ap") is None else r["ap"] for r in rows
                ],  # NaN (no positive) is null in JSON
                [r.get("positives", 0) for r in rows],
                [r.get("class", "?") for r in rows],
                tmp / "per_class_ap.png",
                title="validation AP per class (sorted by frequency)",
            )
    model.bundle_path, model.bundle_id, model.config = str(target), config["id"], config
    return target


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> EmbeddingModel:
    """Rebuild the :class:`~frugalvision.models.EmbeddingModel` saved in bundle ``path``, in eval mode.

    No network is needed: the backbone is built with ``pretrained=False`` and every weight comes from
    ``model.safetensors``. The model's ``config`` holds ``config.json``; ``transform()`` and ``data_config`` give
    its preprocessing.

    Raises:
        StoreError: missing files, another format version, a field of ``config.json`` of the wrong type or out of
            range, a corrupt or truncated ``model.safetensors``, or weights that do not fit the recorded
            architecture; the message names the file (and the field).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    folder = Path(path).expanduser().resolve()
    config = read_bundle_config(folder)
    if config["task"] == "detection":
        raise StoreError(
            f"{folder} holds a detector (task 'detection'): load it with frugalvision.bundle.load_detector(path)"
        )
    weights = folder / _WEIGHTS
    try:  # reads and checks the header only: a truncated or corrupt file fails here, before the model is built
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{weights} is corrupt or truncated ({e}); save or copy the bundle again") from e
    try:
        model = embedding_model_from_description({**config["model"], "data_config": config["data_config"]})
    except (StoreError, ValueError, TypeError) as e:
        raise StoreError(
            f"{folder / 'config.json'}: field 'model' describes no model this version builds: {e}"
        ) from e
    try:
        load_model(model, str(weights), strict=True, device="cpu")
    except (RuntimeError, OSError, SafetensorError) as e:
        raise StoreError(f"{weights} does not fit the architecture in config.json: {e}") from e
    model.config, model.bundle_path, model.bundle_id = config, str(folder), config.get("id")
    return model.to(device).eval()


class BundleRunner:
    """A trained bundle's model applied to images and data sets (torch): what :class:`frugalvision.tagging.Tagger`
    and :class:`frugalvision.classify.Classifier` share. Subclasses turn the raw outputs (logits) into what they
    report.

    Args:
        bundle: model bundle folder.
        device: where the model runs.
        task: the bundle's task this runner needs; another raises :class:`~frugalvision.errors.FrugalVisionError`
            ending with ``need`` (what is needed and how such a bundle is made).
    """

    def __init__(
        self, bundle: str | os.PathLike[str], device: str | torch.device, task: str, need: str
    ) -> None:
        self.model = load(bundle, device=device)
        config = self.model.config
        if config.get("task") != task:
            raise FrugalVisionError(
                f"{bundle} holds a model of task {config.get('task', 'embedding')!r}; {need}"
            )
        self.device = torch.device(device)
        self.classes: list[str] = list(config.get("classes") or [])
        self._transform = self.model.transform()

    def class_index(self, dataset: Any, what: str = "classes") -> Any:
        """``(K,)`` int64: the model's index of each of the data set's ``K`` classes, matched by name.

        Raises:
            FrugalVisionError: the data set names ``what`` (classes, labels) the model does not know.
        """
        import numpy as np

        extra = [c for c in dataset.classes if c not in self.classes]
        if extra:
            raise FrugalVisionError(
                f"{dataset.source} has {what} the model does not know: {', '.join(extra[:10])}; the model's classes "
                f"are {', '.join(self.classes[:20])}{' ...' if len(self.classes) > 20 else ''}"
            )
        return np.array([self.classes.index(c) for c in dataset.classes], dtype=np.int64)

    @torch.inference_mode()
    def raw_outputs(self, images: Sequence[Any], batch_size: int = 32) -> Any:
        """``(N, C)`` float32 logits for image files or PIL images (unreadable files raise
        :class:`~frugalvision.errors.CorruptImageError` naming the file)."""
        import numpy as np
        from PIL import Image

        from frugalvision.data import load_for_transform

        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack(
                [
                    self._transform(im.convert("RGB"))
                    if isinstance(im, Image.Image)
                    else load_for_transform(im, self._transform)
                    for im in chunk
                ]
            ).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    @torch.inference_mode()
    def dataset_outputs(
        self,
        dataset: Any,
        batch_size: int = 32,
        num_workers: int = 0,
        progress: bool = True,
        desc: str = "running",
    ) -> tuple[Any, Any]:
        """``(logits (N', C), kept (N,) bool)`` for an :class:`~frugalvision.data.ImageDataset`; unreadable images
        are skipped with one :class:`~frugalvision.errors.DataWarning` listing them (``kept`` is False for them)."""
        import numpy as np
        from tqdm.auto import tqdm

        from frugalvision.data import collate_images

        loader = torch.utils.data.DataLoader(
            dataset.with_transform(self._transform),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_images,
        )
        logits, kept = [], np.zeros(len(dataset), dtype=bool)
        skipped: list[str] = []
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            skipped += [msg for _, msg in batch["skipped"]]
            if batch["image"] is None:
                continue
            logits.append(self.model(batch["image"].to(self.device)).float().cpu().numpy())
            kept[batch["index"].numpy()] = True
        if skipped:
            listed = "\n  ".join(skipped[:10])
            warnings.warn(
                f"skipped {len(skipped)} unreadable image(s):\n  {listed}", DataWarning, stacklevel=3
            )
        return (np.concatenate(logits) if logits else np.zeros((0, len(self.classes)), np.float32)), kept


# ------------------------------------------------------------------------------------------------ detection
def _check_detection_fields(config: Mapping[str, Any], where: str) -> None:
    """The fields of a detection bundle: ``model.detector`` (a :class:`DetectorConfig`), ``data_config``,
    ``classes`` (one per detector class)."""
    model = check_mapping_field(config["model"], where, "model")
    spec = check_mapping_field(model.get("detector"), where, "model.detector")
    try:
        detector = DetectorConfig.from_dict(dict(spec))
    except (ValueError, TypeError) as e:
        raise StoreError(f"{where}: field 'model.detector' is not a detector configuration: {e}") from None
    if detector.image_size > MAX_INPUT_SIDE:
        raise field_error(
            where, "model.detector.image_size", f"at most {MAX_INPUT_SIDE}", detector.image_size
        )
    check_data_config(config["data_config"], where, "data_config")
    classes = check_str_list_field(config.get("classes", []), where, "classes")
    if len(classes) != detector.num_classes:
        raise StoreError(
            f"{where}: a detector of {detector.num_classes} classes (model.detector.num_classes) needs as many "
            f"'classes', got {len(classes)}"
        )
    for key in ("loss", "training", "metrics", "data"):
        check_mapping_field(config.get(key), where, key, optional=True)
    rows = config.get("history")
    if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows)):
        raise field_error(where, "history", "null or a list of objects", rows)


def save_detection_bundle(
    model: Detector,
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str],
    loss: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Write a :class:`~frugalvision.models.detection.Detector` and its record to the bundle folder ``path``
    (atomically), as :func:`save_bundle` does for embedding models; ``config.json`` has ``task: "detection"``,
    ``model.detector`` (its :class:`DetectorConfig`), ``data_config`` (input ``[3, S, S]`` letterboxed, the
    backbone's mean / std) and the class names. The weights are the unfused model's (``fuse()`` is for export)."""

    if not isinstance(model, Detector):
        raise TypeError(f"save_detection_bundle saves a Detector, got {type(model).__name__}")
    if len(classes) != model.num_classes:
        raise ValueError(
            f"a detector of {model.num_classes} classes needs as many class names, got {len(classes)}"
        )
    size = model.image_size
    data_config = {
        "input_size": [3, size, size],
        "interpolation": "bilinear",
        "mean": list(model.data_config["mean"]),
        "std": list(model.data_config["std"]),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    target = Path(path).expanduser().resolve()
    record = {"detector": model.config.to_dict(), "strides": list(model.strides), "letterbox": True}
    config = _new_config("detection", record, data_config, classes, {}, loss=loss, training=training,
                         metrics=metrics, history=history, data=data)  # fmt: skip
    check_bundle_fields(config, "the detection bundle being saved")
    with replacing_dir(target) as tmp:
        _write_bundle(model, tmp, config)
    return target


def _new_config(
    task: str,
    model: Mapping[str, Any],
    data_config: Mapping[str, Any],
    classes: Sequence[str],
    own: Mapping[str, Any],
    *,
    loss: Mapping[str, Any] | None,
    training: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]],
    data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``config.json`` of a new bundle: format, version, a new id, the time, ``task``, the ``model`` record,
    ``data_config``, ``classes``, the task's ``own`` fields, then the training record (JSON-able)."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "frugalvision_version": __version__,
        "id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task,
        "model": model,
        "data_config": data_config,
        "classes": list(classes),
        **own,
        "loss": _jsonable(dict(loss or {})),
        "training": _jsonable(dict(training or {})),
        "metrics": _jsonable(dict(metrics or {})),
        "history": _jsonable([dict(h) for h in history]),
        "data": _jsonable(dict(data or {})),
    }


def _write_bundle(model: torch.nn.Module, folder: Path, config: Mapping[str, Any]) -> None:
    """Write the eval-mode weights (safetensors), ``config.json``, ``report.md`` and ``curves.png`` into ``folder``."""
    from safetensors.torch import save_model

    was_training = model.training
    model.eval()
    save_model(model, str(folder / _WEIGHTS))
    model.train(was_training)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "report.md").write_text(render_report(config), encoding="utf-8")
    save_training_curves(config["history"], folder / "curves.png", baseline=config["metrics"].get("baseline"))


def load_detector(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Detector:
    """Rebuild the :class:`~frugalvision.models.detection.Detector` saved in detection bundle ``path``, in eval
    mode, offline (backbone built with ``pretrained=False``, every weight from ``model.safetensors``).

    Raises:
        StoreError: not a detection bundle, a bad field, corrupt weights or weights that do not fit.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    folder = Path(path).expanduser().resolve()
    config = read_bundle_config(folder)
    if config["task"] != "detection":
        raise StoreError(
            f"{folder} holds a {config['task']} model, not a detector: load it with frugalvision.load"
        )
    weights = folder / _WEIGHTS
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise StoreError(f"{weights} is corrupt or truncated ({e}); save or copy the bundle again") from e
    spec = DetectorConfig.from_dict({**config["model"]["detector"], "pretrained": False})
    try:
        model = create_detector(spec)
        load_model(model, str(weights), strict=True, device="cpu")
    except (RuntimeError, OSError, SafetensorError, ValueError) as e:
        raise StoreError(f"{weights} does not fit the detector in config.json: {e}") from e
    model.bundle_path, model.bundle_id, model.bundle_config = str(folder), config.get("id"), config  # type: ignore[assignment]
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------ report
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return "" if value is None else str(value)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def render_report(config: Mapping[str, Any]) -> str:
    """``report.md``: the bundle's metrics, settings and data as Markdown."""
    if config.get("task") == "detection":
        return _render_detection_report(config)
    model, metrics = config.get("model", {}), config.get("metrics", {})
    head, pool = model.get("head", {}), model.get("pooling", {})
    lines = [
        f"# frugalvision model bundle ({config.get('task', '?')})",
        "",
        f"Created {config.get('created', '?')} with frugalvision {config.get('frugalvision_version', '?')}. "
        "Load it with `frugalvision.load(path)`; embed a folder with `frugalvision embed DATA --model PATH`.",
        "",
        "## Model",
        "",
        f"- backbone: `{model.get('backbone', {}).get('name', '?')}` ({model.get('num_features', '?')} features)",
        f"- pooling: {pool.get('kind', '?')}" + (f" (p = {pool['gem_p']:.3f})" if "gem_p" in pool else ""),
        f"- head: {head.get('kind', '?')} -> {head.get('embedding_size', '?')}"
        + (" class logits" if config.get("task") in ("multilabel", "classification") else "")
        + f", normalisation {head.get('normalization', '?')}",
        f"- loss: `{config.get('loss', {}).get('name', '?')}` {json.dumps(config.get('loss', {}).get('kwargs', {}))}",
        f"- input: {config.get('data_config', {}).get('input_size', '?')}",
        "",
    ]
    final = {k: v for k, v in metrics.items() if k.startswith("val/")}
    if final:
        baseline = metrics.get("baseline") or {}
        lines += ["## Validation metrics", ""]
        chosen = {"multilabel": "mAP", "classification": "top-1 accuracy"}.get(
            str(config.get("task")), "MAP@R"
        )
        lines += [f"Best epoch: {metrics.get('best_epoch', '?')} (chosen by {chosen}).", ""]
        if config.get("task") == "classification":
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {key[4:]} | {_fmt(value)} |" for key, value in final.items()]
        elif config.get("task") == "multilabel":
            lines += [
                "`tuned/...`: at the per-class thresholds tuned on these validation images (optimistic); the "
                "others at threshold 0.5 or top-k.",
                "",
                "| metric | value |",
                "|---|---|",
            ]
            lines += [f"| {key[4:]} | {_fmt(value)} |" for key, value in final.items()]
        else:
            lines += ["| metric | trained | pretrained backbone (no head) |", "|---|---|---|"]
            for key, value in final.items():
                lines.append(f"| {key[4:]} | {_fmt(value)} | {_fmt(baseline.get(key))} |")
        lines.append("")
    calibration = metrics.get("calibration") or {}
    if config.get("task") == "classification" and calibration:
        lines += [
            "## Calibration (validation)",
            "",
            f"Temperature scaling (Guo et al., ICML 2017): T = {_fmt(config.get('temperature'))} fitted on the "
            "validation images (optimistic: measured on the same images); `predict`, the ONNX export, the runtime "
            "and `serve /predict` give softmax(logits / T).",
            "",
            "| | ECE | NLL | top-1 |",
            "|---|---|---|---|",
            f"| before (T = 1) | {_fmt(calibration.get('ece_before'))} | {_fmt(calibration.get('nll_before'))} "
            f"| {_fmt(calibration.get('top1'))} |",
            f"| after (T = {_fmt(config.get('temperature'))}) | {_fmt(calibration.get('ece_after'))} | "
            f"{_fmt(calibration.get('nll_after'))} | {_fmt(calibration.get('top1'))} |",
            "",
            "![reliability diagram](reliability.png)",
            "",
            "![confusion matrix](confusion_matrix.png)",
            "",
        ]
    per_class = config.get("per_class") or []
    if per_class:
        keys = [k for k in per_class[0] if k != "class"]
        picture = ["![per-class AP](per_class_ap.png)", ""] if config.get("task") == "multilabel" else []
        lines += ["## Per class (validation)", "", *picture]
        lines += ["| class | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in per_class:
            lines.append(f"| {row.get('class', '?')} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
        lines.append("")
    lines += _report_tail(config)
    return "\n".join(lines)


def _report_tail(config: Mapping[str, Any]) -> list[str]:
    """The sections every ``report.md`` ends with: the per-epoch table, the data and the settings."""
    lines: list[str] = []
    history = config.get("history") or []
    if history:
        keys = [k for k in history[-1] if k != "epoch"]
        lines += ["## Per epoch", "", "| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in history:
            lines.append(f"| {row.get('epoch')} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
        lines += ["", "![curves](curves.png)", ""]
    data = config.get("data") or {}
    if data:
        lines += ["## Data", ""] + [f"- {k}: {_fmt(v)}" for k, v in _flatten(data).items()] + [""]
    training = config.get("training") or {}
    if training:
        lines += ["## Settings", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(training).items()] + [""]
    return lines


def _render_detection_report(config: Mapping[str, Any]) -> str:
    """``report.md`` of a detection bundle: the detector, validation mAP, per-epoch history, data, settings."""
    det = config.get("model", {}).get("detector", {})
    metrics = config.get("metrics", {})
    lines = [
        "# frugalvision model bundle (detection)",
        "",
        f"Created {config.get('created', '?')} with frugalvision {config.get('frugalvision_version', '?')}. "
        "Load it with `frugalvision.bundle.load_detector(path)`.",
        "",
        "## Model",
        "",
        f"- backbone: `{det.get('backbone', '?')}`, size {det.get('size', '?')}, head {det.get('head', '?')}"
        + (", RepConv" if det.get("repconv") else "")
        + (", auxiliary head" if det.get("aux_head") else "")
        + (", depthwise neck and head" if det.get("depthwise") else "")
        + (f", distribution focal loss ({det['dfl_bins']} bins)" if det.get("dfl_bins") else ""),
        f"- input: {det.get('image_size', '?')} x {det.get('image_size', '?')} letterboxed; "
        f"{len(config.get('classes', []))} classes: {', '.join(config.get('classes', [])[:20])}",
        f"- loss: `{config.get('loss', {}).get('name', '?')}` {json.dumps(config.get('loss', {}).get('kwargs', {}))}",
        "",
    ]
    final = {k: v for k, v in metrics.items() if k.startswith("val/")}
    if final:
        lines += [
            "## Validation metrics (EMA weights)",
            "",
            f"Best epoch: {metrics.get('best_epoch', '?')} (chosen by mAP).",
            "",
        ]
        lines += (
            ["| metric | value |", "|---|---|"]
            + [f"| {k[4:]} | {_fmt(v)} |" for k, v in final.items()]
            + [""]
        )
    lines += _report_tail(config)
    return "\n".join(lines)


def embedder_from_spec(
    spec: Mapping[str, Any], device: str | torch.device = "cpu"
) -> Backbone | EmbeddingModel:
    """Rebuild what made a store or index from its recorded ``info["backbone"]``.

    ``{"bundle": path, "id": ...}`` loads the model bundle (and checks it is still the same bundle); a
    :class:`~frugalvision.models.BackboneSpec` dict rebuilds the backbone.

    Raises:
        StoreError: the bundle is gone or was replaced, or the record describes an unsaved model.
    """
    if "bundle" in spec:
        model = load(spec["bundle"], device=device)
        if spec.get("id") and model.bundle_id != spec["id"]:
            raise StoreError(
                f"the model bundle {spec['bundle']} was replaced since these embeddings were made "
                f"(id {model.bundle_id} vs recorded {spec['id']}); embed the collection again with it"
            )
        return model
    if "embedding_model" in spec:
        raise StoreError(
            "these embeddings were made by an EmbeddingModel that was never saved, so it cannot be rebuilt; "
            "save it with frugalvision.bundle.save_bundle and embed again"
        )
    return backbone_from_spec(dict(spec)).to(device)


class QueryEmbedder:
    """Embeds new images (search queries) exactly as the store or index whose ``info`` is given was made.

    The backbone and preprocessing come from ``info["backbone"]`` (:func:`embedder_from_spec`), and vectors are
    L2-normalised when ``info["normalized"]`` says so (the default). ``frugalvision search`` and
    ``frugalvision explore`` (an uploaded photo) share it, so both give the same vectors for the same file.

    Example:
        >>> index = EmbeddingIndex.load("index/")  # doctest: +SKIP
        >>> vectors = QueryEmbedder(index.info)(["query.jpg"])  # (1, D) float32  # doctest: +SKIP

    Raises:
        StoreError: ``info`` does not record the backbone, or its bundle is gone or was replaced.
    """

    def __init__(self, info: Mapping[str, Any], device: str | torch.device = "cpu") -> None:
        from frugalvision.embeddings import resolve_device

        if "backbone" not in info:
            raise StoreError("these embeddings do not record which backbone made them; search by vector")
        self.device = resolve_device(device)
        self.model = embedder_from_spec(info["backbone"]).to(self.device)
        self.transform = self.model.transform()
        self.normalize = bool(info.get("normalized", True))

    def __call__(self, images: Sequence[str | os.PathLike[str]]) -> Any:
        """``(len(images), D)`` float32 vectors of the image files (``CorruptImageError`` naming a bad one)."""
        from frugalvision.data import load_for_transform
        from frugalvision.embeddings import embed_images

        batch = torch.stack([load_for_transform(p, self.transform) for p in images])
        return embed_images(self.model, batch, normalize=self.normalize, device=self.device)
