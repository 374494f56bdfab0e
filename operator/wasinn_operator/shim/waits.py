"""Long polls: `?wait=SECONDS` on `GET /tasks/{id}` and `GET /tasks/{id}/results`.

A client that wants a task's result as soon as it exists would otherwise poll, and on a small
machine each poll takes CPU from the inference it waits for. With `wait`, the answer comes as
soon as the task is no longer Scheduled or Running, or after `wait` seconds with the task as it
is then (the same answer as without `wait`): a client tells the two apart by `state`.

The backend tells `EndWaits.ended` which task's run may have ended (from its own threads); a
waiter then reads the task again. Nothing is lost if it says nothing (the kubernetes backend,
whose runs end in the operator's hands): every waiter reads its task again every `RECHECK`
seconds anyway. A waiter holds no thread while it waits, only an asyncio event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Query
from prometheus_client import CollectorRegistry, Gauge

from ..api.lifecycle import TaskPhase
from ..api.propeller import Task

MAX_WAIT = 60.0  # seconds; below common proxies' idle timeouts
RECHECK = 1.0  # seconds between reads when no end is heard of


class EndWaits:
    """Waiters for the end of a task's run, woken by `ended(task_id)` from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None, recheck: float = RECHECK) -> None:
        """With a `registry`, the gauge `wasinn_shim_waiting_requests` counts the waiters."""
        self.recheck = recheck
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        if registry is not None:
            Gauge(
                "wasinn_shim_waiting_requests",
                "Requests waiting for a task's run to end (?wait=)",
                registry=registry,
            ).set_function(self.waiting)

    def ended(self, task_id: str) -> None:
        """A run of `task_id` may have ended (or the task was deleted): wake its waiters."""
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    def waiting(self) -> int:
        """Requests waiting now."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    async def task(self, task_id: str, seconds: float, read: Callable[[], Awaitable[Task]]) -> Task:
        """The task (by `read`) once it is not Scheduled or Running, or after `seconds`."""
        loop = asyncio.get_running_loop()
        waiter = (loop, asyncio.Event())
        with self._lock:  # before the first read: an end between the read and the wait counts
            self._waiters.setdefault(task_id, []).append(waiter)
        try:
            deadline = loop.time() + seconds
            while True:
                waiter[1].clear()
                task = await read()
                left = deadline - loop.time()
                if not TaskPhase.of_state(task.state).active or left <= 0:
                    return task
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), min(left, self.recheck))
        finally:
            with self._lock:
                waiters = self._waiters[task_id]
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[task_id]


Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT,
        description="(not in Propeller) seconds to wait for the task's run to end before "
        "answering; the answer comes as soon as it is not Scheduled or Running",
    ),
]
