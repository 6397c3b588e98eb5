"""Intra-batch connections loss: composition of the two cross-entropies, gradients, a tiny training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from frugalvision.losses import IntraBatchLoss, create_loss, intra_batch_loss


def _smoothed_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """mean_i sum_c -q_ic log softmax(logits_i)_c with q = (1 - eps) onehot + eps / C, in Python floats."""
    total = 0.0
    num_classes = logits.shape[1]
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        for c, v in enumerate(row):
            q = (1 - eps) * (c == y) + eps / num_classes
            total -= q * (v - log_z)
    return total / len(labels)


def _batchnorm_by_hand(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    mean = h.mean(dim=0)
    var = h.var(dim=0, unbiased=False)
    return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def test_loss_is_the_sum_of_the_two_cross_entropies():
    torch.manual_seed(0)
    loss = IntraBatchLoss(
        8, 5, temperature=0.5, label_smoothing=0.2, backbone_weight=0.7, mpn_weight=1.3
    ).double()
    loss.mpn.eval()  # dropout off, so the refined embeddings below are the ones the loss sees
    x = torch.randn(10, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])

    backbone_logits = x @ loss.backbone_classifier.weight.T + loss.backbone_classifier.bias
    refined = loss.mpn(x / x.norm(dim=1, keepdim=True))
    refined_logits = _batchnorm_by_hand(refined, loss.neck) @ loss.mpn_classifier.weight.T
    expected = 0.7 * _smoothed_ce_by_hand(backbone_logits / 0.5, labels, 0.2) + 1.3 * _smoothed_ce_by_hand(
        refined_logits / 0.5, labels, 0.2
    )
    assert_close(loss(x, labels), torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_functional_form_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(1)
    s_b, s_m = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = F.cross_entropy(s_b / 0.2, labels, label_smoothing=0.1) + F.cross_entropy(
        s_m / 0.2, labels, label_smoothing=0.1
    )
    assert_close(intra_batch_loss(s_b, s_m, labels), expected)


def test_defaults_follow_the_official_cub_configuration():
    loss = IntraBatchLoss(16, 10)
    assert (loss.temperature, loss.label_smoothing) == (0.2, 0.1)
    assert (loss.backbone_weight, loss.mpn_weight) == (1.0, 1.0)
    assert len(loss.mpn.layers) == 1
    assert loss.mpn.layers[0].attention.num_heads == 2
    assert loss.mpn.knn is None
    assert not loss.neck.bias.requires_grad


def test_gradcheck_tiny_config():
    torch.manual_seed(2)
    loss = IntraBatchLoss(4, 3, num_heads=2, dropout=0.0).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x,), fast_mode=True)


def test_gradient_reaches_embeddings_and_every_trainable_parameter():
    torch.manual_seed(3)
    loss = IntraBatchLoss(8, 4)
    x = torch.randn(12, 8, requires_grad=True)
    loss(x, torch.arange(12) % 4).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    for name, p in loss.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_tiny_training_run_on_separable_data_drives_the_loss_down():
    torch.manual_seed(4)
    num_classes, per_class, dim = 4, 6, 8
    centres = torch.randn(num_classes, 16) * 3
    inputs = centres.repeat_interleave(per_class, 0) + 0.3 * torch.randn(num_classes * per_class, 16)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    backbone = nn.Linear(16, dim)
    loss = IntraBatchLoss(dim, num_classes)
    optimizer = torch.optim.Adam([*backbone.parameters(), *loss.parameters()], lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        value = loss(backbone(inputs), labels)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]
    loss.eval()  # test time: the backbone embedding alone separates the classes
    emb = F.normalize(backbone(inputs), dim=1)
    nearest = (emb @ emb.T - 2 * torch.eye(len(labels))).argmax(dim=1)
    assert float((labels[nearest] == labels).float().mean()) == 1.0


def test_registry_names_and_knn_option():
    assert isinstance(create_loss("intra_batch", num_classes=3, embedding_size=8), IntraBatchLoss)
    loss = create_loss("intrabatch", num_classes=3, embedding_size=8, knn=2)
    assert loss.mpn.knn == 2
    assert loss(torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])).ndim == 0


def test_empty_batch_gives_zero_with_gradient():
    loss = IntraBatchLoss(8, 3)
    x = torch.zeros(0, 8, requires_grad=True)
    out = loss(x, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0 and x.grad is not None


def test_errors():
    loss = IntraBatchLoss(8, 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="one entry per row"):
        loss(torch.randn(4, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="8 features"):
        loss(torch.randn(4, 7), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((4, 8), float("nan")), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss(torch.randn(1, 8), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.randn(4, 8), torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="divisible"):
        IntraBatchLoss(10, 3, num_heads=4)
    with pytest.raises(ValueError, match="label_smoothing"):
        IntraBatchLoss(8, 3, label_smoothing=1.0)
