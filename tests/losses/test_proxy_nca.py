from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch.testing import assert_close

from frugalvision.losses import (
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    create_loss,
    loss_param_groups,
    proxy_nca_loss,
    proxy_nca_plus_plus_loss,
)

C, D, B = 6, 8, 14
LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 0, 5, 4])


def _sq_dist(x: torch.Tensor, p: torch.Tensor) -> list[list[float]]:
    """Squared distances of the normalised vectors, element by element."""
    xs = [v / math.sqrt(sum(t * t for t in v)) for v in (torch.as_tensor(r) for r in x.tolist())]
    ps = [v / math.sqrt(sum(t * t for t in v)) for v in (torch.as_tensor(r) for r in p.tolist())]
    return [[float(((a - b) ** 2).sum()) for b in ps] for a in xs]


@pytest.mark.parametrize("softmax_scale", [1.0, 9.0])
def test_matches_pml_value_and_gradients(softmax_scale, dtype, tol, make_inputs) -> None:
    torch.manual_seed(0)
    ref_loss = pml_losses.ProxyNCALoss(num_classes=C, embedding_size=D, softmax_scale=softmax_scale).to(dtype)
    ours_loss = ProxyNCALoss(C, D, softmax_scale=softmax_scale, exclude_positive=False).to(dtype)
    with torch.no_grad():
        ours_loss.proxies.copy_(ref_loss.proxies)
    ours_x, ref_x = make_inputs(B, D, dtype, scale=2.0)
    ours, ref = ours_loss(ours_x, LABELS), ref_loss(ref_x, LABELS)
    assert_close(ours, ref, **tol)
    ours.backward()
    ref.backward()
    assert_close(ours_x.grad, ref_x.grad, **tol)
    assert_close(ours_loss.proxies.grad, ref_loss.proxies.grad, **tol)


def test_proxynca_paper_form_excludes_positive_float64_loop() -> None:
    x, proxies = torch.randn(B, D, dtype=torch.float64), torch.randn(C, D, dtype=torch.float64)
    d = _sq_dist(x, proxies)
    rows = []
    for i, y in enumerate(LABELS.tolist()):
        denominator = sum(math.exp(-2.0 * d[i][z]) for z in range(C) if z != y)
        rows.append(-math.log(math.exp(-2.0 * d[i][y]) / denominator))
    expected = torch.tensor(sum(rows) / len(rows), dtype=torch.float64)
    assert_close(proxy_nca_loss(x, LABELS, proxies, scale=2.0), expected)


@pytest.mark.parametrize("temperature", [1.0 / 9.0, 0.5])
def test_proxynca_pp_float64_loop(temperature) -> None:
    x, proxies = torch.randn(B, D, dtype=torch.float64), torch.randn(C, D, dtype=torch.float64)
    d = _sq_dist(x, proxies)
    rows = []
    for i, y in enumerate(LABELS.tolist()):
        numerator = math.exp(-d[i][y] / temperature)
        rows.append(-math.log(numerator / sum(math.exp(-d[i][z] / temperature) for z in range(C))))
    expected = torch.tensor(sum(rows) / len(rows), dtype=torch.float64)
    assert_close(proxy_nca_plus_plus_loss(x, LABELS, proxies, temperature=temperature), expected)


def test_proxynca_pp_at_temperature_one_is_plain_softmax() -> None:
    x, proxies = torch.randn(B, D, dtype=torch.float64), torch.randn(C, D, dtype=torch.float64)
    sq = torch.cdist(F.normalize(x, dim=1), F.normalize(proxies, dim=1)) ** 2
    assert_close(proxy_nca_plus_plus_loss(x, LABELS, proxies, temperature=1.0), F.cross_entropy(-sq, LABELS))
    # and at T = 1/9, a normalised softmax with logits 18·cos (the 2 − 2cos shift cancels)
    cos = F.normalize(x, dim=1) @ F.normalize(proxies, dim=1).T
    assert_close(proxy_nca_plus_plus_loss(x, LABELS, proxies), F.cross_entropy(18.0 * cos, LABELS))


def test_gradcheck() -> None:
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda e, q: proxy_nca_loss(e, labels, q, scale=3.0), (x, p))
    assert torch.autograd.gradcheck(lambda e, q: proxy_nca_plus_plus_loss(e, labels, q), (x, p))


@pytest.mark.parametrize("exclude_positive", [True, False])
def test_stable_at_low_temperature_and_large_norms(exclude_positive) -> None:
    x = (torch.randn(B, D) * 1e4).requires_grad_(True)
    p = (torch.randn(C, D) * 1e3).requires_grad_(True)
    loss = proxy_nca_loss(x, LABELS, p, scale=1e3, exclude_positive=exclude_positive)  # logits down to −4000
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(p.grad).all()


def test_registry_module_equals_function_and_param_groups() -> None:
    for name in ("proxynca++", "proxy_nca_pp", "ProxyNCA++"):
        assert isinstance(create_loss(name, num_classes=C, embedding_size=D), ProxyNCAPlusPlusLoss)
    for name in ("proxynca", "proxy_nca"):
        assert isinstance(create_loss(name, num_classes=C, embedding_size=D), ProxyNCALoss)
    x = torch.randn(B, D)
    pp = ProxyNCAPlusPlusLoss(C, D)
    assert_close(pp(x, LABELS), proxy_nca_plus_plus_loss(x, LABELS, pp.proxies, temperature=1 / 9))
    plain = ProxyNCALoss(C, D, softmax_scale=2.0)
    assert_close(plain(x, LABELS), proxy_nca_loss(x, LABELS, plain.proxies, scale=2.0))
    (group,) = loss_param_groups(pp, base_lr=1e-4)
    assert group["params"] == [pp.proxies] and group["lr"] == pytest.approx(1e-2)  # fast-moving proxies, x100
    (group,) = loss_param_groups(plain, base_lr=1e-4)
    assert group["lr"] == pytest.approx(1e-4)


def test_training_step_moves_proxies_toward_their_class() -> None:
    torch.manual_seed(0)
    loss_fn = ProxyNCAPlusPlusLoss(2, 4, lr_multiplier=100.0)
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    labels = torch.tensor([0, 1])
    before = float(loss_fn(x, labels).detach())
    optimizer = torch.optim.SGD(loss_param_groups(loss_fn, base_lr=1e-3), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn(x, labels).backward()
        optimizer.step()
    assert float(loss_fn(x, labels).detach()) < before


def test_errors() -> None:
    p = torch.randn(C, D)
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        proxy_nca_loss(x, torch.tensor([0, 1, 6, 2]), p)
    with pytest.raises(ValueError, match="at least 2 proxies"):
        proxy_nca_loss(x, torch.zeros(4, dtype=torch.long), p[:1])
    with pytest.raises(ValueError, match="temperature"):
        ProxyNCAPlusPlusLoss(C, D, temperature=0.0)
    with pytest.raises(ValueError, match="lr_multiplier"):
        ProxyNCAPlusPlusLoss(C, D, lr_multiplier=0.0)
    with pytest.raises(ValueError, match="one entry per row"):
        proxy_nca_plus_plus_loss(x, torch.tensor([0, 1]), p)
