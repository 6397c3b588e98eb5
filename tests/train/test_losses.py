from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frugalvision.layers import HyperbolicProjection
from frugalvision.losses import (
    LOSS_NEEDS,
    LOSS_SPACES,
    LOSS_TASKS,
    HyperbolicPairwiseCELoss,
    LanguageGuidanceLoss,
    _registry,
    list_losses,
    loss_entry,
    register_loss,
)
from frugalvision.train import ConfigError, build_loss, build_model, loss_terms
from frugalvision.train.losses import canonical_loss_name, head_normalization, loss_space


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))


def fake_text_encoder(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in for a language model: character statistics of each text, ``(n, 4)``."""
    return torch.tensor([[len(t), sum(map(ord, t)) % 97, t.count("a") + 1, 1.0] for t in texts])


@pytest.mark.parametrize("name", list_losses(include_aliases=False, task="embedding"))
def test_every_loss_builds_with_only_the_arguments_it_takes(name: str) -> None:
    loss = build_loss(
        name,
        num_classes=4,
        embedding_size=8,
        class_names=["cat", "dog", "car", "cup"],
        hyperbolic_c=0.1 if name == "hyperbolic_pce" else None,
        text_encoder=fake_text_encoder,
    )
    emb = torch.nn.functional.normalize(torch.randn(8, 8), dim=1).requires_grad_()
    terms = loss_terms(loss, emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert terms["loss"].ndim == 0 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_language_guidance_wraps_a_base_loss_and_logs_both_terms() -> None:
    loss = build_loss(
        "language_guided",
        num_classes=3,
        embedding_size=8,
        class_names=["a", "bb", "ccc"],
        kwargs={"base": "triplet", "base_kwargs": {"margin": 0.3}, "weight": 2.0},
        text_encoder=fake_text_encoder,
    )
    assert isinstance(loss, LanguageGuidanceLoss) and loss.base_loss.margin == 0.3 and loss.weight == 2.0
    emb, labels = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    terms = loss_terms(loss, emb, labels)
    torch.testing.assert_close(terms["loss"], terms["loss/base"] + 2.0 * terms["loss/language"])
    torch.testing.assert_close(terms["loss"], loss(emb, labels))


def test_bad_loss_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="'triplet' does not take num_proxies"):
        build_loss("triplet", num_classes=3, embedding_size=8, kwargs={"num_proxies": 3})
    with pytest.raises(ConfigError, match=r"differs from model\.hyperbolic_c"):
        build_loss("hyperbolic_pce", num_classes=3, embedding_size=8, kwargs={"c": 0.5}, hyperbolic_c=0.1)
    with pytest.raises(ConfigError, match="only read by the language_guided loss"):
        build_loss("arcface", num_classes=3, embedding_size=8, kwargs={"base": "triplet"})
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("nonsense", num_classes=3, embedding_size=8)
    with pytest.raises(ConfigError, match="loss 'triplet'"):
        build_loss("triplet", num_classes=3, embedding_size=8, kwargs={"margin": -1})
    assert build_loss("hyperbolic_pce", num_classes=3, embedding_size=8, hyperbolic_c=0.3).c == 0.3


# ------------------------------------------------------------------------ what the registry says a loss needs
#: The head normalisation each embedding space calls for: written out here, independently of the engine.
HEAD_OF_SPACE = {"sphere": "l2", "poincare": "poincare", "euclidean": "none"}


def test_canonical_loss_name_maps_aliases() -> None:
    assert canonical_loss_name("hyperbolic") == "hyperbolic_pce"
    assert canonical_loss_name(" Proxy_NCA_PP ") == "proxynca++"
    assert canonical_loss_name("asymmetric") == "asl"
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        canonical_loss_name("nope")


def test_an_alias_builds_the_same_poincare_head_as_its_canonical_name(
    labelled_folder: Path, tmp_path: Path, tiny_config
) -> None:
    """``--loss hyperbolic`` (an alias) must train the Poincaré head of ``hyperbolic_pce``, not an L2 head."""
    heads = {}
    for name in ("hyperbolic_pce", "hyperbolic", "HYPERBOLIC"):
        cfg = tiny_config(labelled_folder, tmp_path / name, f"loss.name={name}")
        torch.manual_seed(0)
        model = build_model(cfg)
        assert model.normalization == "poincare", name
        assert isinstance(model.head.out, HyperbolicProjection), name
        heads[name] = model.head.state_dict()
        z = model(torch.rand(4, 3, 32, 32)).detach()
        assert float(z.norm(dim=1).max()) < 1 / cfg.model.hyperbolic_c**0.5
    for name in ("hyperbolic", "HYPERBOLIC"):
        assert heads[name].keys() == heads["hyperbolic_pce"].keys()
        for key, value in heads[name].items():
            torch.testing.assert_close(value, heads["hyperbolic_pce"][key], rtol=0, atol=0)


@pytest.mark.parametrize("name", list_losses(task="embedding"))
def test_every_embedding_loss_gets_the_head_its_space_needs(
    name: str, labelled_folder: Path, tmp_path: Path, tiny_config
) -> None:
    """Every registered name, alias or not, gets the head its registered space asks for; a loss that wraps
    another (language guidance) takes its base's space, whichever name the base is given by."""
    entry = loss_entry(name)
    if entry.wraps is not None:
        for base in ("hyperbolic", "triplet_margin"):
            cfg = tiny_config(labelled_folder, tmp_path, f"loss.name={name}", f"loss.kwargs.base={base}")
            assert build_model(cfg).normalization == HEAD_OF_SPACE[loss_entry(base).space]
        base_space = loss_entry(entry.wraps).space
        assert (
            build_model(tiny_config(labelled_folder, tmp_path, f"loss.name={name}")).normalization
            == (HEAD_OF_SPACE[base_space])
        )
        return
    cfg = tiny_config(labelled_folder, tmp_path, f"loss.name={name}")
    model = build_model(cfg)
    assert model.normalization == HEAD_OF_SPACE[entry.space]
    z = model(torch.rand(4, 3, 32, 32)).detach()
    if entry.space == "sphere":
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    elif entry.space == "poincare":
        assert float(z.norm(dim=1).max()) < 1 / cfg.model.hyperbolic_c**0.5


def test_every_trait_value_is_handled(clean_registry) -> None:
    """The vocabularies are closed and training handles every value: a new space or need fails here until the
    training code knows what to do with it."""
    assert set(HEAD_OF_SPACE) == set(LOSS_SPACES)
    for space in LOSS_SPACES:

        @register_loss(f"toy_in_{space}", space=space)
        class Toy(torch.nn.Module):
            def __init__(self, c: float = 1.0) -> None:
                super().__init__()

        assert head_normalization(f"toy_in_{space}") == HEAD_OF_SPACE[space]
        assert head_normalization(f"toy_in_{space}", requested="l2") == "l2"
    with pytest.raises(ConfigError, match="normalization=none"):
        head_normalization("toy_in_poincare", requested="none")
    for name in list_losses():
        entry = loss_entry(name)
        assert entry.task in LOSS_TASKS
        assert entry.space in LOSS_SPACES or (entry.space is None and entry.wraps is not None), name
        assert set(entry.needs) <= set(LOSS_NEEDS), name
        if entry.task == "multilabel":
            assert entry.space == "euclidean", f"{name}: a multi-label loss scores logits"
        if entry.wraps is not None:
            assert loss_entry(entry.wraps).task == entry.task and loss_entry(entry.wraps).wraps is None


def test_needs_are_filled_from_the_run(clean_registry) -> None:
    """A loss registered with needs gets them from the run (class names; the text model), one that wraps
    another gets its base built, one in the Poincaré ball gets the head's curvature -- whatever its name."""
    calls: list[list[str]] = []

    def encoder(texts: list[str]) -> torch.Tensor:
        calls.append(list(texts))
        return fake_text_encoder(texts)

    @register_loss("toy_named", "toy_named_alias", needs=("class_names", "text_model"), space="poincare")
    class ToyNamed(torch.nn.Module):
        def __init__(self, class_names: list[str], language_model=None, c: float = 1.0) -> None:
            super().__init__()
            self.class_names, self.c = class_names, c
            self.text = language_model(class_names) if language_model is not None else None

    @register_loss("toy_wrapper", wraps="toy_named_alias")
    class ToyWrapper(torch.nn.Module):
        def __init__(self, base_loss: torch.nn.Module, scale: float = 1.0) -> None:
            super().__init__()
            self.base_loss, self.scale = base_loss, scale

    names = ["cat", "dog", "cup"]
    loss = build_loss("toy_named_alias", num_classes=3, embedding_size=8, class_names=names,
                      hyperbolic_c=0.3, text_encoder=encoder)  # fmt: skip
    assert isinstance(loss, ToyNamed) and loss.class_names == names and loss.c == 0.3 and calls == [names]
    with pytest.raises(ConfigError, match="needs the names of the 3 classes"):
        build_loss("toy_named", num_classes=3, embedding_size=8, class_names=["cat"])
    wrapped = build_loss("toy_wrapper", num_classes=3, embedding_size=8, class_names=names, hyperbolic_c=0.2,
                         kwargs={"scale": 2.0})  # fmt: skip
    assert isinstance(wrapped, ToyWrapper) and wrapped.scale == 2.0
    assert isinstance(wrapped.base_loss, ToyNamed) and wrapped.base_loss.c == 0.2
    assert (
        loss_space("toy_wrapper") == "poincare" and loss_space("toy_wrapper", {"base": "triplet"}) == "sphere"
    )
    with pytest.raises(ConfigError, match=r"only read by the .*toy_wrapper loss"):
        build_loss("triplet", num_classes=3, embedding_size=8, kwargs={"base": "toy_named"})
    with pytest.raises(ConfigError, match="cannot wrap 'toy_wrapper'"):
        build_loss("toy_wrapper", num_classes=3, embedding_size=8, class_names=names,
                   kwargs={"base": "toy_wrapper"})  # fmt: skip


def test_language_guidance_of_an_aliased_hyperbolic_loss_measures_in_the_ball() -> None:
    loss = build_loss(
        "language_guided",
        num_classes=3,
        embedding_size=8,
        class_names=["a", "bb", "ccc"],
        kwargs={"base": "hyperbolic", "base_kwargs": {"temperature": 0.5}},
        hyperbolic_c=0.3,
        text_encoder=fake_text_encoder,
    )
    assert isinstance(loss.base_loss, HyperbolicPairwiseCELoss) and loss.base_loss.c == 0.3
    assert loss_space("language_guided", {"base": "hyperbolic"}) == "poincare"
