"""Small helpers for multi-process (DDP) runs shared by the training engine, its tasks and distillation."""

from __future__ import annotations

import os

import torch

__all__ = ["all_gather_rows", "devices_arg", "env_rank", "uses_cuda"]


def env_rank() -> int:
    """This process's rank in a multi-process run (``RANK`` / ``LOCAL_RANK``), else 0 -- readable before the
    trainer exists (e.g. to let only rank 0 write a cache)."""
    for var in ("RANK", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def uses_cuda(accelerator: str) -> bool:
    """Whether ``accelerator`` (``auto``, ``gpu``, ``cuda``, ``cpu``...) will run on a CUDA device here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def devices_arg(value: int | str) -> int | str:
    """Lightning's ``devices``: ``"2"`` -> ``2``; ``"auto"`` and lists of ids stay strings."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """``(world, *t.shape)``: ``t`` from every process (same shape everywhere); no gradient."""
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather row sets of different sizes from every process: each tensor's rows (same count within a process),
    padded to the largest count, gathered, and trimmed back; rank 0's rows first."""
    n = tensors[0].shape[0]
    count = torch.tensor([n], device=tensors[0].device)
    counts = _all_gather(count).reshape(-1).tolist()
    width = max(counts)
    keep = torch.cat(
        [torch.arange(r * width, r * width + c, device=count.device) for r, c in enumerate(counts)]
    )
    out = []
    for t in tensors:
        if width > n:
            t = torch.cat([t, t.new_full((width - n, *t.shape[1:]), -1)])
        out.append(_all_gather(t).reshape(-1, *t.shape[1:])[keep])
    return tuple(out)
