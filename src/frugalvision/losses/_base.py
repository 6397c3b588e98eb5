"""Small shared pieces of the loss modules: the module form of a loss function, the checks of its options, and the
per-class matrix (class weights or proxies) some losses own."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import nn

from frugalvision._checks import (
    check_choice,
    check_class_labels,
    check_embedding_batch,
    check_ndim,
    check_positive,
    check_tensor,
)

__all__ = [
    "ClassMatrixLoss",
    "FunctionalLoss",
    "OptionCheck",
    "check_class_matrix_inputs",
    "check_embeddings",
    "check_paired_batches",
    "checked_options",
    "flag",
    "in_range",
    "non_negative",
    "one_of",
    "parameter",
    "positive",
    "positive_int",
]

#: ``check(value, name) -> value``: raises ``ValueError``/``TypeError`` naming ``name``, returns the value to use.
OptionCheck = Callable[[Any, str], Any]
_F = TypeVar("_F", bound=Callable[..., Any])


#: Losses validate their ``(B, D)`` input with the shared helper (one-pass finiteness test).
check_embeddings = check_embedding_batch


def positive(value: float, name: str) -> float:
    """An option that must be ``> 0``, as a float."""
    check_positive(value, name)
    return float(value)


def non_negative(value: float, name: str) -> float:
    """An option that must be ``>= 0``, as a float."""
    check_positive(value, name, strict=False)
    return float(value)


def flag(value: object, name: str) -> bool:
    """A switch, as a bool."""
    return bool(value)


def in_range(
    low: float, high: float, *, include_low: bool = True, include_high: bool = False, what: str = ""
) -> OptionCheck:
    """An option in an interval, as a float: ``in_range(0, 1)`` is ``[0, 1)``; ``what`` follows the name in the
    message (``"clip (the probability margin m) must lie in [0, 1), got 1"``)."""
    interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"

    def check(value: float, name: str) -> float:
        above = value >= low if include_low else value > low
        below = value <= high if include_high else value < high
        if not (above and below):
            raise ValueError(f"{name}{what} must lie in {interval}, got {value}")
        return float(value)

    return check


def one_of(choices: Sequence[str]) -> OptionCheck:
    """An option that must be one of ``choices``."""

    def check(value: str, name: str) -> str:
        return check_choice(value, choices, name)

    return check


def checked_options(**checks: OptionCheck) -> Callable[[_F], _F]:
    """Decorator giving a loss function's keyword options their checks, in one place for both forms of the loss.

    Each keyword ``name=check`` runs ``check(value, name)`` on the option ``name`` when the caller passes it (a
    default is valid by construction) and calls the function with the value it returns (e.g. ``float(margin)``).
    The checks are kept on the function as ``option_checks``: the module form (:class:`FunctionalLoss`) runs the
    same ones when it is built, so a bad option fails at construction, with the same message::

        @checked_options(margin=non_negative, mining=one_of(MINING_MODES))
        def triplet_margin_loss(embeddings, labels, *, margin=0.2, mining="all"): ...
    """

    def decorate(function: _F) -> _F:
        keyword_only = {
            p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY
        }
        unknown = sorted(set(checks) - keyword_only)
        if unknown:
            raise TypeError(f"{function.__name__} has no keyword-only option(s) {unknown} to check")

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            for name, value in kwargs.items():
                if name in checks:
                    kwargs[name] = checks[name](value, name)
            return function(*args, **kwargs)

        checked.option_checks = dict(checks)  # type: ignore[attr-defined]
        return cast(_F, checked)

    return decorate


def check_paired_batches(
    first: object, second: object, names: tuple[str, str], shape: str, *, what: str = "", why: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two finite 2-D batches whose rows pair up and return them; the message of a shape mismatch reads
    ``"{first} and {second}{what} must have the same shape {shape}{why}, got ..."``."""
    first = check_embeddings(first, names[0])
    second = check_embeddings(second, names[1])
    if second.shape != first.shape:
        raise ValueError(
            f"{names[0]} and {names[1]}{what} must have the same shape {shape}{why}, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    return first, second


def check_class_matrix_inputs(
    embeddings: object, labels: object, matrix: object, matrix_name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``embeddings (B, D)``, ``labels (B,)`` in ``[0, C)`` and a ``(C, D)`` class matrix; return them."""
    matrix = check_tensor(matrix, matrix_name)
    check_ndim(matrix, 2, matrix_name, "(num_classes, embedding_size)")
    embeddings = check_embeddings(embeddings, "embeddings", dim=matrix.shape[1])
    labels = check_class_labels(labels, embeddings.shape[0], "labels", num_classes=matrix.shape[0])
    return embeddings, labels, matrix


def positive_int(value: object, name: str) -> int:
    """An option that must be an ``int >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def parameter(
    name: str, annotation: str, default: Any = inspect.Parameter.empty, *, keyword_only: bool = False
) -> inspect.Parameter:
    """A constructor parameter of a module itself (:attr:`FunctionalLoss.leading` / ``trailing``)."""
    kind = inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


class FunctionalLoss(nn.Module):
    """The module form of a loss function, as pml and ``torch.nn`` pair them: the module holds the options.

    A subclass names its function and the attributes passed to it as keywords; ``forward`` is then
    ``function(*inputs, *self.bound_inputs(), **options, **keywords)`` and ``repr`` lists the options, so the
    call and the printout cannot drift from each other::

        class TripletMarginLoss(FunctionalLoss):
            function = staticmethod(triplet_margin_loss)
            options = ("margin", "mining", "distance", "normalize", "swap", "smooth", "reduction")

    A subclass that defines no ``__init__`` of its own is built from the function's signature: its constructor
    takes the module's own :attr:`leading` parameters, the options in that order with the function's defaults and
    annotations, then the module's :attr:`trailing` parameters (``inspect.signature`` shows them all); it runs the
    module's :attr:`own_checks` and the function's option checks (:func:`checked_options`), so the function and
    the module cannot drift apart either. :meth:`setup` then builds what the module derives from them (buffers,
    parameters).

    Attributes:
        function: the loss function (a ``staticmethod``).
        options: attribute names passed to :attr:`function` as keywords, in ``repr`` order.
        shown: attribute names only ``repr`` lists (after the options).
        leading, trailing: constructor parameters of the module itself, before and after the options.
        own_checks: checks of those parameters (as :func:`checked_options` takes them).
    """

    function: ClassVar[Callable[..., Any]]
    options: ClassVar[tuple[str, ...]] = ()
    shown: ClassVar[tuple[str, ...]] = ()
    leading: ClassVar[tuple[inspect.Parameter, ...]] = ()
    trailing: ClassVar[tuple[inspect.Parameter, ...]] = ()
    own_checks: ClassVar[dict[str, OptionCheck]] = {}
    #: The constructor's signature when it is built from :attr:`function` (``None``: the subclass has its own).
    option_signature: ClassVar[inspect.Signature | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if any("__init__" in c.__dict__ for c in cls.__mro__[: cls.__mro__.index(FunctionalLoss)]):
            cls.option_signature = None
            cls.__signature__ = None  # type: ignore[attr-defined]  # inspect reads the class's own __init__
            return
        if "function" not in cls.__dict__:
            return
        parameters = inspect.signature(cls.function).parameters
        missing = [name for name in cls.options if name not in parameters]
        if missing:
            raise TypeError(f"{cls.__name__}.options {missing} are not parameters of {cls.function.__name__}")
        # The options follow the leading parameters: keyword-only after a keyword-only one.
        keyword_only = bool(cls.leading) and cls.leading[-1].kind is inspect.Parameter.KEYWORD_ONLY
        kind = inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        options = [parameters[name].replace(kind=kind) for name in cls.options]
        cls.option_signature = inspect.Signature([*cls.leading, *options, *cls.trailing])
        cls.__signature__ = cls.option_signature  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Bind, check and store the constructor arguments (see the class docstring), then :meth:`setup`.

        A subclass with its own ``__init__`` passes only the module's own parameters (:attr:`leading`,
        :attr:`trailing`) here.
        """
        super().__init__()
        signature = self.option_signature or inspect.Signature([*self.leading, *self.trailing])
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(
                f"{type(self).__name__}: {err}; it takes {', '.join(signature.parameters) or 'no arguments'}"
            ) from None
        bound.apply_defaults()
        checks = {**self.own_checks, **getattr(getattr(self, "function", None), "option_checks", {})}
        for name, value in bound.arguments.items():
            setattr(self, name, checks[name](value, name) if name in checks else value)
        self.setup()

    def setup(self) -> None:
        """Called once the constructor arguments are stored: derive buffers or parameters from them."""

    def bound_inputs(self) -> tuple[torch.Tensor, ...]:
        """Tensors the module owns that follow the caller's inputs positionally (e.g. a class matrix)."""
        return ()

    def forward(self, *inputs: Any, **keywords: Any) -> Any:
        options = {name: getattr(self, name) for name in self.options}
        return self.function(*inputs, *self.bound_inputs(), **options, **keywords)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in (*self.options, *self.shown))


class ClassMatrixLoss(FunctionalLoss):
    """Base of losses owning one learnable ``(num_classes, embedding_size)`` matrix.

    Subclasses name the parameter (``weight`` or ``proxies``) through :attr:`matrix_name`; the loss function takes
    it after ``embeddings, labels``. ``lr_multiplier`` is read by :func:`frugalvision.losses.loss_param_groups`.
    """

    matrix_name = "weight"
    leading = (parameter("num_classes", "int"), parameter("embedding_size", "int"))
    trailing = (parameter("lr_multiplier", "float", 1.0),)
    own_checks: ClassVar[dict[str, OptionCheck]] = {
        "num_classes": positive_int,
        "embedding_size": positive_int,
        "lr_multiplier": positive,
    }
    num_classes: int
    embedding_size: int
    lr_multiplier: float

    def setup(self) -> None:
        self.register_parameter(
            self.matrix_name, nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        )
        self.reset_parameters()

    @property
    def matrix(self) -> torch.Tensor:
        """The ``(num_classes, embedding_size)`` learnable matrix."""
        param: torch.Tensor = getattr(self, self.matrix_name)
        return param

    def bound_inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.matrix,)

    def reset_parameters(self) -> None:
        """Rows drawn from ``N(0, 1/D)``: unit expected norm (only directions matter to these losses)."""
        nn.init.normal_(self.matrix, std=1.0 / math.sqrt(self.embedding_size))

    def extra_repr(self) -> str:
        options = super().extra_repr()
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}" + (
            options and ", " + options
        )
