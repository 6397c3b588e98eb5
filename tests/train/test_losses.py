from __future__ import annotations

import pytest
import torch

from frugalvision.losses import LanguageGuidanceLoss, list_losses
from frugalvision.train import ConfigError, build_loss, loss_terms


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
