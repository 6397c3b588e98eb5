from __future__ import annotations

import math

import pytest
import torch

from frugalvision.models import create_embedding_model
from frugalvision.train import build_loss, load_config
from frugalvision.train.optim import WarmupCosine, build_optimizer, parameter_groups


def test_warmup_then_cosine() -> None:
    f = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [round(f(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert WarmupCosine(0, 10)(0) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_embedding_model("test_efficientnet", pretrained=False, pooling="gem", embedding_size=16)


def test_groups_learning_rates_and_weight_decay(model) -> None:
    cfg = load_config(overrides=["optim.lr=1e-4", "optim.weight_decay=0.05", "loss.name=proxynca++"])
    loss = build_loss("proxynca++", num_classes=5, embedding_size=16)
    groups = {g["name"]: g for g in parameter_groups(model, loss, cfg, frozen_backbone=False)}
    assert groups["backbone"]["lr"] == 1e-4 and groups["backbone"]["weight_decay"] == 0.05
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in groups["backbone/no_decay"]["params"])
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["head/no_decay"]["weight_decay"] == 0.0
    assert groups["pooling/no_decay"]["params"][0] is model.pooling.gem.p  # GeM's p: head lr, no decay
    proxies = [g for n, g in groups.items() if n.startswith("loss")]
    assert proxies[0]["params"][0] is loss.proxies and proxies[0]["lr"] == pytest.approx(
        1e-2
    )  # x100 (fast proxies)
    assert proxies[0]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters())) + len(list(loss.parameters()))


def test_frozen_backbone_is_left_out_and_schedule_is_per_step(model) -> None:
    cfg = load_config(overrides=["trainer.epochs=3", "optim.warmup_epochs=1", "loss.name=triplet"])
    loss = build_loss("triplet", num_classes=5, embedding_size=16)
    optimizer, scheduler = build_optimizer(model, loss, cfg, steps_per_epoch=10, frozen_backbone=True)
    assert not any(g["name"].startswith("backbone") for g in optimizer.param_groups)
    head_lr = cfg.optim.lr * cfg.optim.head_lr_multiplier
    assert optimizer.param_groups[0]["lr"] == pytest.approx(head_lr / 11)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(head_lr)
    assert set(scheduler.state_dict()["lr_lambdas"][0]) == {"warmup", "total", "min_ratio"}  # plain values
