from __future__ import annotations

import pytest
import torch
from torch import nn

from frugalvision.losses import (
    LOSS_NEEDS,
    LOSS_SPACES,
    _registry,
    create_loss,
    get_loss_class,
    list_losses,
    loss_entry,
    loss_param_groups,
    loss_task,
    register_loss,
)

PART1 = {
    "triplet": {},
    "quadruplet": {},
    "sphereface": {"num_classes": 4, "embedding_size": 8},
    "cosface": {"num_classes": 4, "embedding_size": 8},
    "arcface": {"num_classes": 4, "embedding_size": 8},
    "proxynca": {"num_classes": 4, "embedding_size": 8},
    "proxynca++": {"num_classes": 4, "embedding_size": 8},
}


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))


@pytest.mark.parametrize("name", list(PART1))
def test_every_loss_is_created_by_name_and_runs(name) -> None:
    loss = create_loss(name, **PART1[name])
    assert isinstance(loss, nn.Module)
    x = torch.randn(8, 8, requires_grad=True)
    value = loss(x, torch.arange(4).repeat(2))
    value.backward()
    assert value.shape == () and torch.isfinite(value) and x.grad is not None


def test_list_losses_canonical_and_aliases() -> None:
    canonical = list_losses(include_aliases=False)
    everything = list_losses()
    assert set(PART1) <= set(canonical) <= set(everything)
    assert {"proxy_nca_pp", "triplet_margin", "a_softmax"} <= set(everything) - set(canonical)
    assert everything == sorted(everything)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'nope'; available: .*arcface.*triplet"):
        create_loss("nope")


def test_bad_kwargs_name_the_loss_and_its_arguments() -> None:
    with pytest.raises(
        TypeError, match=r"'arcface' \(ArcFaceLoss\).*accepted arguments: num_classes, embedding_size"
    ):
        create_loss("arcface", num_classes=3, embedding_size=4, margn=0.3)
    with pytest.raises(TypeError, match="missing a required argument"):
        create_loss("proxynca++", num_classes=3)


def test_register_and_conflicts(clean_registry) -> None:
    @register_loss("toy_loss", "toy")
    class Toy(nn.Module):
        def __init__(self, factor: float = 2.0) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return embeddings.sum() * self.factor

    assert isinstance(create_loss("toy", factor=3.0), Toy)
    canonical = list_losses(include_aliases=False)
    assert "toy_loss" in canonical and "toy" not in canonical

    class Other(nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_loss("toy")(Other)
    with pytest.raises(ValueError, match="lower-case"):
        register_loss("Toy2")
    with pytest.raises(ValueError, match="at least one name"):
        register_loss()
    with pytest.raises(TypeError, match=r"nn\.Module"):
        register_loss("not_a_module")(int)  # type: ignore[type-var]


def test_loss_param_groups() -> None:
    assert loss_param_groups(create_loss("triplet"), base_lr=0.1) == []
    arc = create_loss("arcface", num_classes=3, embedding_size=4)
    (group,) = loss_param_groups(arc, base_lr=0.1)
    assert group["lr"] == pytest.approx(0.1) and group["params"] == [arc.weight]
    pp = create_loss("proxynca++", num_classes=3, embedding_size=4, lr_multiplier=1e3)
    (group,) = loss_param_groups(pp, base_lr=1e-5)
    assert group["lr"] == pytest.approx(1e-2)
    frozen = create_loss("cosface", num_classes=3, embedding_size=4).requires_grad_(False)
    assert loss_param_groups(frozen, base_lr=0.1) == []

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.zeros(2))
            self.b = nn.Parameter(torch.zeros(2))

        def param_groups(self, base_lr: float) -> list[dict]:
            return [{"params": [self.a], "lr": base_lr}, {"params": [self.b], "lr": 10 * base_lr}]

    groups = loss_param_groups(Custom(), base_lr=0.5)
    assert [g["lr"] for g in groups] == [0.5, 5.0]
    # accepted by an optimiser
    torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))]}, *groups], lr=0.5)
    with pytest.raises(ValueError, match="base_lr"):
        loss_param_groups(arc, base_lr=0.0)


