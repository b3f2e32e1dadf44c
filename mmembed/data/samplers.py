"""Batch samplers for contrastive training.

* :class:`NoDuplicatesBatchSampler`: no text appears twice in a batch (a duplicate would be a false negative).
* :class:`DatasetMixtureBatchSampler`: for a concatenation of datasets, every batch comes from one dataset, datasets
  drawn by weight (in-batch negatives stay within a task, as VLM2Vec / sentence-transformers do).

Both are deterministic functions of ``(seed, epoch)`` and expose ``set_epoch``, so ``Trainer`` resumes a run with the
same data order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Random batches of ``batch_size`` rows in which no key (e.g. a text hash) occurs twice.

    ``keys[i]`` lists the keys of row ``i`` (anchor, positive, negatives). Rows that would repeat a key wait for a later
    batch; incomplete last batches are dropped when ``drop_last``.
    """

    def __init__(self, keys: Sequence[Sequence[int]], batch_size: int, drop_last: bool = True, seed: int = 0) -> None:
        self.keys = [set(k) for k in keys]
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        remaining = torch.randperm(len(self.keys), generator=_generator(self.seed, self.epoch)).tolist()
        while remaining:
            batch, seen, deferred = [], set(), []
            for i in remaining:
                if len(batch) < self.batch_size and not (self.keys[i] & seen):
                    batch.append(i)
                    seen |= self.keys[i]
                else:
                    deferred.append(i)
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch
            remaining = deferred

    def __len__(self) -> int:
        n = len(self.keys) // self.batch_size
        return n if self.drop_last else -(-len(self.keys) // self.batch_size)


class DatasetMixtureBatchSampler(Sampler[list[int]]):
    """Batches drawn from one dataset at a time; ``sizes`` are the lengths of the concatenated datasets and
    ``weights`` their sampling weights (default: proportional to size). An epoch is ``sum(sizes) // batch_size``
    batches."""

    def __init__(self, sizes: Sequence[int], batch_size: int, weights: Sequence[float] | None = None,
                 seed: int = 0) -> None:
        if any(s < batch_size for s in sizes):
            raise ValueError(f"every dataset needs at least batch_size={batch_size} rows; sizes are {list(sizes)}.")
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.weights = torch.tensor(weights if weights is not None else sizes, dtype=torch.float)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = _generator(self.seed, self.epoch)
        offsets = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        orders = [torch.randperm(n, generator=g).tolist() for n in self.sizes]
        cursors = [0] * len(self.sizes)
        for _ in range(len(self)):
            k = int(torch.multinomial(self.weights, 1, generator=g))
            if cursors[k] + self.batch_size > self.sizes[k]:  # this dataset is used up: start a new pass over it
                orders[k] = torch.randperm(self.sizes[k], generator=g).tolist()
                cursors[k] = 0
            yield [offsets[k] + i for i in orders[k][cursors[k]: cursors[k] + self.batch_size]]
            cursors[k] += self.batch_size

    def __len__(self) -> int:
        return sum(self.sizes) // self.batch_size
