"""The module form of a loss function (``FunctionalLoss``): one home for each option's default and check."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.testing import assert_close

from frugalvision.losses import (
    ArcFaceLoss,
    AsymmetricLoss,
    CosFaceLoss,
    FocalLoss,
    HyperbolicPairwiseCELoss,
    IntraBatchLoss,
    ProxyNCALoss,
    ProxyNCAPlusPlusLoss,
    QuadrupletLoss,
    SphereFaceLoss,
    TripletMarginLoss,
    arcface_loss,
    asymmetric_loss,
    cosface_loss,
    focal_loss,
    hyperbolic_pairwise_ce_loss,
    intra_batch_loss,
    proxy_nca_plus_plus_loss,
    quadruplet_loss,
    sphereface_loss,
    triplet_margin_loss,
)
from frugalvision.losses._base import (
    FunctionalLoss,
    check_paired_batches,
    checked_options,
    flag,
    in_range,
    non_negative,
    one_of,
)

BUILT = [
    (TripletMarginLoss, triplet_margin_loss),
    (QuadrupletLoss, quadruplet_loss),
    (FocalLoss, focal_loss),
    (AsymmetricLoss, asymmetric_loss),
    (HyperbolicPairwiseCELoss, hyperbolic_pairwise_ce_loss),
]


def _scaled_sum(
    x: torch.Tensor, *, scale: float = 1.0, mode: str = "sum", square: bool = False
) -> torch.Tensor:
    y = x.square() if square else x
    return scale * (y.sum() if mode == "sum" else y.mean())


checked_scaled_sum = checked_options(scale=non_negative, mode=one_of(("sum", "mean")), square=flag)(
    _scaled_sum
)


class ScaledSum(FunctionalLoss):
    function = staticmethod(checked_scaled_sum)
    options = ("scale", "mode", "square")


def test_checked_options_checks_and_normalises_what_the_caller_passes():
    x = torch.tensor([1.0, 2.0])
    assert_close(checked_scaled_sum(x, scale=2, square=1), torch.tensor(10.0))
    with pytest.raises(ValueError, match="scale must be >= 0, got -1"):
        checked_scaled_sum(x, scale=-1)
    with pytest.raises(ValueError, match="mode must be one of 'sum', 'mean'; got 'max'"):
        checked_scaled_sum(x, mode="max")
    assert checked_scaled_sum.option_checks.keys() == {"scale", "mode", "square"}
    assert inspect.signature(checked_scaled_sum) == inspect.signature(_scaled_sum)


def test_checked_options_refuses_a_name_that_is_not_a_keyword_option():
    with pytest.raises(TypeError, match=r"_scaled_sum has no keyword-only option\(s\) \['x'\]"):
        checked_options(x=flag)(_scaled_sum)


def test_the_constructor_is_built_from_the_function():
    params = inspect.signature(ScaledSum).parameters
    assert list(params) == ["scale", "mode", "square"]
    assert [p.default for p in params.values()] == [1.0, "sum", False]
    loss = ScaledSum(3, square=1)  # positional and keyword, checked and normalised as the function does
    assert (loss.scale, loss.mode, loss.square) == (3.0, "sum", True)
    assert type(loss.scale) is float and type(loss.square) is bool
    assert repr(loss) == "ScaledSum(scale=3.0, mode='sum', square=True)"
    assert_close(loss(torch.tensor([1.0, 2.0])), torch.tensor(15.0))
    with pytest.raises(ValueError, match="scale must be >= 0"):
        ScaledSum(scale=-0.5)
    with pytest.raises(TypeError, match=r"ScaledSum: .*'scal'.*; it takes scale, mode, square"):
        ScaledSum(scal=2.0)
    with pytest.raises(TypeError, match="ScaledSum: too many positional arguments"):
        ScaledSum(1.0, "sum", False, 4)


def test_a_subclass_with_its_own_constructor_keeps_it():
    class Own(FunctionalLoss):
        function = staticmethod(checked_scaled_sum)
        options = ("scale",)

        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

    assert Own.option_signature is None
    assert list(inspect.signature(Own).parameters) == ["scale"]
    assert Own(2.0).scale == 2.0
    with pytest.raises(TypeError, match="Own: too many positional arguments; it takes no arguments"):
        FunctionalLoss.__init__(Own(1.0), 3.0)


def test_options_must_be_parameters_of_the_function():
    with pytest.raises(TypeError, match=r"Bad.options \['scal'\] are not parameters of _scaled_sum"):

        class Bad(FunctionalLoss):
            function = staticmethod(_scaled_sum)
            options = ("scal",)


@pytest.mark.parametrize(("cls", "function"), BUILT, ids=lambda x: getattr(x, "__name__", ""))
def test_module_and_function_share_defaults(cls, function):
    module = inspect.signature(cls).parameters
    keywords = inspect.signature(function).parameters
    assert list(module) == list(cls.options)
    for name, param in module.items():
        assert param.default == keywords[name].default, name
        assert getattr(cls(), name) == keywords[name].default, name


@pytest.mark.parametrize(
    ("cls", "function", "bad", "inputs"),
    [
        (TripletMarginLoss, triplet_margin_loss, {"margin": -1.0}, "embedding"),
        (TripletMarginLoss, triplet_margin_loss, {"mining": "easy"}, "embedding"),
        (QuadrupletLoss, quadruplet_loss, {"margin2": -0.1}, "embedding"),
        (QuadrupletLoss, quadruplet_loss, {"mining": "semihard"}, "embedding"),
        (FocalLoss, focal_loss, {"alpha": 1.5}, "multilabel"),
        (FocalLoss, focal_loss, {"reduction": "nonzero_mean"}, "multilabel"),
        (AsymmetricLoss, asymmetric_loss, {"clip": 1.0}, "multilabel"),
        (AsymmetricLoss, asymmetric_loss, {"gamma_neg": -1.0}, "multilabel"),
        (HyperbolicPairwiseCELoss, hyperbolic_pairwise_ce_loss, {"c": 0.0}, "embedding"),
    ],
)
def test_a_bad_option_fails_alike_at_construction_and_at_call(cls, function, bad, inputs):
    if inputs == "embedding":
        args = (torch.randn(6, 4) * 0.1, torch.tensor([0, 0, 1, 1, 2, 2]))
    else:
        args = (torch.randn(2, 3), torch.tensor([[1, 0, -1], [0, 1, 1]]))
    with pytest.raises(ValueError) as at_call:
        function(*args, **bad)
    with pytest.raises(ValueError) as at_construction:
        cls(**bad)
    assert str(at_construction.value) == str(at_call.value)


CLASS_MATRIX = [
    (ArcFaceLoss, arcface_loss, 1.0),
    (CosFaceLoss, cosface_loss, 1.0),
    (SphereFaceLoss, sphereface_loss, 1.0),
    (ProxyNCAPlusPlusLoss, proxy_nca_plus_plus_loss, 100.0),
]


@pytest.mark.parametrize(
    ("cls", "function", "lr_multiplier"), CLASS_MATRIX, ids=lambda x: getattr(x, "__name__", "")
)
def test_class_matrix_losses_take_sizes_options_and_lr_multiplier(cls, function, lr_multiplier):
    params = inspect.signature(cls).parameters
    assert list(params) == ["num_classes", "embedding_size", *cls.options, "lr_multiplier"]
    assert params["lr_multiplier"].default == lr_multiplier
    keywords = inspect.signature(function).parameters
    loss = cls(5, 8)
    for name in cls.options:
        assert getattr(loss, name) == keywords[name].default, name
    assert (loss.num_classes, loss.embedding_size, loss.lr_multiplier) == (5, 8, lr_multiplier)
    assert tuple(loss.matrix.shape) == (5, 8) and loss.matrix.requires_grad
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        cls(0, 8)
    with pytest.raises(ValueError, match="embedding_size must be a positive int, got True"):
        cls(5, True)
    with pytest.raises(ValueError, match="lr_multiplier must be > 0, got 0"):
        cls(5, 8, lr_multiplier=0)


@pytest.mark.parametrize(
    ("cls", "function", "bad"),
    [
        (ArcFaceLoss, arcface_loss, {"margin": 3.5}),
        (ArcFaceLoss, arcface_loss, {"scale": 0.0}),
        (CosFaceLoss, cosface_loss, {"scale": -1.0}),
        (SphereFaceLoss, sphereface_loss, {"margin": 2.5}),
        (SphereFaceLoss, sphereface_loss, {"lambda_": -1.0}),
        (ProxyNCAPlusPlusLoss, proxy_nca_plus_plus_loss, {"temperature": 0.0}),
    ],
)
def test_a_bad_class_matrix_option_fails_alike_at_construction_and_at_call(cls, function, bad):
    embeddings, labels, matrix = torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), torch.randn(3, 8)
    with pytest.raises(ValueError) as at_call:
        function(embeddings, labels, matrix, **bad)
    with pytest.raises(ValueError) as at_construction:
        cls(3, 8, **bad)
    assert str(at_construction.value) == str(at_call.value)


def test_a_class_with_its_own_constructor_keeps_its_signature():
    params = inspect.signature(ProxyNCALoss).parameters
    assert list(params) == [
        "num_classes",
        "embedding_size",
        "softmax_scale",
        "exclude_positive",
        "lr_multiplier",
    ]
    loss = ProxyNCALoss(3, 4, softmax_scale=2, lr_multiplier=10)
    assert (loss.num_classes, loss.embedding_size, loss.softmax_scale, loss.lr_multiplier) == (
        3,
        4,
        2.0,
        10.0,
    )
    assert tuple(loss.proxies.shape) == (3, 4)


def test_in_range_names_the_interval():
    assert in_range(0, 1)(0, "x") == 0.0 and type(in_range(0, 1)(0, "x")) is float
    with pytest.raises(ValueError, match=r"^clip \(m\) must lie in \[0, 1\), got 1$"):
        in_range(0, 1, what=" (m)")(1, "clip")
    with pytest.raises(ValueError, match=r"^eps must lie in \(0, 1\), got 0$"):
        in_range(0, 1, include_low=False)(0, "eps")
    assert in_range(0, 1, include_high=True)(1, "p") == 1.0


def test_check_paired_batches():
    a, b = check_paired_batches(torch.ones(2, 3), torch.zeros(2, 3), ("a", "b"), "(B, D)")
    assert a.shape == b.shape == (2, 3)
    with pytest.raises(
        ValueError, match=r"^a and b rows must have the same shape \(B, D\) \(why\), got \(2, 3\)"
    ):
        check_paired_batches(
            torch.ones(2, 3), torch.ones(3, 3), ("a", "b"), "(B, D)", what=" rows", why=" (why)"
        )
    with pytest.raises(ValueError, match="b contains 1 NaN"):
        check_paired_batches(torch.ones(1, 2), torch.tensor([[0.0, float("nan")]]), ("a", "b"), "(B, D)")


def test_intra_batch_loss_module_is_built_from_its_function():
    params = inspect.signature(IntraBatchLoss).parameters
    assert list(params) == [
        "embedding_size",
        "num_classes",
        "num_layers",
        "num_heads",
        "dropout",
        *IntraBatchLoss.options,
        "knn",
    ]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(params)[2:])
    keywords = inspect.signature(intra_batch_loss).parameters
    loss = IntraBatchLoss(8, 3)
    for name in IntraBatchLoss.options:
        assert getattr(loss, name) == keywords[name].default, name
    with pytest.raises(TypeError, match="IntraBatchLoss: too many positional arguments"):
        IntraBatchLoss(8, 3, 2)
    with pytest.raises(ValueError, match="num_classes must be > 0, got 0"):
        IntraBatchLoss(8, 0)
    with pytest.raises(ValueError) as at_construction:
        IntraBatchLoss(8, 3, temperature=0.0)
    with pytest.raises(ValueError) as at_call:
        intra_batch_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), temperature=0.0)
    assert str(at_construction.value) == str(at_call.value) == "temperature must be > 0, got 0.0"
