"""Task metrics samples in Propeller's `TaskMetrics` shape, kept per task.

The local backend records one sample per run from its warm worker: CPU time (user and system
seconds of the run) and the worker's resident memory at the end. External proplets' metrics
messages (`record`, from the MQTT side) land here too. Kept in memory, a bounded number per
task; a restart starts with none, as a Propeller manager with a fresh store.
"""

from __future__ import annotations

import collections
import threading
from datetime import datetime
from typing import Any

from .announce import timestamp
from .store import now

SAMPLES = 1000  # samples kept per task
TASKS = 10000  # tasks with samples; the oldest task's samples go first


class TaskMetricsStore:
    """Samples by task id, newest last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: collections.OrderedDict[str, collections.deque[dict[str, Any]]] = (
            collections.OrderedDict()
        )

    def record(self, task_id: str, sample: dict[str, Any]) -> None:
        """Keep one sample (`task_id`, `proplet_id`, `metrics`, `timestamp`, ...)."""
        with self._lock:
            samples = self._samples.get(task_id)
            if samples is None:
                samples = self._samples[task_id] = collections.deque(maxlen=SAMPLES)
                while len(self._samples) > TASKS:
                    self._samples.popitem(last=False)
            samples.append(dict(sample))

    def record_run(
        self,
        task_id: str,
        proplet_id: str,
        cpu_seconds: float,
        rss_bytes: int,
        wall_seconds: float,
        at: datetime | None = None,
    ) -> None:
        """One run's sample: CPU percent over the run's wall time, memory at its end."""
        percent = 100.0 * cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0
        self.record(
            task_id,
            {
                "task_id": task_id,
                "proplet_id": proplet_id,
                "metrics": {
                    "cpu_percent": round(percent, 3),
                    "memory_bytes": rss_bytes,
                    "memory_percent": 0.0,
                    "disk_read_bytes": 0,
                    "disk_write_bytes": 0,
                    "uptime_seconds": int(wall_seconds),
                    "thread_count": 0,
                },
                "cpu_seconds": round(cpu_seconds, 6),
                "timestamp": timestamp(at or now()),
            },
        )

    def page(self, task_id: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Samples `offset`..`offset+limit`, newest first, and how many there are."""
        with self._lock:
            samples = list(reversed(self._samples.get(task_id, ())))
        return samples[offset : offset + limit], len(samples)

    def forget(self, task_id: str) -> None:
        """Drop a deleted task's samples."""
        with self._lock:
            self._samples.pop(task_id, None)