def test_losses_are_listed_by_task(clean_registry) -> None:
    @register_loss("toy_tagging", task="multilabel")
    class ToyTagging(nn.Module):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return logits.sum()

    assert "toy_tagging" in list_losses(task="multilabel")
    assert "toy_tagging" not in list_losses(task="embedding") and "arcface" in list_losses(task="embedding")
    assert "arcface" not in list_losses(task="multilabel")
    assert loss_task("toy_tagging") == "multilabel" and loss_task("ArcFace") == "embedding"
    with pytest.raises(ValueError, match="task must be one of embedding, multilabel, detection"):
        list_losses(task="segmentation")
    with pytest.raises(ValueError, match="register_loss task must be one of"):
        register_loss("toy_segment", task="segmentation")


@pytest.mark.parametrize("name", list_losses())
def test_every_name_resolves_to_its_canonical_entry(name: str) -> None:
    """Aliases are resolved once, by the registry: an alias gives the very entry of its canonical name, with
    all its traits, whatever the case or surrounding spaces."""
    entry = loss_entry(name)
    assert entry is loss_entry(entry.name) is loss_entry(f" {name.upper()} ")
    assert entry.name in list_losses(include_aliases=False)
    assert name == entry.name or name in entry.aliases
    assert get_loss_class(name) is entry.cls and loss_task(name) == entry.task


def test_registered_traits() -> None:
    """What each loss needs is registered with it (spot checks of the declarations)."""
    hyperbolic = loss_entry("hyperbolic")
    assert (hyperbolic.name, hyperbolic.space, hyperbolic.needs) == ("hyperbolic_pce", "poincare", ())
    assert loss_entry("proxy_nca_pp").space == "sphere" and loss_entry("lmcl").name == "cosface"
    guided = loss_entry("language_guided")
    assert guided.space is None and guided.wraps == "proxynca++"
    assert set(guided.needs) == {"class_names", "text_model"}
    assert loss_entry("asymmetric").space == "euclidean"


def test_traits_are_checked_at_registration(clean_registry) -> None:
    with pytest.raises(ValueError, match=f"space must be one of {', '.join(LOSS_SPACES)}"):
        register_loss("toy_flat", space="flat")
    with pytest.raises(ValueError, match=f"needs must be among {', '.join(LOSS_NEEDS)}"):
        register_loss("toy_needy", needs=("weather",))
    with pytest.raises(ValueError, match="wraps"):
        register_loss("toy_wrap", wraps="Triplet")

    class NoArgs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x.sum()

    with pytest.raises(TypeError, match=r"'toy_ball'.*space='poincare'.*argument 'c'"):
        register_loss("toy_ball", space="poincare")(NoArgs)
    with pytest.raises(TypeError, match=r"'toy_names'.*needs class_names.*argument 'class_names'"):
        register_loss("toy_names", needs=("class_names",))(NoArgs)
    with pytest.raises(TypeError, match=r"'toy_text'.*needs text_model.*argument 'language_model'"):
        register_loss("toy_text", needs=("text_model",))(NoArgs)
    with pytest.raises(TypeError, match=r"'toy_wrapping'.*wraps.*argument 'base_loss'"):
        register_loss("toy_wrapping", wraps="triplet")(NoArgs)
    assert "toy_ball" not in list_losses()  # nothing is registered by a failed registration

    @register_loss("toy_default_spaces")
    class Plain(NoArgs):
        pass

    @register_loss("toy_tags", task="multilabel")
    class Tags(NoArgs):
        pass

    assert loss_entry("toy_default_spaces").space == "sphere" and loss_entry("toy_tags").space == "euclidean"


@pytest.mark.parametrize("name", list_losses(include_aliases=False))
def test_every_loss_optimises_all_its_own_parameters(name: str) -> None:
    """Learnable losses (proxies, class weights) need their own optimiser group: loss_param_groups covers every
    trainable parameter of every registered loss, once."""
    from frugalvision.train import build_loss

    loss = build_loss(
        name,
        num_classes=4,
        embedding_size=8,
        class_names=["cat", "dog", "car", "cup"],
        text_encoder=lambda texts: torch.randn(len(texts), 4, generator=torch.Generator().manual_seed(0)),
        class_counts=[3, 2, 2, 1],
        num_samples=6,
    )
    trainable = {id(p) for p in loss.parameters() if p.requires_grad}
    grouped = [id(p) for g in loss_param_groups(loss, base_lr=0.1) for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)
