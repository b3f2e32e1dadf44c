"""WhitenedCSE's shuffled group whitening (SGW), a training-only transform in the loss head.

For each view of a batch ``H (N, D)``: permute the channels with a fresh random permutation, split them into ``G``
groups of ``D / G``, centre each group over the batch, whiten it with ZCA (``W = U diag(1/sqrt(lambda + eps)) U^T``
of the group's covariance), and undo the permutation. Each view gets its own permutation, so the views of one
sentence are distorted differently (extra positives). As in the reference code the whitening matrix is computed
without gradient; the gradient flows through the centring and the product with ``W``.

It runs on the gathered batch (:class:`~mmembed.losses.InfoNCELoss` ``view_transform``), so its statistics are
those of the global batch, with and without gradient caching; the permutations come from its own generator, seeded
alike on every process. It is never part of an exported model.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def group_whiten(x: Tensor, groups: int, eps: float = 1e-5) -> Tensor:
    """ZCA-whiten each of ``groups`` consecutive channel groups of ``x (N, D)`` over its rows (at least float32)."""
    n, d = x.shape
    if d % groups:
        raise ValueError(f"{d} channels do not split into {groups} groups; choose a divisor of {d}.")
    size = d // groups
    if size >= n:
        raise ValueError(f"whitening groups of {size} channels need more than {size} rows; the batch has {n}. "
                         f"Use more groups (num_groups) or a larger batch.")
    if 4 * size > n:
        warnings.warn(f"whitening groups of {size} channels over {n} rows: the covariance estimate is poor (keep the "
                      f"group width below a quarter of the batch, e.g. num_groups={d // max(1, n // 4)}).",
                      stacklevel=2)
    z = x.to(torch.promote_types(x.dtype, torch.float32)).view(n, groups, size)
    z = z - z.mean(0, keepdim=True)
    with torch.no_grad():
        cov = torch.einsum("ngi,ngj->gij", z, z) / n
        eigenvalues, vectors = torch.linalg.eigh(cov)
        w = vectors @ torch.diag_embed((eigenvalues.clamp_min(0) + eps).rsqrt()) @ vectors.transpose(1, 2)
    return torch.einsum("ngi,gij->ngj", z, w).reshape(n, d).to(x.dtype)


class ShuffledGroupWhitening(nn.Module):
    """SGW over a list of views (``[queries, positives...]``), a fresh channel permutation per view.

    Args:
        num_groups: ``G`` (WhitenedCSE: 128 on BERT's 768 channels, groups of 6; keep ``D / G`` well below the
            batch size).
        eps: added to the eigenvalues.
        seed: of the permutations (the same on every process, so all processes whiten alike).
    """

    def __init__(self, num_groups: int = 128, eps: float = 1e-5, seed: int = 0) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        out = []
        for x in views:
            perm = torch.randperm(x.shape[1], generator=self.generator).to(x.device)
            white = group_whiten(x[:, perm], self.num_groups, self.eps)
            out.append(white[:, torch.argsort(perm)])
        return out
