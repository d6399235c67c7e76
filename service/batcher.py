"""Micro-batching: concurrent requests share one forward pass.

Requests are queued; a single loop takes the first, collects more for at most `window_s` (or until
`max_batch`), and runs the batch function in a dedicated worker thread so the event loop is never
blocked. While a batch runs, the next one forms in the queue.

The window is only waited for while other requests are known to be on their way (announced with
`incoming()` and still decoding/preprocessing): a lone request is not delayed by the window, which
keeps single-client latency at the forward pass's own time. A request that finds the batcher idle
can go further with `solo`: its whole work runs in the batch thread at once, one thread hop
instead of three (each hop wakes a sleeping thread, which adds to the request's latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import NotReady

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


@dataclass(frozen=True)
class BatchStats:
    """How one request was served: batch size, time queued and time in the batch function (s)."""

    batch_size: int
    queued_s: float
    run_s: float


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, BatchStats]]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Runs `fn(items) -> results` (same length, same order) on batches of submitted items."""

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], window_s: float, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._expected = 0
        self._running = 0  # batches and solo calls handed to the worker thread, not yet finished
        # One worker: batches run one after another; torch already uses every core inside one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvm-forward")

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="cvm-micro-batcher")

    async def stop(self) -> None:
        """Stop the loop; queued requests fail with NotReady."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _fail([self._queue.get_nowait()], NotReady("the service is shutting down"))
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that will `submit` soon, so a forming batch waits for it."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1

    def idle(self) -> bool:
        """Nothing queued, running or announced: a new request would be a batch of one."""
        return self._running == 0 and self._expected == 0 and (self._queue is None or self._queue.empty())

    async def solo(self, fn: Callable[[], S]) -> S:
        """Run `fn()` in the batch thread, as a batch of one that needs no queue and no window.

        Meant for a request that found the batcher `idle()`. Batches formed meanwhile wait for it.
        """
        if self._task is None or self._task.done():
            raise NotReady("the inference loop is not running")
        self._running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self._running -= 1

    async def submit(self, item: T) -> tuple[R, BatchStats]:
        """Queue one item and wait for its result."""
        if self._queue is None or self._task is None or self._task.done():
            raise NotReady("the inference loop is not running")
        future: asyncio.Future[tuple[R, BatchStats]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, future, time.perf_counter()))
        return await future

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            if queue.empty() and self._expected == 0:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                while not queue.empty() and len(batch) < self.max_batch:
                    batch.append(queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            try:
                await self._run(batch)
            except asyncio.CancelledError:
                _fail(batch, NotReady("the service is shutting down"))
                raise

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            started, results = await loop.run_in_executor(
                self._executor, self._timed, [p.item for p in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)}")
        except Exception as exc:
            _fail(batch, exc)
            return
        finally:
            self._running -= 1
        run_s = time.perf_counter() - started
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():  # the client may have gone away meanwhile
                p.future.set_result((result, BatchStats(len(batch), started - p.enqueued, run_s)))

    def _timed(self, items: Sequence[T]) -> tuple[float, Sequence[R]]:
        # Started in the worker: time spent waiting for a solo call counts as queued.
        return time.perf_counter(), self.fn(items)


def _fail(batch: Sequence[_Pending[T, R]], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
