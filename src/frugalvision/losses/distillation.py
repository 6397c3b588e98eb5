r"""Embedding distillation: contrastive InfoNCE between student and teacher embeddings plus a squared error.

Li, Fang, Liu, Ling, Tu, Su, "Distilling Large Vision-Language Model with Out-of-Distribution Generalizability",
ICCV 2023, https://arxiv.org/abs/2307.03135: the terms that align the student's visual space with the teacher's,
``L-mse`` and ``L-im-cst``. With ``s_i`` and ``t_i`` the L2-normalised student and teacher embeddings of image ``i`` in a batch of ``B``:

.. math::
    \ell^{s \to t}_i = -\log \frac{\exp(s_i \cdot t_i / \tau)}{\sum_{j=1}^{B} \exp(s_i \cdot t_j / \tau)}, \qquad
    \ell^{t \to s}_i = -\log \frac{\exp(s_i \cdot t_i / \tau)}{\sum_{j=1}^{B} \exp(s_j \cdot t_i / \tau)}

    L_{\text{im-cst}} = \frac{1}{2B} \sum_i \big(\ell^{s \to t}_i + \ell^{t \to s}_i\big) \quad
    \text{(symmetric; one-sided: } \tfrac{1}{B} \textstyle\sum_i \ell^{s \to t}_i\text{)}, \qquad
    L_{\text{mse}} = \frac{1}{B} \sum_i \lVert s_i - t_i \rVert_2^2

and the loss is ``contrastive_weight * L_im-cst + mse_weight * L_mse``. Choices, from the authors' code
(``xuanlinli17/large_vlm_distillation_ood``, ``main_experiments.py``; read, not copied):

* **symmetric** InfoNCE by default (their ``--clip-align-image-contrastive-mode`` defaults to ``bidirectional``,
  the mean of the row-wise and column-wise cross-entropies, as in CLIP); ``symmetric=False`` is their ``single``
  mode (student row ``i`` against all teacher rows);
* temperature ``tau = 0.07`` (their default), fixed; ``learnable_temperature=True`` learns ``log(1/tau)`` the way
  CLIP learns its logit scale (clamped at 100);
* the MSE term is on the **L2-normalised** embeddings, summed over dimensions and averaged over the batch (their
  ``L-mse``), so it equals ``2 - 2 cos(s_i, t_i)`` on average; both weights default to 1 as in their sum of terms.

Note on the minimum: the MSE term is zero exactly when ``s_i = t_i``. The InfoNCE term is not minimised by
``s_i = t_i`` in general -- it rewards students that also push ``s_i`` away from the *other* teacher rows -- except
when the teacher rows are spread evenly (e.g. a regular simplex); the MSE term pins the student to the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frugalvision._checks import check_positive, check_tensor
from frugalvision.losses._base import check_paired_batches

__all__ = ["DistillationLoss", "distillation_loss"]

#: CLIP clamps its learnt logit scale ``1 / tau`` at 100 so the softmax cannot become arbitrarily sharp.
MAX_LOGIT_SCALE = 100.0


def _check_pair(student: object, teacher: object) -> tuple[torch.Tensor, torch.Tensor]:
    student, teacher = check_paired_batches(
        student,
        teacher,
        ("student", "teacher"),
        "(B, D)",
        what=" embeddings",
        why=" (row i of both is image i, and the student's head must map to the teacher's dimension)",
    )
    return student, teacher.to(device=student.device, dtype=student.dtype)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 0.07,
    mse_weight: float = 1.0,
    contrastive_weight: float = 1.0,
    symmetric: bool = True,
) -> dict[str, torch.Tensor]:
    """Contrastive InfoNCE + squared error between student and teacher embeddings (see the module docstring).

    Args:
        student: ``(B, D)`` student embeddings (any norm; normalised here).
        teacher: ``(B, D)`` teacher embeddings of the same images in the same order. It is a target: pass it
            detached (cached teacher features are); gradients flow into it otherwise.
        temperature: ``tau > 0`` (float or scalar tensor, e.g. ``1 / logit_scale``).
        mse_weight: weight of the squared-error term (``>= 0``).
        contrastive_weight: weight of the InfoNCE term (``>= 0``).
        symmetric: average the student->teacher and teacher->student cross-entropies (default) or use only
            student->teacher.

    Returns:
        ``{"loss": weighted sum, "loss/infonce": InfoNCE, "loss/mse": squared error}``, scalars with gradients.

    Raises:
        TypeError: non-tensor or non-floating inputs.
        ValueError: shapes that are not the same ``(B, D)``, NaN/inf values, a bad temperature or weight.

    Example:
        >>> s, t = torch.randn(4, 8), torch.randn(4, 8)
        >>> sorted(distillation_loss(s, t))
        ['loss', 'loss/infonce', 'loss/mse']
    """
    student, teacher = _check_pair(student, teacher)
    check_positive(mse_weight, "mse_weight", strict=False)
    check_positive(contrastive_weight, "contrastive_weight", strict=False)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
        if not bool(temperature.detach() > 0):
            raise ValueError(f"temperature must be > 0, got {float(temperature)}")
    else:
        check_positive(temperature, "temperature")
    if student.shape[0] == 0:
        zero = student.sum() * 0.0
        return {"loss": zero, "loss/infonce": zero, "loss/mse": zero}

    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    logits = (s @ t.T) / temperature  # (B, B): row i = student i against every teacher row
    target = torch.arange(s.shape[0], device=s.device)
    infonce = F.cross_entropy(logits, target)
    if symmetric:
        infonce = 0.5 * (infonce + F.cross_entropy(logits.T, target))
    mse = (s - t).pow(2).sum(dim=1).mean()
    return {"loss": contrastive_weight * infonce + mse_weight * mse, "loss/infonce": infonce, "loss/mse": mse}


class DistillationLoss(nn.Module):
    """Module form of :func:`distillation_loss`, optionally learning the temperature.

    Args:
        temperature: ``tau`` (the authors' default 0.07); the initial value when learnt.
        learnable_temperature: learn ``log(1 / tau)`` as CLIP learns its logit scale (``1 / tau`` clamped at
            :data:`MAX_LOGIT_SCALE`); otherwise ``tau`` is a fixed buffer.
        mse_weight: weight of the squared error on normalised embeddings (default 1).
        contrastive_weight: weight of the InfoNCE term (default 1).
        symmetric: symmetric InfoNCE (default) or student->teacher only.

    Call as ``loss(student (B, D), teacher (B, D)) -> {"loss", "loss/infonce", "loss/mse"}``. It takes no labels,
    so it is not in the label-based loss registry (:func:`frugalvision.losses.create_loss`).

    Example:
        >>> loss = DistillationLoss(learnable_temperature=True)
        >>> out = loss(torch.randn(6, 16, requires_grad=True), torch.randn(6, 16))
        >>> out["loss"].backward(); loss.log_logit_scale.grad is not None
        True
    """

    def __init__(
        self,
        temperature: float = 0.07,
        *,
        learnable_temperature: bool = False,
        mse_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        if 1.0 / temperature > MAX_LOGIT_SCALE:
            raise ValueError(
                f"temperature must be >= {1 / MAX_LOGIT_SCALE} (1/tau is clamped at {MAX_LOGIT_SCALE}), "
                f"got {temperature}"
            )
        check_positive(mse_weight, "mse_weight", strict=False)
        check_positive(contrastive_weight, "contrastive_weight", strict=False)
        if mse_weight == 0 and contrastive_weight == 0:
            raise ValueError("mse_weight and contrastive_weight are both 0: the loss would be constant")
        self.mse_weight = float(mse_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.symmetric = bool(symmetric)
        self.learnable_temperature = bool(learnable_temperature)
        value = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    @property
    def temperature(self) -> torch.Tensor:
        """Current ``tau`` as a scalar tensor (with gradient when learnt)."""
        return 1.0 / self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        check_tensor(student, "student")
        return distillation_loss(
            student,
            teacher,
            temperature=self.temperature.to(student.dtype)
            if student.is_floating_point()
            else self.temperature,
            mse_weight=self.mse_weight,
            contrastive_weight=self.contrastive_weight,
            symmetric=self.symmetric,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature.detach()):.4g}, learnable_temperature={self.learnable_temperature}, "
            f"mse_weight={self.mse_weight}, contrastive_weight={self.contrastive_weight}, symmetric={self.symmetric}"
        )
