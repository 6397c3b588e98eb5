"""Message passing over the mini-batch graph: attention weights, graphs, equivariance, a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from frugalvision.layers import IntraBatchMPN, MessagePassingLayer, full_graph, knn_graph


def _x(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("knn", [None, 3])
def test_attention_weights_sum_to_one_and_respect_the_graph(knn):
    torch.manual_seed(0)
    mpn = IntraBatchMPN(16, num_layers=2, num_heads=4, knn=knn).eval()
    x = _x(9, 16)
    _, attention = mpn(x, return_attention=True)
    adjacency = mpn.graph(x)
    assert len(attention) == 2
    for weights in attention:
        assert weights.shape == (4, 9, 9)
        assert_close(weights.sum(dim=-1), torch.ones(4, 9))
        assert bool((weights[:, ~adjacency] == 0).all())
        assert bool((weights[:, adjacency] > 0).all())


def test_custom_adjacency_is_respected():
    torch.manual_seed(1)
    mpn = IntraBatchMPN(8, num_heads=2).eval()
    adjacency = torch.eye(5, dtype=torch.bool)
    adjacency[0, 4] = adjacency[3, 1] = True
    _, (weights,) = mpn(_x(5, 8), adjacency, return_attention=True)
    assert bool((weights[:, ~adjacency] == 0).all())
    assert_close(weights[:, 1, 1], torch.ones(2))  # a node with only its self-loop attends to itself alone


def test_knn_graph_matches_brute_force():
    x = _x(10, 6, seed=2)
    adjacency = knn_graph(x, 4)
    assert bool((adjacency.sum(dim=1) == 4).all())
    assert bool(adjacency.diagonal().all())
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    for i in range(10):
        others = sorted((j for j in range(10) if j != i), key=lambda j: -float(cos[i, j]))[:3]
        assert set(torch.nonzero(adjacency[i]).flatten().tolist()) == {i, *others}
    assert torch.equal(knn_graph(x, 10), full_graph(10))


@pytest.mark.parametrize("knn", [None, 4])
def test_permutation_equivariance(knn):
    torch.manual_seed(3)
    mpn = IntraBatchMPN(12, num_layers=2, num_heads=3, knn=knn).eval()
    x = _x(8, 12, seed=4)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    assert_close(mpn(x[perm]), mpn(x)[perm], rtol=1e-5, atol=1e-5)


def _layer_norm(v: list[float], gamma: list[float], beta: list[float], eps: float) -> list[float]:
    mean = sum(v) / len(v)
    var = sum((a - mean) ** 2 for a in v) / len(v)
    return [(a - mean) / math.sqrt(var + eps) * g + b for a, g, b in zip(v, gamma, beta, strict=True)]


def _linear(w: torch.Tensor, b: torch.Tensor, v: list[float]) -> list[float]:
    return [sum(w[o, i].item() * v[i] for i in range(len(v))) + b[o].item() for o in range(w.shape[0])]


def test_one_layer_by_hand_on_three_nodes_in_float64():
    torch.manual_seed(6)
    dim, heads, hd = 4, 2, 2
    layer = MessagePassingLayer(dim, heads, dropout=0.0, ffn_ratio=2).double().eval()
    with torch.no_grad():  # random LayerNorm affine parameters and biases so that every term is exercised
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    adjacency = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    x = _x(3, dim, seed=7, dtype=torch.float64)
    out, weights = layer(x, adjacency)

    att, ffn = layer.attention, layer.ffn
    rows = x.tolist()
    q = [_linear(att.query.weight, att.query.bias, r) for r in rows]
    k = [_linear(att.key.weight, att.key.bias, r) for r in rows]
    v = [_linear(att.value.weight, att.value.bias, r) for r in rows]
    expected_weights = torch.zeros(heads, 3, 3, dtype=torch.float64)
    expected = []
    for i in range(3):
        concat = []
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            nbrs = [j for j in range(3) if adjacency[i, j]]
            scores = {
                j: sum(a * b for a, b in zip(q[i][sl], k[j][sl], strict=True)) / math.sqrt(hd) for j in nbrs
            }
            z = sum(math.exp(s) for s in scores.values())
            for j in nbrs:
                expected_weights[h, i, j] = math.exp(scores[j]) / z
            concat += [sum(math.exp(scores[j]) / z * v[j][sl][t] for j in nbrs) for t in range(hd)]
        message = _linear(att.out.weight, att.out.bias, concat)
        h1 = _layer_norm(
            [a + m for a, m in zip(rows[i], message, strict=True)],
            layer.norm1.weight.tolist(),
            layer.norm1.bias.tolist(),
            layer.norm1.eps,
        )
        hidden = [max(0.0, a) for a in _linear(ffn[0].weight, ffn[0].bias, h1)]
        f = _linear(ffn[3].weight, ffn[3].bias, hidden)
        expected.append(
            _layer_norm(
                [a + b for a, b in zip(h1, f, strict=True)],
                layer.norm2.weight.tolist(),
                layer.norm2.bias.tolist(),
                layer.norm2.eps,
            )
        )
    assert_close(weights, expected_weights, rtol=1e-12, atol=1e-12)
    assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_gradcheck_tiny_network():
    torch.manual_seed(8)
    mpn = IntraBatchMPN(4, num_layers=1, num_heads=2, dropout=0.0).double()
    x = _x(3, 4, seed=9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(mpn, (x,), fast_mode=True)


def test_dropout_only_in_training_mode():
    torch.manual_seed(10)
    mpn = IntraBatchMPN(8, num_heads=2, dropout=0.5)
    x = _x(6, 8, seed=11)
    assert not torch.equal(mpn(x), mpn(x))
    mpn.eval()
    assert torch.equal(mpn(x), mpn(x))


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        IntraBatchMPN(10, num_heads=3)
    with pytest.raises(ValueError, match="knn"):
        IntraBatchMPN(8, knn=0)
    mpn = IntraBatchMPN(8)
    with pytest.raises(ValueError, match=r"x must be \(B, 8\)"):
        mpn(torch.randn(4, 6))
    with pytest.raises(ValueError, match="NaN"):
        mpn(torch.full((4, 8), float("nan")))
    with pytest.raises(ValueError, match="all-False row"):
        mpn(torch.randn(3, 8), torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        mpn(torch.randn(3, 8), torch.ones(3, 3))
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(torch.randn(3, 2), 0)
