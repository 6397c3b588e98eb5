"""Augmentation and regularisation presets after AugReg, and the training transform on timm's pipeline.

Steiner, Kolesnikov, Zhai, Wightman, Uszkoreit, Beyer, "How to train your ViT? Data, Augmentation, and
Regularization in Vision Transformers", TMLR 2022, https://arxiv.org/abs/2106.10270. AugReg crosses
RandAugment(layers, magnitude) and Mixup(alpha) into ``light1/light2/medium1/medium2/strong1/strong2``
(big_vision: light1 = RA(2, 0), light2 = RA(2, 10) + Mixup 0.2, medium1 = RA(2, 15) + Mixup 0.2,
medium2 = RA(2, 15) + Mixup 0.5, strong1 = RA(2, 20) + Mixup 0.5, strong2 = RA(2, 20) + Mixup 0.8) with an
independent regularisation axis (dropout 0.1 and stochastic depth 0.1, or none) and weight decay.

Metric-learning losses need hard labels, so Mixup is dropped and each preset keeps AugReg's RandAugment level;
crop scale and random erasing grow with the strength:

========  =================  ======================  ===========  =====  ==============  =======  ==========  ======
preset    AugReg analogue    RandAugment (timm)      crop scale   hflip  random erasing  dropout  stoch. d.   wd
========  =================  ======================  ===========  =====  ==============  =======  ==========  ======
none      none               --                      centre crop  --     --              0        0           0.0
light     light2 w/o Mixup   ``rand-m10-n2-mstd0.5``  (0.35, 1)    0.5    0               0        0           0.01
medium    medium1/2 w/o Mx   ``rand-m15-n2-mstd0.5``  (0.2, 1)     0.5    0.1             0        0.1         0.05
strong    strong1/2 w/o Mx   ``rand-m20-n2-mstd0.5``  (0.08, 1)    0.5    0.25            0.1      0.1         0.1
========  =================  ======================  ===========  =====  ==============  =======  ==========  ======

The ``classification`` task (soft targets) also takes AugReg's Mixup (:data:`TASK_RECIPES`): ``medium`` adds
Mixup 0.2 (medium1), ``strong`` Mixup 0.5 (strong1); ``light`` stays without (light1/light2 differ only by Mixup,
and short fine-tunes -- the frugal case -- converge more slowly with it).

Any key set in the YAML file or on the command line wins over the preset. The frozen-backbone fast path computes
its features once without augmentation, so only the head-side settings (dropout, weight decay) matter there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.data import create_transform

from frugalvision.train.config import AugmentConfig

__all__ = ["RECIPES", "TASK_RECIPES", "train_transform"]

#: preset name -> dotted config keys it sets (lower precedence than anything the user sets).
RECIPES: dict[str, dict[str, Any]] = {
    "none": {
        "augment.random_crop": False,
        "augment.auto_augment": None,
        "augment.re_prob": 0.0,
        "model.drop_rate": 0.0,
        "model.drop_path_rate": 0.0,
        "optim.weight_decay": 0.0,
    },
    "light": {
        "augment.random_crop": True,
        "augment.scale": (0.35, 1.0),
        "augment.hflip": 0.5,
        "augment.auto_augment": "rand-m10-n2-mstd0.5",
        "augment.re_prob": 0.0,
        "model.drop_rate": 0.0,
        "model.drop_path_rate": 0.0,
        "optim.weight_decay": 0.01,
    },
    "medium": {
        "augment.random_crop": True,
        "augment.scale": (0.2, 1.0),
        "augment.hflip": 0.5,
        "augment.auto_augment": "rand-m15-n2-mstd0.5",
        "augment.re_prob": 0.1,
        "model.drop_rate": 0.0,
        "model.drop_path_rate": 0.1,
        "optim.weight_decay": 0.05,
    },
    "strong": {
        "augment.random_crop": True,
        "augment.scale": (0.08, 1.0),
        "augment.hflip": 0.5,
        "augment.auto_augment": "rand-m20-n2-mstd0.5",
        "augment.re_prob": 0.25,
        "model.drop_rate": 0.1,
        "model.drop_path_rate": 0.1,
        "optim.weight_decay": 0.1,
    },
}


#: task -> preset name -> extra keys of that task (between the preset and the user's settings).
TASK_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {"medium": {"augment.mixup": 0.2}, "strong": {"augment.mixup": 0.5}},
}


def train_transform(data_config: Mapping[str, Any], augment: AugmentConfig) -> Callable[[Any], torch.Tensor]:
    """timm training transform (PIL image -> normalised tensor) for a backbone's ``data_config``.

    ``augment.random_crop=False`` gives the evaluation transform (resize, centre crop, normalise).
    """
    if not augment.random_crop:
        return create_transform(**dict(data_config), is_training=False)
    return create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=True,
        scale=(float(augment.scale[0]), float(augment.scale[1])),
        ratio=(float(augment.ratio[0]), float(augment.ratio[1])),
        hflip=augment.hflip,
        vflip=augment.vflip,
        color_jitter=augment.color_jitter,  # type: ignore[arg-type]  # None disables it
        auto_augment=augment.auto_augment,
        interpolation=str(data_config.get("interpolation", "bilinear")),
        mean=tuple(data_config.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(data_config.get("std", (0.229, 0.224, 0.225))),
        re_prob=augment.re_prob,
        re_mode="pixel",
    )
