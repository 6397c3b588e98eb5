from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch.testing import assert_close

from frugalvision.losses import (
    ArcFaceLoss,
    CosFaceLoss,
    SphereFaceLoss,
    arcface_loss,
    cosface_loss,
    create_loss,
    loss_param_groups,
    sphereface_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_metric_learning.*")

C, D, B = 5, 8, 12
LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 0])

# (ours, pml, ours kwargs, pml kwargs): equivalent settings. pml's ArcFace margin is in degrees.
CASES = {
    "arcface": (ArcFaceLoss, pml_losses.ArcFaceLoss, {"margin": math.radians(28.6)}, {}),
    "arcface_wide_margin": (
        ArcFaceLoss,
        pml_losses.ArcFaceLoss,
        {"margin": 1.2, "scale": 30.0},
        {"margin": math.degrees(1.2), "scale": 30.0},
    ),
    "cosface": (CosFaceLoss, pml_losses.CosFaceLoss, {}, {}),
    "cosface_small_scale": (
        CosFaceLoss,
        pml_losses.CosFaceLoss,
        {"scale": 10.0, "margin": 0.2},
        {"scale": 10.0, "margin": 0.2},
    ),
    "sphereface_m1": (SphereFaceLoss, pml_losses.SphereFaceLoss, {"margin": 1}, {"margin": 1}),
    "sphereface_m2": (SphereFaceLoss, pml_losses.SphereFaceLoss, {"margin": 2}, {"margin": 2}),
    "sphereface_m3": (SphereFaceLoss, pml_losses.SphereFaceLoss, {"margin": 3}, {"margin": 3}),
    "sphereface_m4": (SphereFaceLoss, pml_losses.SphereFaceLoss, {"margin": 4}, {"margin": 4}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_pml_value_and_gradients(case, dtype, tol, make_inputs) -> None:
    ours_cls, pml_cls, ours_kwargs, pml_kwargs = CASES[case]
    torch.manual_seed(0)
    ref_loss = pml_cls(num_classes=C, embedding_size=D, **pml_kwargs).to(dtype)
    ours_loss = ours_cls(num_classes=C, embedding_size=D, **ours_kwargs).to(dtype)
    with torch.no_grad():
        ours_loss.weight.copy_(ref_loss.W.T)  # pml stores W as (embedding_size, num_classes)
    ours_x, ref_x = make_inputs(B, D, dtype, scale=3.0)
    ours, ref = ours_loss(ours_x, LABELS), ref_loss(ref_x, LABELS)
    assert_close(ours, ref, **tol)
    ours.backward()
    ref.backward()
    assert_close(ours_x.grad, ref_x.grad, **tol)
    assert_close(ours_loss.weight.grad, ref_loss.W.grad.T, **tol)


def test_arcface_fallback_branch_matches_pml() -> None:
    """Targets at θ > π − m take cos θ − m sin m (pml and insightface), not cos(θ + m)."""
    weight = torch.randn(C, D, dtype=torch.float64)
    x = -weight[LABELS] + 0.05 * torch.randn(B, D, dtype=torch.float64)  # θ ≈ π for every target
    ref_loss = pml_losses.ArcFaceLoss(C, D).to(torch.float64)
    ref_loss.W.data = weight.T.clone()
    cos_t = F.cosine_similarity(x, weight[LABELS])
    assert bool((torch.acos(cos_t) > math.pi - math.radians(28.6)).all())
    assert_close(arcface_loss(x, LABELS, weight, margin=math.radians(28.6)), ref_loss(x, LABELS))


def test_arcface_hand_computation_and_easy_margin() -> None:
    weight = torch.randn(C, D, dtype=torch.float64)
    x = torch.randn(B, D, dtype=torch.float64)
    m, s = 0.5, 16.0
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    for easy in (False, True):
        rows = []
        for i, y in enumerate(LABELS.tolist()):
            theta = math.acos(float(cos[i, y]))
            if easy:
                target = math.cos(theta + m) if cos[i, y] > 0 else float(cos[i, y])
            else:
                target = math.cos(theta + m) if theta <= math.pi - m else float(cos[i, y]) - m * math.sin(m)
            logits = cos[i].clone()
            logits[y] = target
            rows.append(-torch.log_softmax(s * logits, 0)[y])
        expected = torch.stack(rows).mean()
        assert_close(arcface_loss(x, LABELS, weight, scale=s, margin=m, easy_margin=easy), expected)


def test_sphereface_hand_computation_with_lambda() -> None:
    weight = torch.randn(C, D, dtype=torch.float64)
    x = torch.randn(B, D, dtype=torch.float64) * 2
    m, lam = 4, 5.0
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    rows = []
    for i, y in enumerate(LABELS.tolist()):
        theta = math.acos(float(cos[i, y]))
        k = math.floor(theta * m / math.pi)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        logits = cos[i].clone()
        logits[y] = (lam * cos[i, y] + psi) / (1 + lam)
        rows.append(-torch.log_softmax(x[i].norm() * logits, 0)[y])
    assert_close(sphereface_loss(x, LABELS, weight, margin=m, lambda_=lam), torch.stack(rows).mean())


def test_cosface_hand_computation() -> None:
    weight, x = torch.randn(C, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    cos = F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    logits = 64.0 * (cos - 0.35 * F.one_hot(LABELS, C))
    assert_close(cosface_loss(x, LABELS, weight), F.cross_entropy(logits, LABELS))


@pytest.mark.parametrize(
    "fn",
    [cosface_loss, arcface_loss, sphereface_loss, lambda *a: arcface_loss(*a, easy_margin=True)],
    ids=["cosface", "arcface", "sphereface", "arcface_easy"],
)
def test_gradcheck(fn) -> None:
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda e, ww: fn(e, labels, ww), (x, w))


@pytest.mark.parametrize(
    "fn", [cosface_loss, arcface_loss, sphereface_loss], ids=["cosface", "arcface", "sphereface"]
)
def test_stable_at_extremes(fn) -> None:
    weight = torch.randn(C, D) * 100
    x = torch.randn(B, D) * 1e4  # SphereFace logits ~ ‖x‖ = 1e4
    # cos θ = 1 up to rounding: acos / sqrt(1 − cos²) must not produce NaN gradients
    x[0] = weight[LABELS[0]] * 3
    x[1] = -weight[LABELS[1]]  # θ = π
    x.requires_grad_(True)
    weight.requires_grad_(True)
    loss = fn(x, LABELS, weight)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("arcface", ArcFaceLoss),
        ("cosface", CosFaceLoss),
        ("sphereface", SphereFaceLoss),
        ("a_softmax", SphereFaceLoss),
    ],
)
def test_registry_module_equals_function_and_param_groups(name, cls) -> None:
    loss = create_loss(name, num_classes=C, embedding_size=D, lr_multiplier=10.0)
    assert isinstance(loss, cls)
    assert loss.weight.shape == (C, D)
    x = torch.randn(B, D)
    fn = {ArcFaceLoss: arcface_loss, CosFaceLoss: cosface_loss, SphereFaceLoss: sphereface_loss}[cls]
    assert_close(loss(x, LABELS), fn(x, LABELS, loss.weight))
    (group,) = loss_param_groups(loss, base_lr=1e-3)
    assert group["lr"] == pytest.approx(1e-2)
    assert group["params"] == [loss.weight]
    assert loss.logits(x).shape == (B, C)


def test_empty_batch_is_zero_with_gradient() -> None:
    loss_fn = ArcFaceLoss(C, D)
    x = torch.zeros(0, D, requires_grad=True)
    loss = loss_fn(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and loss_fn.weight.grad is not None


def test_errors() -> None:
    w = torch.randn(C, D)
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        arcface_loss(x, torch.tensor([0, 1, 5, 2]), w)
    with pytest.raises(ValueError, match="8 features"):
        cosface_loss(torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), w)
    with pytest.raises(ValueError, match="radians"):
        ArcFaceLoss(C, D, margin=28.6)
    with pytest.raises(ValueError, match="integer >= 1"):
        SphereFaceLoss(C, D, margin=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        CosFaceLoss(0, D)
    with pytest.raises(ValueError, match="NaN"):
        sphereface_loss(torch.full((4, D), float("inf")), torch.tensor([0, 1, 2, 3]), w)
    with pytest.raises(TypeError, match="integer"):
        cosface_loss(x, torch.tensor([0.0, 1.0, 2.0, 3.0]), w)
    with pytest.raises(ValueError, match="scale"):
        cosface_loss(x, torch.tensor([0, 1, 2, 3]), w, scale=0.0)
