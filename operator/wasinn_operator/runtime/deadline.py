"""A run's wall-clock deadline, as host calls see it.

wasmtime's epoch interruption stops a guest only while it runs wasm code; a guest blocked in a
host call (a WASI sleep, a wasi-nn inference) would overrun its timeout by however long the
call takes. Host calls that can wait therefore wait at most until the deadline and then raise
`DeadlineError`, which ends the run as timed out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NoReturn


class HostTrapError(Exception):
    """Raised by a host function to end the run with a trap carrying this message."""


class DeadlineError(HostTrapError):
    """The run's deadline passed during a host call."""


class Deadline:
    """A monotonic deadline (None: no deadline) and whether a host call acted on it."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout
        self.hit = False
        # Waits for work a host call gave up on that still uses the run's memory (`abandon`).
        self.abandoned: list[Callable[[], object]] = []

    @property
    def end(self) -> float:
        """The deadline on `time.monotonic`'s clock (inf without one)."""
        return math.inf if self._end is None else self._end

    def remaining(self) -> float:
        """Seconds left (inf without a deadline; never negative)."""
        if self._end is None:
            return math.inf
        return max(0.0, self._end - time.monotonic())

    def check(self, during: str) -> None:
        """Raise `DeadlineError` if the deadline has passed."""
        if self._end is not None and time.monotonic() >= self._end:
            self.expire(during)

    def abandon(self, during: str, wait: Callable[[], object]) -> NoReturn:
        """End the run without waiting for work that would not stop (`wait` blocks until it
        ends): the runtime keeps the run's memory until then (`lingering`)."""
        self.abandoned.append(wait)
        self.expire(during)

    def expire(self, during: str) -> NoReturn:
        """Record that the deadline ended the run during `during`, and raise."""
        self.hit = True
        raise DeadlineError(f"the run's deadline passed during {during}")
