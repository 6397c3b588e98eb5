"""Task-aligned label assignment (TOOD, Feng et al. 2021, https://arxiv.org/abs/2108.07755, section 3.2).

For every ground-truth box ``g`` (class ``c_g``) and prediction ``i`` (cell centre ``p_i``, predicted box ``b_i``,
class probabilities ``s_i``) the alignment metric is::

    t_gi = s_i[c_g] ** alpha * IoU(b_i, g) ** beta                  (alpha = 1, beta = 6: the paper's defaults)

Candidates of ``g`` are the predictions whose cell centre lies inside ``g`` or within ``radius`` strides of its
centre (YOLOX's centre prior, so that boxes smaller than a stride still get candidates); the ``topk`` candidates
with the largest ``t`` become positives. A prediction claimed by several boxes goes to the one it overlaps most.
Its classification target is the normalised alignment (TOOD eq. 10)::

    t_hat_gi = t_gi / max_j t_gj * max_j IoU(b_j, g)                 (j over the positives of g)

so the class score learns to rank boxes by their localisation quality. Memory: ``(B, M, N)`` for ``M`` boxes and
``N`` predictions per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Assignment", "TaskAlignedAssigner", "pairwise_box_iou"]


def pairwise_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every box of ``a (B, M, 4)`` with every box of ``b (B, N, 4)``: ``(B, M, N)``."""
    a, b = a[:, :, None, :], b[:, None, :, :]
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area_a + area_b - inter + eps)


@dataclass
class Assignment:
    """What :class:`TaskAlignedAssigner` returns for ``B`` images of ``N`` predictions.

    Attributes:
        foreground: ``(B, N)`` bool, positives.
        gt_index: ``(B, N)`` index of the assigned box (0 where not foreground).
        labels: ``(B, N)`` class of the assigned box (0 where not foreground).
        boxes: ``(B, N, 4)`` assigned box (zeros where not foreground).
        scores: ``(B, N, C)`` classification targets: ``t_hat`` at the assigned class, 0 elsewhere.
    """

    foreground: torch.Tensor
    gt_index: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


class TaskAlignedAssigner:
    """Task-aligned assigner (see the module docstring).

    Args:
        topk: positives per box (TOOD: 13; 10 here as in PP-YOLOE).
        alpha, beta: exponents of the alignment metric (paper: 1 and 6).
        radius: the centre prior, in strides.
    """

    def __init__(self, topk: int = 10, alpha: float = 1.0, beta: float = 6.0, radius: float = 2.5) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.topk, self.alpha, self.beta, self.radius = int(topk), float(alpha), float(beta), float(radius)

    @torch.no_grad()
    def __call__(
        self,
        scores: torch.Tensor,
        pred_boxes: torch.Tensor,
        points: torch.Tensor,
        strides: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> Assignment:
        """Assign.

        Args:
            scores: ``(B, N, C)`` class probabilities.
            pred_boxes: ``(B, N, 4)`` xyxy.
            points: ``(N, 2)`` cell centres; strides: ``(N,)``.
            gt_labels: ``(B, M)`` int64; gt_boxes: ``(B, M, 4)`` xyxy; gt_mask: ``(B, M)`` bool (padding: False).
        """
        b, n, _ = scores.shape
        m = gt_boxes.shape[1]
        device = scores.device
        if m == 0:
            zeros = torch.zeros(b, n, dtype=torch.long, device=device)
            return Assignment(
                torch.zeros(b, n, dtype=torch.bool, device=device),
                zeros,
                zeros,
                torch.zeros(b, n, 4, dtype=pred_boxes.dtype, device=device),
                torch.zeros_like(scores),
            )
        scores, pred_boxes, gt_boxes = scores.float(), pred_boxes.float(), gt_boxes.float()
        iou = pairwise_box_iou(gt_boxes, pred_boxes)  # (B, M, N)
        labels = gt_labels.clamp(min=0)
        cls_score = torch.gather(scores.transpose(1, 2), 1, labels[:, :, None].expand(b, m, n))  # (B, M, N)
        align = cls_score.pow(self.alpha) * iou.pow(self.beta)

        px, py = points[None, None, :, 0], points[None, None, :, 1]
        g = gt_boxes[:, :, None, :]
        inside = (
            torch.stack([px - g[..., 0], py - g[..., 1], g[..., 2] - px, g[..., 3] - py], -1).amin(-1) > 0
        )
        cx, cy = (g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2
        r = self.radius * strides[None, None, :]
        near = ((px - cx).abs() < r) & ((py - cy).abs() < r)
        candidate = (inside | near) & gt_mask[:, :, None]  # (B, M, N)

        metric = torch.where(candidate, align, torch.full_like(align, -1.0))
        k = min(self.topk, n)
        top = metric.topk(k, dim=2).indices
        chosen = torch.zeros_like(candidate).scatter_(2, top, True) & candidate  # (B, M, N)

        # a prediction claimed by several boxes goes to the one it overlaps most
        many = chosen.sum(1, keepdim=True) > 1
        best = torch.where(chosen, iou, torch.full_like(iou, -1.0)).argmax(1, keepdim=True)  # (B, 1, N)
        only_best = torch.zeros_like(chosen).scatter_(1, best, True)
        chosen = torch.where(many, only_best & chosen, chosen)

        foreground = chosen.any(1)  # (B, N)
        gt_index = chosen.float().argmax(1)  # (B, N)
        batch = torch.arange(b, device=device)[:, None]
        t_labels = torch.where(foreground, labels[batch, gt_index], torch.zeros_like(gt_index))
        t_boxes = torch.where(foreground[..., None], gt_boxes[batch, gt_index], torch.zeros_like(pred_boxes))

        pos_align = align * chosen
        pos_iou = iou * chosen
        norm = pos_align / (pos_align.amax(2, keepdim=True) + 1e-9) * pos_iou.amax(2, keepdim=True)
        t = norm.amax(1)  # (B, N): only the assigned box is non-zero in each column
        t_scores = torch.zeros_like(scores)
        t_scores.scatter_(2, t_labels[..., None], t[..., None])
        t_scores = t_scores * foreground[..., None]
        return Assignment(foreground, gt_index, t_labels, t_boxes, t_scores)
