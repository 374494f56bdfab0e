"""Work a run's deadline gave up on, kept with the memory it uses until it ends.

OpenVINO cannot cancel every inference part way: a Loop runs its iterations to the end. When a
cancelled inference has not stopped within a grace period, its run ends as timed out without
it (`Deadline.abandon`), but the inference still reads the run's linear memory and writes its
request's output buffers. `keep` holds the store and the run's wasi-nn state until the
inference returns. Until then it spends a core nobody waits for: a long-lived worker asks
`count` after each task and, when it is not 0, reports and exits, so that a fresh process
takes the next tasks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_lock = threading.Lock()
_threads: set[threading.Thread] = set()  # each waiting for one run's abandoned work


def keep(waits: list[Callable[[], object]], *held: object) -> None:
    """Take every wait out of `waits` (each blocks until its work ends; usually there is none)
    and hold `held` until all of them have returned."""
    if not waits:
        return
    taken = list(waits)
    waits.clear()

    def linger(*_held: object) -> None:  # `held` is released when this returns
        for wait in taken:
            with contextlib.suppress(Exception):  # a cancelled inference ends with an error
                wait()
        with _lock:
            _threads.discard(threading.current_thread())

    thread = threading.Thread(target=linger, args=held, name="wasinn-lingering", daemon=True)
    with _lock:
        _threads.add(thread)
    thread.start()


def count() -> int:
    """Runs whose abandoned work is still running in this process."""
    with _lock:
        return len(_threads)
