"""Batch samplers for contrastive training.

* :class:`NoDuplicatesBatchSampler`: no text appears twice in a batch (a duplicate would be a false negative).
* :class:`DatasetMixtureBatchSampler`: for a concatenation of datasets, every batch comes from one dataset, datasets
  drawn by weight (in-batch negatives stay within a task, as VLM2Vec / sentence-transformers do).

Both are deterministic functions of ``(seed, epoch)``, expose ``set_epoch`` and yield exactly ``len(sampler)`` batches
every epoch, so ``Trainer`` counts the steps of an epoch right and resumes a run with the same data order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..errors import DataError


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Random batches of ``batch_size`` rows in which no key (e.g. a text hash) occurs twice.

    ``keys[i]`` lists the keys of row ``i`` (anchor, positive, negatives). An epoch walks a permutation of the rows
    seeded by ``(seed, epoch)``; a batch takes the first rows that share no key with it, the others wait for a later
    batch.

    With ``drop_last`` (what the trainer uses), every epoch is exactly ``len(self) = len(keys) // batch_size`` full
    batches, so that ``Trainer`` counts steps per epoch right (a run stops at ``max_steps``) and a resumed run skips
    exactly the batches it already trained on. When the rows left in an epoch cannot complete a batch (they repeat
    each other's keys), the batch is completed from a further permutation of all rows, drawn from the same
    ``(seed, epoch)`` generator: a few rows then appear twice in that epoch (never twice in a batch). Rows not used by
    the end of an epoch (fewer than a batch, or repeats) are left out of that epoch only; the next epoch is a new
    permutation of all rows.

    Without ``drop_last``, an epoch yields every row once; batches may be smaller than ``batch_size`` where keys
    repeat, so ``len(self)`` is the number of batches of the current epoch (it depends on ``set_epoch``).
    """

    def __init__(self, keys: Sequence[Sequence[int]], batch_size: int, drop_last: bool = True, seed: int = 0) -> None:
        self.keys = [set(k) for k in keys]
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _take(self, pool: list[int]) -> tuple[list[int], list[int]]:
        """The next batch of ``pool`` (in order, no key twice, at most ``batch_size`` rows) and the rows left."""
        batch, seen, deferred = [], set(), []
        for i in pool:
            if len(batch) < self.batch_size and not (self.keys[i] & seen):
                batch.append(i)
                seen |= self.keys[i]
            else:
                deferred.append(i)
        return batch, deferred

    def __iter__(self) -> Iterator[list[int]]:
        generator = _generator(self.seed, self.epoch)
        remaining = torch.randperm(len(self.keys), generator=generator).tolist()
        if not self.drop_last:
            while remaining:
                batch, remaining = self._take(remaining)
                yield batch
            return
        for _ in range(len(self)):
            batch, deferred = self._take(remaining)
            if len(batch) < self.batch_size:  # a short epoch: complete the batch from a further permutation
                batch, deferred = self._take(remaining + torch.randperm(len(self.keys), generator=generator).tolist())
                if len(batch) < self.batch_size:
                    raise DataError(f"no batch of {self.batch_size} training rows without a repeated input can be "
                                    f"formed: the data holds too few distinct inputs; lower "
                                    f"per_device_train_batch_size or set --no_duplicates false.")
            yield batch
            remaining = deferred

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.keys) // self.batch_size
        return sum(1 for _ in self)


class DatasetMixtureBatchSampler(Sampler[list[int]]):
    """Batches drawn from one dataset at a time; ``sizes`` are the lengths of the concatenated datasets and
    ``weights`` their sampling weights (default: proportional to size). An epoch is ``sum(sizes) // batch_size``
    batches."""

    def __init__(self, sizes: Sequence[int], batch_size: int, weights: Sequence[float] | None = None,
                 seed: int = 0) -> None:
        if any(s < batch_size for s in sizes):
            raise DataError(f"every dataset needs at least batch_size={batch_size} rows; sizes are {list(sizes)}.")
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
