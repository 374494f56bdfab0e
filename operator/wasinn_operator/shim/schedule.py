"""The scheduler: once a second, advance job and workflow dependents and start cron tasks.

Each tick reads every task once, lets `JobService.advance` start (or skip) the group tasks whose
dependencies finished, and starts every task whose `schedule` has a `next_run` that is due, as
Propeller's cron scheduler does. A recurring task (`is_recurring`) gets the following `next_run`
of its schedule (in its `timezone`) before it is started; any other runs once (its `next_run`
and `schedule` become unset, as Propeller's scheduler leaves them). The `next_run` is moved
first, so a tick that fails half way never starts a task twice. A due task that is still running
misses that run (logged), as a task cannot run twice at once; one that cannot start (no module,
refused by the policy) is recorded Failed with the reason. Both backends: the ordering is done
here, above them.

The `Ticker` runs a tick in a thread for the application's lifetime (every second, longer when
ticks take long); a failing tick is logged and the next one tries again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from ..api import cron
from ..api.times import maybe_time, propeller_time
from .errors import ConflictError, NotFoundError, ShimError
from .jobs import JobService, every_task
from .service import TaskService
from .store import TaskRecord, now

TICK_SECONDS = 1.0
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
log = logging.getLogger("wasinn.shim.schedule")


class Scheduler:
    """What one tick does: dependents (`JobService.advance`) and due cron tasks."""

    def __init__(self, service: TaskService, jobs: JobService) -> None:
        self.service = service
        self.jobs = jobs

    def tick(self, at: datetime | None = None) -> None:
        """One pass over every task at time `at` (now)."""
        records = list(every_task(self.service))
        self.jobs.advance(records)
        self.run_due(records, at or now())

    def run_due(self, records: list[TaskRecord], at: datetime) -> None:
        """Start every task whose `next_run` is at or before `at`."""
        for record in records:
            schedule = record.extra.get("schedule")
            due = maybe_time(record.extra.get("next_run"))
            if not schedule or due is None or due > at:
                continue
            try:
                if self.service.change_extra(record.id, _advance(due, at)):
                    self._start(record.id)
            except NotFoundError:
                continue  # deleted meanwhile

    def _start(self, task_id: str) -> None:
        try:
            if self.service.task_phase(task_id).active:
                log.info("task %s is still running: its scheduled run is missed", task_id)
                return
            self.service.start(task_id)
        except NotFoundError:
            return  # deleted meanwhile
        except ShimError as exc:
            log.warning("scheduled run of task %s could not start: %s", task_id, exc)
            with contextlib.suppress(NotFoundError, ConflictError):
                self.service.fail(task_id, f"scheduled run: {exc}")


def _advance(due: datetime, at: datetime) -> Callable[[dict[str, Any]], bool]:
    """The change that moves a task's `next_run` past `at` (or unsets it), if it still is
    `due` (another tick, or a client's update, may have moved it)."""

    def change(extra: dict[str, Any]) -> bool:
        if maybe_time(extra.get("next_run")) != due or not extra.get("schedule"):
            return False
        following = None
        if extra.get("is_recurring"):
            try:
                following = cron.next_run(extra["schedule"], at, extra.get("timezone") or "")
            except cron.CronError:
                following = None  # stored under an older parser: run this once, then stop
        if following is None:  # ran once: Propeller clears the schedule with the next run
            extra.pop("next_run", None)
            extra.pop("schedule", None)
        else:
            extra["next_run"] = propeller_time(following)
        return True

    return change


class Ticker:
    """Calls `tick()` every `period` seconds in a thread, between `start()` and `stop()`."""

    def __init__(self, tick: Callable[[], None], period: float = TICK_SECONDS) -> None:
        self._tick = tick
        self._period = period
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start ticking (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wasinn-schedule", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop ticking and wait for a tick under way."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        took = 0.0
        # A tick reads every task (on kubernetes: a list of every WasiNNTask): with many tasks
        # it takes a while, and the pause after it grows with it, so ticks never take more
        # than a third of the shim's time from the requests it serves.
        while not self._stopping.wait(self._period + 2 * took):
            started = time.monotonic()
            try:
                self._tick()
            except Exception:  # a bug or a failing database must not end the schedule
                log.exception("a scheduler tick failed")
            took = time.monotonic() - started


def with_ticker(ticker: Ticker, inner: Lifespan | None = None) -> Lifespan:
    """An application lifespan that runs `ticker` around `inner` (the caller's own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ticker.start()
        try:
            if inner is None:
                yield
            else:
                async with inner(app):
                    yield
        finally:
            ticker.stop()

    return lifespan
