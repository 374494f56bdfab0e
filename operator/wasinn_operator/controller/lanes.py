"""Work the handlers hand off instead of awaiting: a few lanes of their own run it.

A kopf handler holds its event's body until it returns, and the task's next event waits for it.
Work that need not decide anything about the task (posting its Events) is queued here
instead; `count` tasks, started on first use, run the items one after another per lane. Items
with the same key share a lane, so one task's items run in the order they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("wasinn.operator")
T = TypeVar("T")


class Lanes(Generic[T]):
    """Runs `work(item)` for queued items; with `depth`, a full lane refuses an item."""

    def __init__(
        self, work: Callable[[T], Awaitable[None]], what: str, count: int = 4, depth: int = 0
    ) -> None:
        self._work = work
        self._what = what  # for the log: "post an Event", ...
        self._queues: list[asyncio.Queue[T]] = [asyncio.Queue(depth) for _ in range(count)]
        self._tasks: list[asyncio.Task[None]] = []

    def put(self, key: str, item: T) -> bool:
        """Queue `item` on `key`'s lane (never waits); False if that lane is full."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(q)) for q in self._queues]
        queue = self._queues[zlib.crc32(key.encode()) % len(self._queues)]
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def _run(self, queue: asyncio.Queue[T]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._work(item)
            except Exception as exc:  # one item's failure must not stop the lane
                log.warning("cannot %s: %s", self._what, exc)
            finally:
                queue.task_done()

    async def close(self, timeout: float) -> None:
        """Run what is queued, for at most `timeout` seconds, then stop the lanes."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
