"""Negatives from earlier batches: a FIFO queue (ESimCSE) and per-group memory banks (CCP).

Both hold embeddings without gradient as buffers (saved with the loss, so a resumed run keeps them), are filled
with the *gathered* embeddings of each step (every process holds the same queue, as
:class:`~mmembed.losses.InfoNCELoss` expects of ``extra_negatives``), and are read before they are updated: a
batch's own embeddings are never its negatives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .gather import gather


class EmbeddingQueue(nn.Module):
    """The last ``size`` embeddings pushed, oldest first (ESimCSE: ``neg_size`` 160 = 2.5 x batch 64)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size {size}: give at least 1.")
        self.size = size
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(min(int(self.count), self.size))

    def negatives(self) -> Tensor | None:
        """The queued embeddings, oldest first (None while empty)."""
        n = len(self)
        if n == 0:
            return None
        start = int(self.count) % self.size if int(self.count) >= self.size else 0
        return torch.roll(self.items, -start, dims=0)[:n] if n == self.size else self.items[:n]

    @torch.no_grad()
    def push(self, x: Tensor) -> None:
        """Append this step's embeddings of every process (gathered); the oldest fall out."""
        self.append(gather(x.detach()))

    @torch.no_grad()
    def append(self, x: Tensor) -> None:
        """Append ``x`` as given (no gathering)."""
        n = x.shape[0]
        x = x.detach().to(self.items)[-self.size:]
        positions = (int(self.count) + (n - x.shape[0]) + torch.arange(x.shape[0])) % self.size
        self.items[positions.to(self.items.device)] = x
        self.count += n


class GroupedMemoryBank(nn.Module):
    """One :class:`EmbeddingQueue` per group (CCP: a bank per language or source); a query's negatives come from
    its own group's bank only.

    Args:
        num_groups: group ids are ``0 .. num_groups - 1``.
        size: embeddings kept per group.
        dim: embedding width.
    """

    def __init__(self, num_groups: int, size: int, dim: int) -> None:
        super().__init__()
        self.banks = nn.ModuleList(EmbeddingQueue(size, dim) for _ in range(num_groups))

    def negatives(self, query_groups: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(bank rows (M, d), exclude (B, M))``: every bank's rows, masked for the queries of other groups."""
        parts, owners = [], []
        for g, bank in enumerate(self.banks):
            rows = bank.negatives()
            if rows is not None:
                parts.append(rows)
                owners.append(torch.full((rows.shape[0],), g, dtype=torch.long))
        if not parts:
            return None, None
        owner = torch.cat(owners).to(query_groups.device)
        return torch.cat(parts), query_groups[:, None] != owner[None, :]

    @torch.no_grad()
    def push(self, x: Tensor, groups: Tensor) -> None:
        """Append each row of this step (of every process) to its group's bank."""
        x, groups = gather(x.detach()), gather(groups)
        if bool(((groups < 0) | (groups >= len(self.banks))).any()):
            raise ValueError(f"group ids must lie in 0..{len(self.banks) - 1}; got {sorted(set(groups.tolist()))}.")
        for g, bank in enumerate(self.banks):
            rows = x[groups == g]
            if rows.shape[0]:
                bank.append(rows)
