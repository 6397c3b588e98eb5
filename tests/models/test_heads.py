from __future__ import annotations

import pytest
import torch

from frugalvision.models.heads import EmbeddingHead, GeM, GlobalPool, gem


def _maps(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 5, 4, 6, generator=g, dtype=torch.float64) * 4  # non-negative, like post-ReLU maps


def test_gem_p1_is_average_pooling() -> None:
    x = _maps()
    torch.testing.assert_close(gem(x, 1.0, (2, 3)), x.mean(dim=(2, 3)))
    torch.testing.assert_close(GeM(p=1.0, learnable=False).double()(x), x.mean(dim=(2, 3)))


def test_gem_matches_the_formula_in_float64() -> None:
    x, p = _maps(1), 3.0
    expected = x.pow(p).mean(dim=(2, 3)).pow(1 / p)  # Radenović et al. eq. 2, computed directly
    torch.testing.assert_close(gem(x, p, (2, 3)), expected)


def test_gem_approaches_max_pooling_and_does_not_overflow() -> None:
    x = _maps(2) * 50  # values up to 200: 200**500 overflows any float, the stable form does not
    peak = x.amax(dim=(2, 3))
    errors = [float((gem(x, p, (2, 3)) - peak).abs().max() / peak.max()) for p in (3.0, 30.0, 500.0)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01
    assert torch.isfinite(gem(x.float(), 500.0, (2, 3))).all()


def test_gem_p_learns() -> None:
    pool = GeM(p=3.0)
    pool(torch.rand(2, 4, 3, 3)).sum().backward()
    assert isinstance(pool.p, torch.nn.Parameter) and pool.p.grad is not None and pool.p.grad.abs() > 0
    fixed = GeM(p=3.0, learnable=False)
    assert not any(True for _ in fixed.parameters()) and "p" in dict(fixed.named_buffers())


def test_global_pool_layouts() -> None:
    x = _maps(3)
    torch.testing.assert_close(GlobalPool("max")(x), x.amax(dim=(2, 3)))
    torch.testing.assert_close(
        GlobalPool("avg", channels_last=True)(x.permute(0, 2, 3, 1)), x.mean(dim=(2, 3))
    )
    tokens = torch.randn(2, 1 + 16, 8)  # class token + 16 patch tokens
    torch.testing.assert_close(GlobalPool("avg", num_prefix_tokens=1)(tokens), tokens[:, 1:].mean(dim=1))
    torch.testing.assert_close(GlobalPool("max", num_prefix_tokens=1)(tokens), tokens[:, 1:].amax(dim=1))
    assert GlobalPool("gem").describe() == {"kind": "gem", "gem_p": 3.0, "gem_learnable": True}


def test_global_pool_errors() -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        GlobalPool("median")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, N, C\)"):
        GlobalPool("avg")(torch.randn(2, 3))
    with pytest.raises(ValueError, match="no patch tokens"):
        GlobalPool("avg", num_prefix_tokens=2)(torch.randn(2, 2, 4))
    with pytest.raises(RuntimeError, match="native"):
        GlobalPool("native")(torch.randn(2, 3, 2, 2))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_head_l2_rows_have_unit_norm(kind: str) -> None:
    head = EmbeddingHead(16, 8, kind=kind, normalization="l2", hidden_size=12)
    out = head(torch.randn(5, 16) * 100)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("kind", ["linear", "mlp", "identity"])
def test_head_poincare_rows_lie_inside_the_ball(kind: str) -> None:
    c = 0.3
    head = EmbeddingHead(16, 8, kind=kind, normalization="poincare", c=c)
    out = head(torch.randn(6, 16) * 1e3)
    assert out.shape == (6, 16 if kind == "identity" else 8)
    assert bool((out.norm(dim=1) < 1 / c**0.5).all())
    assert head.embedding_size == out.shape[1]


def test_head_none_keeps_the_scale_and_identity_is_the_input() -> None:
    x = torch.randn(4, 6) * 7
    torch.testing.assert_close(EmbeddingHead(6, kind="identity", normalization="none")(x), x)
    out = EmbeddingHead(6, 3, normalization="none")(x)
    assert not torch.allclose(out.norm(dim=1), torch.ones(4))


def test_head_describe_and_errors() -> None:
    head = EmbeddingHead(16, 8, kind="mlp", hidden_size=32, dropout=0.1)
    assert head.describe() == {
        "kind": "mlp",
        "embedding_size": 8,
        "normalization": "l2",
        "hidden_size": 32,
        "dropout": 0.1,
        "c": 0.1,
        "clip_r": 2.3,
    }
    with pytest.raises(ValueError, match=r"features must be \(B, 16\)"):
        head(torch.randn(2, 15))
    with pytest.raises(ValueError, match="NaN"):
        head(torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match="normalization must be one of"):
        EmbeddingHead(16, 8, normalization="cosine")
    with pytest.raises(ValueError, match="dropout"):
        EmbeddingHead(16, 8, dropout=1.0)
