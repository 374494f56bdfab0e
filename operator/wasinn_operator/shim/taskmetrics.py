"""Task metrics samples in Propeller's `TaskMetrics` shape, kept per task.

The local backend records one sample per run from its warm worker: CPU time (user and system
seconds of the run) and the worker's resident memory at the end. External proplets' metrics
messages (`record`, from the MQTT side) land here too. Kept in memory, a bounded number per
task; a restart starts with none, as a Propeller manager with a fresh store.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..api.times import parse_time
from .announce import timestamp
from .store import now

SAMPLES = 1000  # samples kept per task
TASKS = 10000  # tasks with samples; the oldest task's samples go first
# Propeller's pkg/proplet ProcessMetrics and AggregatedMetrics: each field and its Go type
# (float, or a whole number in the type's range, as Go converts a JSON number to it).
U64 = (0, (1 << 64) - 1)
I64 = (-(1 << 63), (1 << 63) - 1)
I32 = (-(1 << 31), (1 << 31) - 1)
PROCESS: dict[str, tuple[int, int] | None] = {
    "cpu_percent": None,
    "memory_bytes": U64,
    "memory_percent": None,
    "disk_read_bytes": U64,
    "disk_write_bytes": U64,
    "uptime_seconds": I64,
    "thread_count": I32,
}
OMITTED_WHEN_ZERO = {"file_descriptor_count": I32}
AGGREGATED: dict[str, tuple[int, int] | None] = {
    "avg_cpu_usage": None,
    "max_cpu_usage": None,
    "avg_memory_usage": U64,
    "max_memory_usage": U64,
    "total_disk_read": U64,
    "total_disk_write": U64,
    "sample_count": I64,
}


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


def from_proplet(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """A proplet's `control/proplet/task_metrics` message as Propeller stores it (see the
    module's docstring); None when `task_id` or `proplet_id` is not a text (Propeller drops
    those). A `timestamp` that is not RFC 3339 becomes the time it arrived, as there."""
    task_id, proplet_id = message.get("task_id"), message.get("proplet_id")
    if not (isinstance(task_id, str) and task_id and isinstance(proplet_id, str)):
        return None
    given = message.get("metrics")
    metrics = _fields(given if isinstance(given, Mapping) else {}, PROCESS)
    if isinstance(given, Mapping):
        metrics |= {k: v for k, v in _fields(given, OMITTED_WHEN_ZERO).items() if v}
    sample: dict[str, Any] = {"task_id": task_id, "proplet_id": proplet_id, "metrics": metrics}
    aggregated = message.get("aggregated")
    if isinstance(aggregated, Mapping):
        sample["aggregated"] = _fields(aggregated, AGGREGATED)
    sample["timestamp"] = timestamp(_moment(message.get("timestamp")))
    return sample


def _fields(
    given: Mapping[str, Any], fields: Mapping[str, tuple[int, int] | None]
) -> dict[str, Any]:
    """Each field from `given` when it is a JSON number, else zero; whole-number fields cut
    toward zero and kept in their Go type's range."""
    found: dict[str, Any] = {}
    for name, whole in fields.items():
        value = given.get(name)
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
        if not math.isfinite(number):
            number = 0  # not a JSON number (Python's json reads NaN and Infinity)
        if whole is None:
            found[name] = float(number)
        else:
            found[name] = min(max(int(number), whole[0]), whole[1])
    return found


def _moment(value: object) -> datetime:
    if isinstance(value, str) and "T" in value:
        try:
            moment = parse_time(value)
        except ValueError:
            pass
        else:
            if moment.utcoffset() is not None:
                return moment
    return datetime.now(UTC)
