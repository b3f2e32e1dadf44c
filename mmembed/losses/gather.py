"""Gather tensors across processes, keeping gradients.

``gather_with_grad`` concatenates every rank's tensor (ranks may hold different numbers of rows). Its backward
sums the incoming gradient over ranks (all-reduce) and returns this rank's slice, so each rank receives the
gradient that *every* rank's loss sends to its rows. With each rank's loss a mean over its local queries and
DDP averaging gradients, the result equals the single-process gradient of the global batch, with no scaling.
All-reduce (not reduce-scatter) keeps it working on the gloo backend.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sizes(n: int, device: torch.device) -> list[int]:
    local = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        longest = max(sizes)
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start: ctx.stop], None


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """All ranks' ``x`` concatenated in rank order, and the offset of this rank's rows in it."""
    if not is_distributed():
        return x, 0
    sizes = _sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x, sizes), sum(sizes[: dist.get_rank()])


def gather(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient (ids, keys, masks)."""
    if not is_distributed():
        return x
    with torch.no_grad():
        return _GatherWithGrad.apply(x.detach(), _sizes(x.shape[0], x.device))
