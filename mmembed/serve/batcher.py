"""Dynamic batching: concurrent requests are merged into one ``encode`` call, then split back in order.

A batch starts at once when no other request is on its way (being read or parsed inside :meth:`Batcher.arriving`),
so a lone client waits for nothing; otherwise the first waiting request waits at most ``max_wait_s`` for the others
to arrive. Requests that share its prompt join it, in arrival order, while their inputs hold at most
``max_batch_tokens`` tokens (the first always goes, however large).
``encode`` runs in one worker thread, so the event loop keeps accepting and parsing requests meanwhile, and
requests that arrive during a batch form the next one. At most ``max_queue`` requests wait; one more raises
:class:`QueueFull` (the app answers 503). When a merged batch raises :class:`~mmembed.errors.InputError`, each of
its requests is encoded alone, so the error reaches the request that caused it and the others get their vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .metrics import Metrics

#: ``run(items, key)`` -> one result per item (``encode``'s output for a list of inputs)
RunFn = Callable[[list, Any], Sequence]


class QueueFull(Exception):
    """The batch queue holds ``max_queue`` requests already."""


@dataclass
class _Job:
    items: list
    tokens: int
    key: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Merges concurrent :meth:`submit` calls into batches for ``run``; :meth:`start` in the event loop first."""

    def __init__(self, run: RunFn, *, max_batch_tokens: int, max_wait_s: float, max_queue: int,
                 metrics: Metrics | None = None) -> None:
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._queue: deque[_Job] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmembed-encode")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._arriving = 0

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way (read, parsed) until the block ends: a batch about to start waits for it
        (up to ``max_wait_s``) instead of starting without it."""
        self._arriving += 1
        self.metrics.arriving = self._arriving
        try:
            yield
        finally:
            self._arriving -= 1
            self.metrics.arriving = self._arriving
            if self._wake is not None:
                self._wake.set()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish the requests still waiting, then stop the worker."""
        while self._queue and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, items: list, tokens: int, key: Any = None) -> list:
        """The results of ``run`` for ``items`` (``tokens`` in all), computed in a merged batch."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting).")
        assert self._wake is not None, "Batcher.start() was not called"
        job = _Job(items, tokens, key, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.metrics.queue_depth = len(self._queue)
        self._wake.set()
        return await job.future

    def _ready(self, key: Any) -> bool:
        """Whether the jobs waiting with ``key`` fill the token budget."""
        return sum(j.tokens for j in self._queue if j.key == key) >= self.max_batch_tokens

    def _take(self, key: Any) -> list[_Job]:
        jobs, tokens, kept = [], 0, deque()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # its client went away
                continue
            if job.key == key and (not jobs or tokens + job.tokens <= self.max_batch_tokens):
                jobs.append(job)
                tokens += job.tokens
            else:
                kept.append(job)
        self._queue = kept
        self.metrics.queue_depth = len(self._queue)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while self._queue and self._queue[0].future.done():  # its client went away
                self._queue.popleft()
                self.metrics.queue_depth = len(self._queue)
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._queue[0]
            while self._arriving and not self._ready(first.key):
                remaining = first.arrived + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = self._take(first.key)
            if jobs:
                await self._run_jobs(loop, jobs)

    async def _run_jobs(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self.run, items, jobs[0].key)
        except InputError as exc:
            if len(jobs) == 1:
                _settle(jobs[0], error=exc)
            for job in jobs if len(jobs) > 1 else []:  # find the request that caused it
                try:
                    _settle(job, await loop.run_in_executor(self._executor, self.run, job.items, job.key))
                except Exception as alone:  # noqa: BLE001 - handed to the request's handler
                    _settle(job, error=alone)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            for job in jobs:
                _settle(job, error=exc)
        else:
            start_at = 0
            for job in jobs:
                _settle(job, out[start_at:start_at + len(job.items)])
                start_at += len(job.items)
        self.metrics.batch(len(items), len(jobs), time.perf_counter() - start)


def _settle(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
