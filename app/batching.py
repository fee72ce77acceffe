"""Micro-batching: forecasts requested together share one forward pass.

A DCRNN forward pass over 207 sensors costs nearly the same for a batch of 8 windows as for one, so
when requests arrive together the service stacks them. One worker task takes the first waiting
request, waits ``window_ms`` for more (up to ``max_size``), and runs the stack in the inference
thread pool; requests that arrive while a batch runs form the next one, so under load batches grow
by themselves and at rest a request waits only ``window_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

BatchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Item:
    speeds: np.ndarray
    timestamps: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Collects single-window forecasts into batches for ``fn``.

    Shapes: ``fn(speeds (B, seq_len, N), timestamps (B, seq_len)) -> (B, horizon, N)``;
    ``submit(speeds (seq_len, N), timestamps (seq_len,)) -> (horizon, N)``.
    """

    def __init__(
        self,
        fn: BatchFn,
        executor: Executor,
        window_ms: float,
        max_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.window_s = window_ms / 1000.0
        self.max_size = max_size
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.accepting = True

    async def close(self) -> None:
        """Take no new work, finish what is queued, then stop: how a swapped-out model's batcher
        retires without failing the requests already waiting on it."""
        self.accepting = False
        if self._task is not None and not self._task.done():
            await self._queue.join()
        await self.stop()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, speeds: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        if self._task is None or self._task.done():
            raise RuntimeError("the micro-batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(speeds, timestamps, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = [await self._queue.get()]
            try:
                if self.window_s > 0 and self.max_size > 1:
                    await asyncio.sleep(self.window_s)
                while len(taken) < self.max_size and not self._queue.empty():
                    taken.append(self._queue.get_nowait())
                await self._answer(loop, taken)
            finally:
                for _ in taken:
                    self._queue.task_done()

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        # A client that went away cancelled its future; do not spend a forward pass on it.
        batch = [item for item in batch if not item.future.done()]
        if not batch:
            return
        speeds = np.stack([item.speeds for item in batch])  # (B, seq_len, N)
        stamps = np.stack([item.timestamps for item in batch])  # (B, seq_len)
        try:
            out = await loop.run_in_executor(self.executor, self.fn, speeds, stamps)
        except Exception as exc:  # every waiter gets the error, the worker keeps serving
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for k, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(out[k])
