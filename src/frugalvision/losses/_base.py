"""Small shared pieces of the loss modules: the module form of a loss function, and the per-class matrix (class
weights or proxies) some losses own."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from frugalvision._checks import (
    check_class_labels,
    check_embedding_batch,
    check_ndim,
    check_tensor,
)

__all__ = ["ClassMatrixLoss", "FunctionalLoss", "check_class_matrix_inputs", "check_embeddings"]


#: Losses validate their ``(B, D)`` input with the shared helper (one-pass finiteness test).
check_embeddings = check_embedding_batch


def check_class_matrix_inputs(
    embeddings: object, labels: object, matrix: object, matrix_name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``embeddings (B, D)``, ``labels (B,)`` in ``[0, C)`` and a ``(C, D)`` class matrix; return them."""
    matrix = check_tensor(matrix, matrix_name)
    check_ndim(matrix, 2, matrix_name, "(num_classes, embedding_size)")
    embeddings = check_embeddings(embeddings, "embeddings", dim=matrix.shape[1])
    labels = check_class_labels(labels, embeddings.shape[0], "labels", num_classes=matrix.shape[0])
    return embeddings, labels, matrix


class FunctionalLoss(nn.Module):
    """The module form of a loss function, as pml and ``torch.nn`` pair them: the module holds the options.

    A subclass names its function and the attributes passed to it as keywords; ``forward`` is then
    ``function(*inputs, *self.bound_inputs(), **options, **keywords)`` and ``repr`` lists the options, so the
    call and the printout cannot drift from each other::

        class TripletMarginLoss(FunctionalLoss):
            function = staticmethod(triplet_margin_loss)
            options = ("margin", "mining", "distance", "normalize", "swap", "smooth", "reduction")

    Attributes:
        function: the loss function (a ``staticmethod``).
        options: attribute names passed to :attr:`function` as keywords, in ``repr`` order.
        shown: attribute names only ``repr`` lists (after the options).
    """

    function: ClassVar[Callable[..., Any]]
    options: ClassVar[tuple[str, ...]] = ()
    shown: ClassVar[tuple[str, ...]] = ()

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

    def __init__(self, num_classes: int, embedding_size: int, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        for value, name in ((num_classes, "num_classes"), (embedding_size, "embedding_size")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not lr_multiplier > 0:
            raise ValueError(f"lr_multiplier must be > 0, got {lr_multiplier}")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.lr_multiplier = float(lr_multiplier)
        self.register_parameter(self.matrix_name, nn.Parameter(torch.empty(num_classes, embedding_size)))
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
