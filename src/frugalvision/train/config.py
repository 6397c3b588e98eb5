"""Training configuration: the schema of a run, as frozen dataclasses.

:func:`frugalvision.train.load_config` (in :mod:`frugalvision.train.resolve`) builds a :class:`TrainConfig` from the
defaults below < the recipe's presets (:mod:`frugalvision.train.recipes`) < the YAML file < the overrides (the
CLI's ``--set key=value`` and its flags), resolves every ``"auto"`` that the configuration alone decides and checks
the ranges, once; the engine only reads the result. Keys are dotted (``optim.lr``, ``loss.kwargs.margin``); an
unknown key or a value of the wrong type raises :class:`ConfigError` naming the key (the typed loader is
:mod:`frugalvision._config`, shared with the distillation configuration). Every run writes its resolved
configuration to ``<out>/config.yaml``::

    cfg = load_config("train.yaml", ["optim.lr=3e-4", "model.freeze_backbone=true"])
    cfg.optim.lr, cfg.to_dict()["model"]["pooling"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from frugalvision._config import ConfigError, Settings, coerce_value, parse_override, read_yaml
from frugalvision._defaults import DEFAULT_MODEL

__all__ = [
    "DEFAULT_LOSSES",
    "DEFAULT_MODEL",
    "FROZEN_MULTILABEL_PRESET",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DetectionConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainerConfig",
    "coerce_value",
    "parse_override",
    "read_yaml",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split and batched.

    ``val_split``: ``"classes"`` holds out ``val_fraction`` of the classes (class-disjoint, the deep-metric-
    learning protocol: the model is judged on classes it never saw), ``"images"`` holds out ``val_fraction`` of
    the images (of each class, for single-label data), ``"none"`` skips validation; ``"auto"`` is ``"classes"``
    for the embedding task and ``"images"`` for the multi-label task; ``val_data`` (a data set path) wins over all.

    ``sampler``: how training batches are drawn. ``"m_per_class"`` (the embedding task's, and its ``"auto"``):
    ``batch_size // m_per_class`` classes with ``m_per_class`` images each (per device); ``"shuffle"`` (the
    multi-label task's ``"auto"``): every image once per epoch in random order; ``"class_aware"`` (multi-label):
    each image drawn by first choosing a class uniformly, then one of its images (Shen et al., ECCV 2016), so tail
    classes are seen as often as head classes. ``steps_per_epoch`` defaults to
    ``training images // (batch_size * devices)``. ``cache_dir`` keeps the frozen-backbone feature cache (default
    ``<out>/feature_cache``).
    """

    path: str | None = None
    format: Literal["auto", "folder", "manifest", "coco", "yolo"] = "auto"
    val_split: Literal["auto", "classes", "images", "none"] = "auto"
    val_fraction: float = 0.2
    val_data: str | None = None
    batch_size: int = 32
    m_per_class: int = 4
    sampler: Literal["auto", "m_per_class", "shuffle", "class_aware"] = "auto"
    eval_batch_size: int = 64
    num_workers: int | None = None
    on_corrupt: Literal["skip", "fail"] = "skip"
    steps_per_epoch: int | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, pooling and embedding head (see :func:`frugalvision.models.create_embedding_model`).

    ``embedding_size=None`` (default): the backbone's feature width on the frozen-backbone fast path -- the head
    starts as a rotation of the pretrained features and keeps what separates classes it never trains on (a 128-d
    head trained on frozen features lost 0.07-0.10 MAP@R on unseen Caltech classes in
    ``benchmarks/train_embedding.py``) -- and 128 when fine-tuning. For the multi-label task the head is the
    classifier: its output size is the number of classes (``embedding_size`` is not used) and it has no
    normalisation.

    ``normalization="auto"`` follows the space the loss is registered with (:func:`frugalvision.losses.
    loss_entry`): ``"poincare"`` for a loss in the Poincaré ball (``hyperbolic_pce``), ``"l2"`` for one on the
    sphere (all others), ``"none"`` for one in Euclidean space.
    ``freeze_backbone`` switches to the fast path: pooled features computed once and cached, only the head and
    the loss train. ``freeze_norm`` keeps the backbone's BatchNorm statistics fixed while fine-tuning (common in
    deep metric learning, where m-per-class batches are small and unlike ImageNet's). ``drop_rate`` is dropout on
    the pooled features, ``drop_path_rate`` timm's stochastic depth. ``head_epochs`` (classification task, when
    fine-tuning): LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022) -- the first
    ``head_epochs`` epochs train only the head (backbone frozen, in eval mode), then the whole network.
    """

    name: str = DEFAULT_MODEL
    pretrained: bool = True
    weights: str | None = None
    pooling: Literal["native", "avg", "gem", "max"] = "native"
    gem_p: float = 3.0
    gem_learnable: bool = True
    head: Literal["linear", "mlp", "identity"] = "linear"
    embedding_size: int | None = None
    hidden_size: int | None = None
    normalization: Literal["auto", "l2", "poincare", "none"] = "auto"
    hyperbolic_c: float = 0.1
    hyperbolic_clip_r: float | None = 2.3
    input_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    freeze_backbone: bool = False
    freeze_norm: bool = True
    head_epochs: int = 0


#: The loss ``loss.name="auto"`` stands for, per task.
DEFAULT_LOSSES = {"embedding": "proxynca++", "multilabel": "asl", "classification": "cross_entropy"}

#: Defaults of the multi-label task on the frozen-backbone fast path, where a linear classifier on cached features
#: is all that trains: head learning rate ``1e-4 x 100 = 1e-2`` instead of the fine-tuning ``1e-4 x 10``. Applied
#: by :func:`frugalvision.train.load_config` under the recipe, and only when neither ``optim.lr`` nor ``optim.head_lr_multiplier`` is
#: set (so ``optim.lr=1e-3`` still means a head at 1e-2). Why (``benchmarks/train_multilabel.py``, 500-image
#: long-tailed mosaics): at 1e-3 the ASL head, which starts at each class's prior where ASL's clipped and
#: down-weighted negatives give almost no gradient, was still improving after 10 epochs (test mAP 0.70 vs 0.87 at
#: 1e-2 on caltech20); BCE also gains 2.4 points.
FROZEN_MULTILABEL_PRESET: dict[str, Any] = {"optim.head_lr_multiplier": 100.0}


@dataclass(frozen=True)
class LossConfig:
    """Any loss of :func:`frugalvision.losses.list_losses` for the run's task, with its constructor arguments.

    ``name="auto"``: ``proxynca++`` for the embedding task, ``asl`` (Asymmetric Loss) for the multi-label task.
    ``num_classes`` and ``embedding_size`` are filled in for losses that take them, and the training set's
    ``class_counts`` and ``num_samples`` for the Distribution-Balanced loss. ``language_guided`` also reads
    ``kwargs.base`` (the guided loss's name, default ``"proxynca++"``) and ``kwargs.base_kwargs``; its class names
    are the data set's.

    Multi-label only -- ``partial``: what unknown (unannotated, target -1) entries mean:
    ``"ignore"`` (left out of the loss), ``"negative"`` (taken as absent: the naive reading of partial labels) or
    ``"selective"`` (class-aware selective loss, Ben-Baruch et al. CVPR 2022: ignored for classes whose prior,
    estimated from the model's own predictions, is high; absent otherwise). ``partial_kwargs`` go to
    :class:`frugalvision.losses.PartialAnnotationLoss`.
    """

    name: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)
    partial: Literal["ignore", "negative", "selective"] = "ignore"
    partial_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolved_name(self, task: str) -> str:
        """The loss's canonical registered name: ``"auto"`` replaced by the task's default, an alias by its
        canonical name (an unknown name is returned lower-cased). A resolved configuration
        (:func:`frugalvision.train.load_config`) already holds it in :attr:`name`."""
        from frugalvision.losses import loss_entry

        name = self.name.strip().lower()
        if name == "auto":
            return DEFAULT_LOSSES.get(task, "proxynca++")
        try:
            return loss_entry(name).name
        except ValueError:
            return name


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up then cosine decay, stepped per optimisation step.

    Learning rates: backbone ``lr``; the new head ``lr * head_lr_multiplier`` (default 10: freshly initialised
    layers learn faster than pretrained ones, the usual transfer-learning rule; 100 on the multi-label fast path,
    see :data:`FROZEN_MULTILABEL_PRESET`); the loss's own parameters via
    :func:`frugalvision.losses.loss_param_groups` with base ``lr`` (e.g. ProxyNCA++'s fast proxies at x100).
    No weight decay on biases, normalisation weights, GeM's ``p`` and loss parameters (proxies).
    """

    lr: float = 1e-4
    head_lr_multiplier: float = 10.0
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation on timm's pipeline (``timm.data.create_transform(is_training=True)``).

    ``random_crop=False`` uses the evaluation preprocessing (no augmentation at all). ``auto_augment`` is a timm
    policy string such as ``"rand-m9-n2-mstd0.5"`` (RandAugment). ``mixup``/``cutmix`` are the ``alpha`` of the
    Beta(alpha, alpha) mixing weight of Mixup / CutMix (timm's ``Mixup``: one of the two per batch, chosen with
    probability 0.5 when both are > 0); only the ``classification`` task takes them (soft targets; metric-learning
    and multi-label losses need hard labels). The frozen-backbone fast path ignores this section.
    """

    random_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float | None = None
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass(frozen=True)
class TrainerConfig:
    """Loop, devices and evaluation.

    ``precision="auto"`` is ``"bf16-mixed"`` on a CUDA device that supports bfloat16 and ``"32-true"`` otherwise
    (``"bf16-mixed"`` may be asked for on CPUs too). ``patience``: epochs without a better validation score (MAP@R
    for embeddings, mAP for multi-label) before stopping (``None`` disables early stopping). ``eval_k``: the K of
    Recall@K; ``eval_top_k``: the k of the multi-label top-k metrics (CF1@top-k...).
    """

    epochs: int = 10
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    patience: int | None = 5
    eval_k: tuple[int, ...] = (1, 5)
    eval_top_k: int = 3
    eval_before_training: bool = True
    log_every_n_steps: int = 10
    progress: bool = True


@dataclass(frozen=True)
class DetectionConfig:
    """The detector and its training (``task="detection"``, :mod:`frugalvision.train.detection`); the backbone is
    ``model.name`` (``model.pretrained``, ``model.model_kwargs``).

    ``size``: ``n`` / ``s`` / ``m`` (neck and head width and depth); ``image_size``: the letterboxed input side (a
    multiple of 32); ``head``: ``anchor_free`` (default) or ``anchor`` (YOLOv5-style anchors, fitted by k-means to
    the training boxes when YOLOv3's reach fewer than 98 % of them); ``repconv`` / ``aux_head``: RepConv blocks in
    the neck and the auxiliary head, both removed by ``Detector.fuse()`` at export; ``depthwise``:
    depthwise-separable 3x3 convolutions in the neck and head (YOLOX-nano's way: neck + head 1.85 -> 0.51 GFLOPs
    at size n, 416 px). ``mosaic`` / ``mixup``: their probabilities (:class:`frugalvision.data.detection.DetectionAugment`; flips follow ``augment.hflip``);
    ``close_mosaic``: the last epochs train without mosaic and mixup; ``ema_decay``: timm's ``ModelEmaV3`` (with
    warm-up) -- validation and the bundle use the averaged weights. ``class_agnostic``: every box is one class,
    ``object``.

    ``multi_scale`` (``r`` in ``[0, 0.5]``, default 0 = off): multi-scale training (YOLOv3 / YOLOv5 practice).
    Each training batch, letterboxed to ``S = image_size``, is resized (bilinear) to a side ``S'`` drawn uniformly
    from the multiples of 32 in ``[S (1 - r), S (1 + r)]`` and its boxes are scaled by ``S' / S``; the side is
    drawn from ``(seed, global step)``, so a resumed run draws the same sides. Validation, the bundle and export
    stay at ``image_size``. A batch at ``S (1 + r)`` takes ``(1 + r)^2`` times the memory of one at ``S``.

    ``dfl_bins``: with ``R + 1 >= 2`` the anchor-free head predicts each side distance as a distribution over
    ``0..R`` strides and the loss adds distribution focal loss (Generalized Focal Loss;
    :mod:`frugalvision.losses.detection_dfl`, weight ``loss.kwargs.dfl_weight``, default 0.5); ``0``: one
    softplus distance per side, no DFL. ``"auto"`` (the default) is 16 with the anchor-free head and 0 with
    ``head=anchor``, which cannot take it (chosen on BCCD, confirmed on the digits-on-CIFAR set of
    ``benchmarks/detection_sets.py``).
    """

    size: Literal["n", "s", "m"] = "n"
    image_size: int = 416
    head: Literal["anchor_free", "anchor"] = "anchor_free"
    repconv: bool = False
    aux_head: bool = False
    depthwise: bool = False
    mosaic: float = 1.0
    mixup: float = 0.0
    close_mosaic: int = 2
    ema_decay: float = 0.9998
    class_agnostic: bool = False
    multi_scale: float = 0.0
    dfl_bins: int | Literal["auto"] = "auto"


@dataclass(frozen=True)
class TrainConfig(Settings):
    """A whole training run. ``task``: a name in the task registry (:func:`frugalvision.train.list_tasks`):
    ``"embedding"`` (metric learning: an image-retrieval embedding) or ``"multilabel"`` (tagging: one independent
    yes/no per class). ``recipe`` names the augmentation/regularisation
    preset (``none``, ``light``, ``medium``, ``strong``; see :mod:`frugalvision.train.recipes`)."""

    _aliases: ClassVar[Mapping[str, str]] = {
        "learning_rate": "lr",
        "wd": "weight_decay",
        "max_epochs": "epochs",
        "loss_name": "name",
    }

    task: str = "embedding"
    out: str = "runs/embedding"
    seed: int = 0
    recipe: Literal["none", "light", "medium", "strong"] = "light"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
