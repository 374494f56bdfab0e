"""The local backend's pool: threads that run queued jobs, `slots` at a time, where a job that
runs for long gives its slot to the next one.

Endless and long guests must not hold the queue up: a job running for more than `long_after`
seconds stops counting against `slots` and runs on as one of at most `long_slots` long jobs, so
the next queued job starts at once. Only more than `slots + long_slots - 1` simultaneous long
jobs make a short one wait (for a slot to end: the task deadline bounds that). Short jobs never
run more than `slots` at once, so a burst does not oversubscribe the CPU or start more warm
workers than `slots`.

Queued jobs start highest priority first (Propeller's task `priority`), in queue order among
equals.

A job's failure (any exception) is logged and ends that job only: a pool thread never dies of
one, so the pool keeps running through a full disk or a failing database.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("wasinn.shim.pool")
Job = TypeVar("Job")


@dataclass
class _Running:
    started: float
    holds_slot: bool = True


class Pool(Generic[Job]):
    """Runs `handle(job)` for each queued job on `slots + long_slots` threads."""

    def __init__(
        self,
        handle: Callable[[Job], None],
        slots: int,
        long_slots: int,
        long_after: float,
        name: str = "wasinn-pool",
    ) -> None:
        self.slots = max(1, slots)
        self.long_slots = max(0, long_slots)
        self.long_after = long_after
        self._handle = handle
        # (-priority, order, job): the highest priority first, then first come first served;
        # `order` is unique, so jobs themselves are never compared.
        self._queue: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._state = threading.Condition()
        self._free = self.slots  # slots no thread holds
        self._long = 0  # jobs running past `long_after`, off the slots
        self._running: dict[int, _Running] = {}
        self._closing = False
        count = self.slots + self.long_slots
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        self._watcher = threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True)
        for thread in [*self._threads, self._watcher]:
            thread.start()

    def put(self, job: Job, priority: int = 0) -> None:
        """Queue a job; a higher `priority` runs before lower ones still queued."""
        self._queue.put((-priority, next(self._order), job))

    def running(self) -> int:
        """Jobs running now."""
        with self._state:
            return len(self._running)

    def problem(self) -> str | None:
        """None while every pool thread is alive, else how many died."""
        dead = sum(not t.is_alive() for t in [*self._threads, self._watcher])
        if dead and not self._closing:
            return f"{dead} of {len(self._threads) + 1} pool threads died"
        return None

    def close(self, timeout: float = 10) -> None:
        """Stop taking jobs; wait up to `timeout` s for the threads (running jobs are the
        caller's to end first)."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        for _ in self._threads:
            self._queue.put((-(1 << 62), next(self._order), None))  # before any job
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, self._watcher]:
            thread.join(max(0.0, deadline - time.monotonic()))

    # Threads.
    def _serve(self) -> None:
        me = threading.get_ident()
        while self._take_slot():
            _, _, job = self._queue.get()
            if job is None or self._closing:
                return
            with self._state:
                self._running[me] = _Running(time.monotonic())
            try:
                self._handle(job)
            except Exception:  # a bug or an OS failure ends the job, never the thread
                log.exception("a pool job failed")
            finally:
                with self._state:
                    run = self._running.pop(me)
                    if not run.holds_slot:
                        self._long -= 1
            if run.holds_slot:
                self._give_back_slot()  # so that `_take_slot` finds it again

    def _take_slot(self) -> bool:
        with self._state:
            while self._free == 0 and not self._closing:
                self._state.wait()
            if self._closing:
                return False
            self._free -= 1
            return True

    def _give_back_slot(self) -> None:
        with self._state:
            self._free += 1
            self._state.notify()

    def _watch(self) -> None:
        period = min(0.25, self.long_after / 4) if self.long_after > 0 else 0.25
        while True:
            with self._state:
                if self._closing:
                    return
                moment = time.monotonic()
                for run in self._running.values():
                    if self._long >= self.long_slots:
                        break
                    if run.holds_slot and moment - run.started > self.long_after:
                        run.holds_slot = False
                        self._long += 1
                        self._free += 1
                        self._state.notify()
                self._state.wait(period)
