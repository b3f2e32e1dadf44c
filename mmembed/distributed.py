"""The processes of a run launched by ``accelerate launch`` / ``torchrun``, and encoding split among them.

:func:`processes` joins the process group the environment describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``): it uses a group that is already initialised, creates a gloo group only when ``WORLD_SIZE`` > 1 and
none is (and destroys it afterwards), and is one process otherwise. Only Python objects travel between the processes
(decisions of the main process, a row counter, the embeddings each process computed), in a gloo group.

Two ways to use the processes: each encodes its own work (``mmembed index build``: its shards), or every process
runs the same program and each encoding is split among them (``mmembed eval``): inside :func:`sharded_encoding`,
:func:`mmembed.eval.encoding.encode_split` encodes a share of each call's inputs on each process and gives every
process all the embeddings (:func:`gather_shares`), so every process computes the same scores. There each process
must make the same encode calls in the same order; only the main process writes files (:func:`run_on_main`).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

from .errors import MMEmbedError

T = TypeVar("T")


@dataclass
class Processes:
    """This process's rank, the number of processes and the (gloo) group their messages travel in."""

    rank: int = 0
    world: int = 1
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """The main process's ``value``, on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank, on every process."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=self.group)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the main process and give its result to every process; an error it raises is raised on
        every process (the same class and message for mmembed's errors), so that none waits for the others."""
        result, error = None, None
        if self.main:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - sent to the other processes, then raised here too
                error = exc
        sent = self.broadcast((result, _describe(error)))
        if error is not None:
            raise error
        _raise(sent[1])
        return sent[0]


def _describe(error: BaseException | None) -> tuple[type | None, str] | None:
    """An error as it travels to the other processes: its class when it is one of mmembed's (else None), message."""
    if error is None:
        return None
    kind = type(error) if isinstance(error, MMEmbedError) else None
    return kind, str(error) if kind is not None else f"{type(error).__name__}: {error}"


def _raise(described: tuple[type | None, str] | None) -> None:
    if described is not None:
        kind, message = described
        raise (kind if kind is not None else RuntimeError)(message)


class RowCounter:
    """A count of rows encoded by all processes, kept in the process group's key-value store (no collective call,
    so processes with different amounts of work never wait for each other)."""

    def __init__(self, processes: Processes, key: str) -> None:
        self.key, self.local, self.store = key, 0, None
        if processes.world > 1:
            with contextlib.suppress(Exception):  # a private accessor: without it, this process's own count
                self.store = dist.distributed_c10d._get_default_store()

    def add(self, rows: int) -> int:
        """Add ``rows``; returns the count of all processes so far (this process's own without a store)."""
        self.local += rows
        if self.store is not None:
            with contextlib.suppress(Exception):
                return int(self.store.add(self.key, rows))
        return self.local


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """The processes of this run (see the module's docstring); a group created here is destroyed on exit."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if not dist.is_available() or (world <= 1 and not dist.is_initialized()):
        yield Processes()
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")  # env:// rendezvous; only Python objects travel, so gloo on every device
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    finished = False
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), group)
        finished = True
    finally:
        if finished:
            dist.barrier(group=group)
        if group is not None:
            dist.destroy_process_group(group)
        if created:
            gc.collect()  # free models before the group goes: torch + gloo may abort at exit otherwise
            dist.destroy_process_group()


def process_device(procs: Processes) -> str | None:
    """The GPU of this process when several run on a machine with GPUs (``LOCAL_RANK``), else None (the default)."""
    import torch

    if procs.world == 1 or not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', procs.rank)) % torch.cuda.device_count()}"


_SHARDING: list[Processes] = []


@contextlib.contextmanager
def sharded_encoding(procs: Processes) -> Iterator[Processes]:
    """While open, :func:`mmembed.eval.encoding.encode_split` (and so every evaluator) splits each encoding among
    ``procs``; every process must then make the same encode calls. One process: nothing changes."""
    if procs.world == 1:
        yield procs
        return
    _SHARDING.append(procs)
    try:
        yield procs
    finally:
        _SHARDING.remove(procs)


def encoding_processes() -> Processes | None:
    """The processes of the open :func:`sharded_encoding` (None outside one, or with one process)."""
    return _SHARDING[-1] if _SHARDING else None


def run_on_main(work: Callable[[], T]) -> T:
    """``work()`` on the main process of the open :func:`sharded_encoding`, its result (or error) on every process;
    simply ``work()`` outside one. For what touches files: reading state every process must agree on, writing."""
    procs = encoding_processes()
    return work() if procs is None else procs.on_main(work)


def gather_shares(procs: Processes, n: int, share: Callable[[], tuple[Sequence[int], Sequence[Any]]]) -> list[Any]:
    """The ``n`` rows of all processes, in input order, on every process: ``share()`` gives this process's
    ``(input indices, their rows)``, and together the processes' indices cover ``range(n)`` once. An error in
    ``share()`` on any process is raised on every process (the lowest rank's; mmembed's errors keep their class)."""
    try:
        mine: tuple[Any, Any] = (list(share()), None)
    except Exception as exc:  # noqa: BLE001 - sent to the other processes, then raised here too
        mine, error = (None, _describe(exc)), exc
    else:
        error = None
    shares = procs.all_gather(mine)
    first = next((s[1] for s in shares if s[1] is not None), None)
    if first is not None:
        if error is not None and first == mine[1]:
            raise error
        _raise(first)
    rows: list[Any] = [None] * n
    for (indices, values), _ in shares:
        for i, value in zip(indices, values):
            rows[i] = value
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        raise RuntimeError(f"the processes' shares left out rows {missing[:5]} of {n}.")
    return rows


def encode_sharded(encode_fn: Callable[[Sequence[Any]], Any], inputs: Sequence[Any],
                   procs: Processes | None = None) -> np.ndarray:
    """``encode_fn(inputs)`` (an array with a row per input) computed by the processes together: each encodes a
    contiguous slice of ``inputs``, and every process gets the whole array. ``procs``: those of the open
    :func:`sharded_encoding` by default; without any, one call of ``encode_fn``.

    The slices change the batches ``encode_fn`` forms, so the rows may differ from one call's in the last float bits;
    :func:`mmembed.eval.encoding.encode_split` splits an :class:`~mmembed.Embedder`'s own batches instead (bitwise
    equal)."""
    procs = procs or encoding_processes()
    if procs is None or procs.world == 1:
        return np.asarray(encode_fn(inputs))
    bounds = [len(inputs) * r // procs.world for r in range(procs.world + 1)]
    start, stop = bounds[procs.rank], bounds[procs.rank + 1]

    def share() -> tuple[range, Any]:
        return range(start, stop), np.asarray(encode_fn(inputs[start:stop])) if stop > start else []

    rows = gather_shares(procs, len(inputs), share)
    return np.stack(rows) if rows else np.asarray(encode_fn(inputs[:0]))
