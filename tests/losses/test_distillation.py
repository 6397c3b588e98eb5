"""Distillation loss (InfoNCE + MSE between student and teacher embeddings): float64 sums written from the paper's
equations, gradients, the student == teacher case, the learnable temperature and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.testing import assert_close

from frugalvision.losses import DistillationLoss, distillation_loss


def _x(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]


def _by_hand(
    s: torch.Tensor, t: torch.Tensor, tau: float, symmetric: bool, w_mse: float = 1.0, w_nce: float = 1.0
) -> tuple[float, float, float]:
    """(total, InfoNCE, MSE) in Python floats: cross-entropies of cos/tau with the diagonal as positives."""
    ss, ts = _unit(s.tolist()), _unit(t.tolist())
    b = len(ss)
    cos = [[sum(x * y for x, y in zip(si, tj, strict=True)) for tj in ts] for si in ss]
    rows = [-(cos[i][i] / tau) + math.log(sum(math.exp(cos[i][j] / tau) for j in range(b))) for i in range(b)]
    cols = [-(cos[i][i] / tau) + math.log(sum(math.exp(cos[j][i] / tau) for j in range(b))) for i in range(b)]
    nce = sum(rows) / b if not symmetric else 0.5 * (sum(rows) / b + sum(cols) / b)
    mse = (
        sum(sum((x - y) ** 2 for x, y in zip(si, ti, strict=True)) for si, ti in zip(ss, ts, strict=True)) / b
    )
    return w_nce * nce + w_mse * mse, nce, mse


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("tau", "w_mse", "w_nce"), [(0.07, 1.0, 1.0), (0.5, 0.3, 2.0), (1.0, 0.0, 1.0)])
def test_matches_hand_computation(symmetric: bool, tau: float, w_mse: float, w_nce: float) -> None:
    s, t = _x(5, 7, 0) * 3.0, _x(5, 7, 1)
    out = distillation_loss(
        s, t, temperature=tau, mse_weight=w_mse, contrastive_weight=w_nce, symmetric=symmetric
    )
    total, nce, mse = _by_hand(s, t, tau, symmetric, w_mse, w_nce)
    assert set(out) == {"loss", "loss/infonce", "loss/mse"}
    for key, value in (("loss", total), ("loss/infonce", nce), ("loss/mse", mse)):
        assert_close(out[key], torch.tensor(value, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_module_matches_function_and_mse_is_two_minus_two_cosine() -> None:
    s, t = _x(6, 4, 2), _x(6, 4, 3)
    module = DistillationLoss(temperature=0.2, mse_weight=0.5, symmetric=False)
    out = module(s, t)
    ref = distillation_loss(s, t, temperature=0.2, mse_weight=0.5, symmetric=False)
    for key in ref:
        assert_close(out[key], ref[key], rtol=1e-7, atol=1e-7)  # the module keeps tau as a float32 buffer
    cos = torch.nn.functional.cosine_similarity(s, t, dim=1)
    assert_close(out["loss/mse"], (2 - 2 * cos).mean())


def test_scale_of_the_embeddings_does_not_matter() -> None:
    s, t = _x(4, 6, 4), _x(4, 6, 5)
    scales = torch.tensor([[0.1], [2.0], [7.0], [1.0]], dtype=torch.float64)
    a, b = distillation_loss(s, t), distillation_loss(s * scales, t / scales)
    assert_close(a["loss"], b["loss"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_student_teacher_and_temperature(symmetric: bool) -> None:
    s = _x(4, 5, 6).requires_grad_(True)
    t = _x(4, 5, 7).requires_grad_(True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def total(s_: torch.Tensor, t_: torch.Tensor, tau_: torch.Tensor) -> torch.Tensor:
        return distillation_loss(s_, t_, temperature=tau_, mse_weight=0.7, symmetric=symmetric)["loss"]

    assert gradcheck(total, (s, t, tau), eps=1e-6, atol=1e-8)


def test_student_equal_to_teacher() -> None:
    t = _x(6, 8, 8)
    out = distillation_loss(t.clone(), t, temperature=0.1)
    assert float(out["loss/mse"]) == pytest.approx(0.0, abs=1e-15)
    _, nce, _ = _by_hand(t, t, 0.1, symmetric=True)
    assert_close(out["loss/infonce"], torch.tensor(nce, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def _simplex(b: int) -> torch.Tensor:
    """``b`` unit vectors in ``R^b`` with pairwise cosine ``-1/(b-1)`` (a regular simplex)."""
    e = torch.eye(b, dtype=torch.float64)
    return torch.nn.functional.normalize(e - e.mean(dim=0), dim=1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_student_equal_to_a_simplex_teacher_is_the_minimum(symmetric: bool) -> None:
    tau, b = 0.1, 5
    t = _simplex(b)
    best = distillation_loss(t, t, temperature=tau, symmetric=symmetric)
    # closed form: every row sees one positive at cos 1 and b-1 negatives at cos -1/(b-1)
    expected = math.log(1 + (b - 1) * math.exp((-1 / (b - 1) - 1) / tau))
    assert_close(best["loss/infonce"], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(9)
    for _ in range(20):  # any other student on the sphere (small or large move) does worse on both terms
        s = t + 0.05 * torch.randn(b, b, dtype=torch.float64, generator=g)
        other = distillation_loss(s, t, temperature=tau, symmetric=symmetric)
        assert other["loss/infonce"] > best["loss/infonce"] and other["loss/mse"] > 0


def test_student_equal_to_teacher_is_not_the_infonce_minimum_in_general() -> None:
    # Two orthogonal teacher rows: turning each student row 45 degrees away from the other teacher row lowers the
    # InfoNCE from log(1 + e^{-1/tau}) to log(1 + e^{-sqrt(2)/tau}); only the MSE term pins the student to t.
    tau = 0.5
    t = torch.eye(2, dtype=torch.float64)
    c = math.sqrt(0.5)
    s = torch.tensor([[c, -c], [-c, c]], dtype=torch.float64)
    at_t = distillation_loss(t, t, temperature=tau, symmetric=False)["loss/infonce"]
    turned = distillation_loss(s, t, temperature=tau, symmetric=False)["loss/infonce"]
    assert_close(at_t, torch.tensor(math.log(1 + math.exp(-1 / tau)), dtype=torch.float64))
    assert_close(turned, torch.tensor(math.log(1 + math.exp(-math.sqrt(2) / tau)), dtype=torch.float64))
    assert turned < at_t


def test_learnable_temperature() -> None:
    loss = DistillationLoss(temperature=0.07, learnable_temperature=True)
    assert [n for n, _ in loss.named_parameters()] == ["log_logit_scale"]
    assert float(loss.temperature.detach()) == pytest.approx(0.07)
    s = torch.randn(8, 16, requires_grad=True)
    out = loss(s, torch.randn(8, 16))
    out["loss"].backward()
    assert loss.log_logit_scale.grad is not None and s.grad is not None
    with torch.no_grad():
        loss.log_logit_scale.fill_(10.0)  # 1/tau = e^10 is clamped at 100
    assert float(loss.temperature.detach()) == pytest.approx(0.01)
    fixed = DistillationLoss(temperature=0.07)
    assert list(fixed.parameters()) == [] and "log_logit_scale" in fixed.state_dict()
    assert "temperature=0.07" in repr(fixed)


def test_lower_precision_student_and_empty_batch() -> None:
    s, t = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, 8)
    out = DistillationLoss()(s, t)
    assert out["loss"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])
    empty = torch.zeros(0, 8, requires_grad=True)
    zero = distillation_loss(empty, torch.zeros(0, 8))["loss"]
    zero.backward()
    assert float(zero.detach()) == 0.0 and empty.grad is not None


def test_bad_inputs_raise_clear_errors() -> None:
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"same shape \(B, D\).*\(4, 8\) and \(3, 8\)"):
        distillation_loss(s, t[:3])
    with pytest.raises(ValueError, match=r"teacher's dimension.*\(4, 8\) and \(4, 6\)"):
        distillation_loss(s, t[:, :6])
    with pytest.raises(ValueError, match=r"student must be 2-D \(B, D\)"):
        distillation_loss(s[0], t)
    with pytest.raises(TypeError, match=r"teacher must be a torch\.Tensor"):
        distillation_loss(s, t.numpy())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="student must be a floating-point tensor"):
        distillation_loss(s.long(), t)
    with pytest.raises(ValueError, match="teacher contains 1 NaN"):
        distillation_loss(s, torch.where(torch.arange(32).reshape(4, 8) == 5, math.nan, t))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="mse_weight must be >= 0"):
        distillation_loss(s, t, mse_weight=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        DistillationLoss(mse_weight=0.0, contrastive_weight=0.0)
    with pytest.raises(ValueError, match=r"temperature must be >= 0.01"):
        DistillationLoss(temperature=0.001)
