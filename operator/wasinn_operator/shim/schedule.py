"""The scheduler's ticker: once a second, start (or skip) the group tasks whose dependencies
finished (`JobService.advance`). It runs in a thread for the application's lifetime; a failing
tick is logged and the next one tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

TICK_SECONDS = 1.0
log = logging.getLogger("wasinn.shim.schedule")


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
        while not self._stopping.wait(self._period):
            try:
                self._tick()
            except Exception:  # a bug or a failing database must not end the schedule
                log.exception("a scheduler tick failed")
