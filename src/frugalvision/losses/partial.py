r"""Partial annotations: what a multi-label loss does with the un-annotated (``-1``) entries of the targets.

Ben-Baruch, Ridnik, Friedman, Ben-Cohen, Zamir, Noy, Zelnik-Manor, "Multi-label Classification with Partial
Annotations using Class-aware Selective Loss", CVPR 2022, https://arxiv.org/abs/2110.10955; official code
github.com/Alibaba-MIIL/PartialLabelingCSL (``src/loss_functions/partial_asymmetric_loss.py``:
``PartialSelectiveLoss``, ``edit_targets_parital_labels``, ``negative_backprop_fun_jit``, ``ComputePrior``).

Schematically, the paper's loss of an image sums over its annotated positives ``P``, annotated negatives ``N`` and
un-annotated labels ``U``, ``L = Σ_{c∈P} L⁺ + Σ_{c∈N} L⁻ + Σ_{c∈U} ω_c L⁻``, and compares three rules for the
un-annotated weight ``ω_c``:

* ``"negative"``: ``ω_c = 1`` (every un-annotated label is absent: the naive baseline);
* ``"ignore"``: ``ω_c = 0`` (only annotated labels count);
* ``"selective"`` (class-aware selective loss): ``ω_c = 0`` when the label is likely present, judged by two
  probabilities: the **class prior** ``P_r(c)`` (ignore when ``P_r(c) > η``, ``η = prior_threshold``) and the
  **label likelihood** (ignore the ``K = likelihood_topk · B`` un-annotated entries of the batch with the highest
  scores); the others are negatives (``ω_c = 1``).

:class:`PartialAnnotationLoss` implements the three rules as a wrapper of any multi-label loss (BCE, focal, ASL,
DB: ``task="multilabel"`` in the registry): it rewrites the targets (``-1`` -> ``0`` for an entry treated as negative,
``-1`` kept for an ignored one) and hands them to the base loss, which leaves ``-1`` entries out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from frugalvision._checks import check_choice, check_ndim, check_tensor
from frugalvision.losses._multilabel_base import check_multilabel_inputs

__all__ = ["PARTIAL_MODES", "PartialAnnotationLoss"]

PARTIAL_MODES: tuple[str, ...] = ("negative", "ignore", "selective")

_ESTIMATE_BUFFERS = ("prior_sum", "epoch_prior")


def _prior_vector(prior: Sequence[float] | torch.Tensor) -> torch.Tensor:
    try:
        vector = torch.as_tensor(prior, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"prior must be a sequence of C probabilities, got {type(prior).__name__}") from err
    if vector.ndim != 1 or vector.numel() == 0:
        raise ValueError(
            f"prior must be a non-empty 1-D sequence (one probability per class), got shape "
            f"{tuple(vector.shape)}"
        )
    bad = ~torch.isfinite(vector) | (vector < 0) | (vector > 1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"prior must hold probabilities in [0, 1]; got {vector[i].item():g} for class {i}")
    return vector


class PartialAnnotationLoss(nn.Module):
    r"""Wrap a multi-label loss with a rule for un-annotated (``-1``) target entries (Ben-Baruch et al. 2022).

    Args:
        base: a multi-label loss called ``base(logits, targets)`` or ``base(logits, targets, weights)`` that leaves
            ``-1`` entries out (every loss registered with ``task="multilabel"``; e.g.
            ``create_loss("asl")``).
        mode: ``"negative"``, ``"ignore"`` or ``"selective"`` (module docstring).
        prior: fixed class prior ``P_r(c)`` (``C`` probabilities, e.g. the mean predictions of a temporary model
            trained in ``"ignore"`` mode, as the paper recommends), or ``None`` to use the estimate below.
        prior_threshold: ``η``: in ``"selective"`` mode the un-annotated entries of a class whose prior exceeds
            ``η`` are ignored (official default 0.05).
        likelihood_topk: in ``"selective"`` mode the ``int(likelihood_topk · B)`` un-annotated entries of a batch
            of ``B`` images with the highest logits are ignored (official default 5; 0 turns the rule off). As
            ``negative_backprop_fun_jit`` the ranking runs over all un-annotated entries, so the two rules give a
            union: an entry already ignored for its class prior may take one of the ``K`` places. We rank by
            logit, the official code by its clipped ``1 - p``; the order is the same except among ties.
        unannotated_weight: weight of an un-annotated entry treated as negative (the official ``alpha_unann``;
            default 1). Annotated entries keep weight 1.
        num_classes: ``C``, to size the prior-estimate buffers at construction; otherwise they are sized by the
            first batch (or by a loaded ``state_dict``).

    **Prior estimate.** In training mode every call adds ``σ(logits)`` (detached) of its batch to a running
    per-class sum: :meth:`prior_estimate` is the mean predicted probability per class over the training images seen
    since the last :meth:`start_epoch` (the official ``ComputePrior.update``). :meth:`start_epoch`, **to be
    called at the start of every training epoch**, freezes that mean as the prior of the coming epoch and starts a
    new sum; so epoch ``e`` selects with the mean predictions of epoch ``e - 1``, the closest available proxy to
    the paper's "temporary model" trained on the same data. Before any estimate exists (the first epoch) and
    without a fixed ``prior``, ``"selective"`` uses the likelihood rule only. The sums and the frozen estimate are
    registered buffers, so a checkpoint resumes them exactly. Under ``torch.distributed``, :meth:`start_epoch`
    all-reduces the sums first (every rank must call it).

    Example:
        >>> from frugalvision.losses import create_loss
        >>> loss = PartialAnnotationLoss(create_loss("asl"), mode="selective", likelihood_topk=1)
        >>> logits, targets = torch.randn(4, 5), torch.tensor([[1, 0, -1, -1, 0]] * 4)
        >>> loss(logits, targets).ndim
        0
        >>> loss.start_epoch()  # at each epoch start: freeze the last epoch's mean predictions as the prior
    """

    prior_sum: torch.Tensor
    prior_rows: torch.Tensor
    epoch_prior: torch.Tensor
    epoch_prior_rows: torch.Tensor
    fixed_prior: torch.Tensor | None

    def __init__(
        self,
        base: nn.Module,
        mode: str = "selective",
        prior: Sequence[float] | torch.Tensor | None = None,
        prior_threshold: float = 0.05,
        likelihood_topk: float = 5,
        unannotated_weight: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module multi-label loss, got {type(base).__name__}")
        self.base = base
        self.mode = check_choice(mode, PARTIAL_MODES, "mode")
        if not 0 <= prior_threshold <= 1:
            raise ValueError(f"prior_threshold must lie in [0, 1], got {prior_threshold}")
        if not (math.isfinite(likelihood_topk) and likelihood_topk >= 0):
            raise ValueError(f"likelihood_topk must be a finite number >= 0, got {likelihood_topk}")
        if not (math.isfinite(unannotated_weight) and unannotated_weight >= 0):
            raise ValueError(f"unannotated_weight must be a finite number >= 0, got {unannotated_weight}")
        self.prior_threshold = float(prior_threshold)
        self.likelihood_topk = float(likelihood_topk)
        self.unannotated_weight = float(unannotated_weight)
        fixed = None if prior is None else _prior_vector(prior)
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
            if fixed is not None and fixed.numel() != num_classes:
                raise ValueError(f"prior has {fixed.numel()} entries but num_classes is {num_classes}")
        size = num_classes if num_classes is not None else (fixed.numel() if fixed is not None else 0)
        # The fixed prior comes from the constructor (non-persistent); the estimate is state (persistent).
        self.register_buffer("fixed_prior", fixed, persistent=False)
        self.register_buffer("prior_sum", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("prior_rows", torch.zeros((), dtype=torch.float64))
        self.register_buffer("epoch_prior", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("epoch_prior_rows", torch.zeros((), dtype=torch.float64))

    # ------------------------------------------------------------------------------------------------------------
    # Prior estimate
    # ------------------------------------------------------------------------------------------------------------

    def _ensure_size(self, num_classes: int) -> None:
        if self.fixed_prior is not None and self.fixed_prior.numel() != num_classes:
            raise ValueError(
                f"prior has {self.fixed_prior.numel()} entries but logits have {num_classes} classes"
            )
        if self.prior_sum.numel() == 0:
            device = self.prior_sum.device
            self.prior_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self.epoch_prior = torch.zeros(num_classes, dtype=torch.float64, device=device)
        elif self.prior_sum.numel() != num_classes:
            raise ValueError(
                f"logits have {num_classes} classes but this loss tracks a prior over {self.prior_sum.numel()}"
            )

    @torch.no_grad()
    def update_prior(self, logits: torch.Tensor) -> None:
        """Add the batch's ``σ(logits)`` ``(B, C)`` to the running per-class sum (``forward`` does it in training
        mode; call it yourself only to feed predictions made elsewhere)."""
        logits = check_tensor(logits, "logits")
        check_ndim(logits, 2, "logits", "(B, C)")
        self._ensure_size(logits.shape[1])
        probs = torch.sigmoid(logits.detach().to(torch.float64)).to(self.prior_sum.device)
        self.prior_sum += probs.sum(dim=0)
        self.prior_rows += probs.shape[0]

    def prior_estimate(self) -> torch.Tensor | None:
        """Mean ``σ(logits)`` per class ``(C,)`` (float64) over the training images seen since the last
        :meth:`start_epoch`, or ``None`` before the first one."""
        if float(self.prior_rows) == 0:
            return None
        return self.prior_sum / self.prior_rows

    def selection_prior(self) -> torch.Tensor | None:
        """The prior ``"selective"`` uses now: the fixed ``prior``, else the estimate frozen by the last
        :meth:`start_epoch`, else ``None`` (likelihood rule only)."""
        if self.fixed_prior is not None:
            return self.fixed_prior
        if float(self.epoch_prior_rows) == 0:
            return None
        return self.epoch_prior

    def start_epoch(self) -> None:
        """Call at the start of each training epoch: freeze the running mean as the prior of the coming epoch and
        reset the sum. Without a batch seen since the last call the previous estimate stays. Under an initialised
        ``torch.distributed`` process group the sums are all-reduced first (a collective: every rank calls it)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            packed = torch.cat([self.prior_sum, self.prior_rows.reshape(1)])
            torch.distributed.all_reduce(packed)
            self.prior_sum.copy_(packed[:-1])
            self.prior_rows.copy_(packed[-1])
        if float(self.prior_rows) > 0:
            self.epoch_prior.copy_(self.prior_sum / self.prior_rows)
            self.epoch_prior_rows.copy_(self.prior_rows)
        self.prior_sum.zero_()
        self.prior_rows.zero_()

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Buffers sized by the first batch: a fresh (unsized) module takes the checkpoint's size.
        for name in _ESTIMATE_BUFFERS:
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(saved, torch.Tensor) and current.numel() == 0 and saved.numel() > 0:
                setattr(self, name, torch.zeros_like(saved, dtype=torch.float64, device=current.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------------------------------------------------
    # Target rewriting and the loss
    # ------------------------------------------------------------------------------------------------------------

    def _ignored_unknown(self, logits: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        """Selective mode: the un-annotated entries to ignore (class prior above ``η`` or top-``K`` logits)."""
        ignore = torch.zeros_like(unknown)
        prior = self.selection_prior()
        if prior is not None:
            likely_class = (prior > self.prior_threshold).to(unknown.device)
            ignore = unknown & likely_class.unsqueeze(0)
        k = int(self.likelihood_topk * logits.shape[0])
        if k > 0:
            k = min(k, int(unknown.sum()))
        if k > 0:
            scores = logits.detach().masked_fill(~unknown, float("-inf")).flatten()
            top = torch.topk(scores, k).indices
            ignore = ignore.flatten().index_fill(0, top, True).view_as(unknown)
        return ignore

    def resolve(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets and weights handed to the base loss under this rule (no prior update).

        Returns:
            ``(targets, weights)``: ``(B, C)`` targets in ``{1, 0, -1}`` (``-1`` = ignored) and the ``(B, C)``
            weights (``None`` when all are 1).
        """
        logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
        self._ensure_size(logits.shape[1])
        unknown = targets == -1
        if self.mode == "ignore":
            return targets, weights
        if self.mode == "negative":
            as_negative = unknown
        else:
            as_negative = unknown & ~self._ignored_unknown(logits, unknown)
        new_targets = torch.where(as_negative, torch.zeros_like(targets), targets)
        if self.unannotated_weight != 1.0:
            base_weights = torch.ones_like(logits) if weights is None else weights
            scaled = base_weights * self.unannotated_weight
            weights = torch.where(as_negative, scaled, base_weights)
        return new_targets, weights

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits (B, C)``, ``targets (B, C)`` in ``{1, 0, -1}``, optional ``weights (B, C)`` -> the base loss.

        In training mode the batch's predictions first update the running prior estimate.
        """
        logits, targets, weights = check_multilabel_inputs(logits, targets, weights)
        if self.training:
            self.update_prior(logits)
        new_targets, new_weights = self.resolve(logits, targets, weights)
        if new_weights is None:
            return self.base(logits, new_targets)
        return self.base(logits, new_targets, new_weights)

    def extra_repr(self) -> str:
        prior = "fixed" if self.fixed_prior is not None else "estimated"
        return (
            f"mode={self.mode!r}, prior={prior}, prior_threshold={self.prior_threshold}, "
            f"likelihood_topk={self.likelihood_topk:g}, unannotated_weight={self.unannotated_weight}"
        )
