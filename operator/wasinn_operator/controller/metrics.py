"""Prometheus metrics of the operator: tasks by phase, durations, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api.times import maybe_time
from .phases import TaskPhase

TASK_DURATION = Histogram(
    "wasinn_task_duration_seconds",
    "Start to completion of finished tasks",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
POD_START_LATENCY = Histogram(
    "wasinn_pod_start_latency_seconds",
    "Pod creation to the proplet running",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
RECONCILE_ERRORS = Counter("wasinn_reconcile_errors_total", "Reconciles that raised an error")
EVENTS_DROPPED = Counter(
    "wasinn_events_dropped_total", "Kubernetes Events not posted: the API server lagged behind"
)


class PhaseCollector(Collector):
    """`wasinn_tasks{phase}`: the phase each known task was last seen in."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("wasinn_tasks", "Tasks by phase", labels=["phase"])
        for phase in TaskPhase:
            family.add_metric([phase.value], sum(p == phase for p in self.phases.values()))
        yield family


class WarmCollector(Collector):
    """`wasinn_warm_queue_depth{pool}`: warm tasks waiting for or assigned to a worker and not
    yet started; `wasinn_warm_running{pool}`: those a worker runs. Queue depth is what an HPA
    (through a metrics adapter) or KEDA's prometheus scaler scales the worker Deployment on."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[str, str]] = {}  # uid -> (pool, queued | running)
        self.pools: set[str] = set()

    def track(self, uid: str, pool: str, state: str | None) -> None:
        """Record a warm task's state (None: finished, no longer counted)."""
        self.pools.add(pool)
        if state is None:
            self.tasks.pop(uid, None)
        else:
            self.tasks[uid] = (pool, state)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, state, text in (
            ("wasinn_warm_queue_depth", "queued", "Warm tasks not yet started, per pool"),
            ("wasinn_warm_running", "running", "Warm tasks running on a worker, per pool"),
        ):
            family = GaugeMetricFamily(name, text, labels=["pool"])
            for pool in sorted(self.pools):
                count = sum(t == (pool, state) for t in self.tasks.values())
                family.add_metric([pool], count)
            yield family


PHASES = PhaseCollector()
REGISTRY.register(PHASES)
WARM = WarmCollector()
REGISTRY.register(WARM)


def observe(uid: str, before: dict[str, Any], after: dict[str, Any], pods: list[Any]) -> None:
    """Update the metrics for one task's transition."""
    PHASES.phases[uid] = str(after.get("phase", TaskPhase.PENDING))
    old, new = before.get("phase"), after.get("phase")
    if new == old:
        return
    if new == TaskPhase.RUNNING:
        for pod in pods:
            if pod["metadata"]["name"] == after.get("podName"):
                created = _time(pod["metadata"].get("creationTimestamp"))
                started = _time((pod.get("status") or {}).get("startTime"))
                if created and started:
                    POD_START_LATENCY.observe(max((started - created).total_seconds(), 0))
    if new in (TaskPhase.COMPLETED, TaskPhase.FAILED):
        start, end = _time(after.get("startTime")), _time(after.get("completionTime"))
        if start and end:
            TASK_DURATION.observe(max((end - start).total_seconds(), 0))


def forget(uid: str) -> None:
    """A task was deleted."""
    PHASES.phases.pop(uid, None)
    WARM.tasks.pop(uid, None)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port)


def _time(value: str | None) -> datetime | None:
    return maybe_time(value)
