"""The proplet's own messages besides results, in the shapes Propeller's Rust proplet sends.

`control/proplet/create` (id, namespace, metadata), `control/proplet/alive`,
`control/proplet/metrics` (this process's CPU and memory) and `control/proplet/task_metrics`
(one per finished run). Nothing here reads the task store: callers pass what they have.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CREATE_TOPIC = "control/proplet/create"
ALIVE_TOPIC = "control/proplet/alive"
METRICS_TOPIC = "control/proplet/metrics"
TASK_METRICS_TOPIC = "control/proplet/task_metrics"


def package_version() -> str:
    """The installed wasinn-operator version, `unknown` when it is not installed."""
    try:
        return version("wasinn-operator")
    except PackageNotFoundError:
        return "unknown"


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 with nanosecond room, as the manager parses it."""
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


WASM_RUNTIME = "wasinn (wasmtime + wasi-nn over OpenVINO)"


def proplet_metadata() -> dict[str, Any]:
    """What this machine runs on, in Propeller's PropletMetadata fields (pkg/proplet)."""
    return {
        "environment": "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "binary",
        "os": platform.system().lower(),
        "hostname": socket.gethostname(),
        "cpu_arch": platform.machine(),
        "total_memory_bytes": _total_memory(),
        "proplet_version": package_version(),
        "wasm_runtime": WASM_RUNTIME,
    }


def create_message(proplet_id: str, namespace: str) -> dict[str, Any]:
    """Discovery: who this proplet is and what it runs on."""
    return {"proplet_id": proplet_id, "namespace": namespace, "metadata": proplet_metadata()}


def alive_message(proplet_id: str, namespace: str) -> dict[str, str]:
    """The heartbeat."""
    return {"proplet_id": proplet_id, "status": "alive", "namespace": namespace}


class ProcessSampler:
    """CPU percent between samples, and memory, of this process and its workers."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu_seconds())

    @staticmethod
    def _usage() -> tuple[float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime

    def _cpu_seconds(self) -> float:
        return sum(self._usage())

    def metrics_message(self, proplet_id: str, namespace: str) -> dict[str, Any]:
        """`control/proplet/metrics`."""
        now, used = time.monotonic(), self._cpu_seconds()
        then, before = self._last
        self._last = (now, used)
        percent = 100.0 * (used - before) / (now - then) if now > then else 0.0
        user, system = self._usage()
        return {
            "proplet_id": proplet_id,
            "namespace": namespace,
            "timestamp": timestamp(),
            "cpu_metrics": {"user_seconds": user, "system_seconds": system, "percent": percent},
            "memory_metrics": {
                "rss_bytes": _rss_bytes(),
                "heap_alloc_bytes": 0,
                "heap_sys_bytes": 0,
                "heap_inuse_bytes": 0,
            },
        }


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")


def task_metrics_message(
    task_id: str, proplet_id: str, started: datetime | None, finished: datetime | None
) -> dict[str, Any]:
    """`control/proplet/task_metrics` for a finished run: how long it ran. Per-run CPU and
    memory are not sampled (runs share worker processes), so they are absent (zero)."""
    uptime = int((finished - started).total_seconds()) if started and finished else 0
    return {
        "task_id": task_id,
        "proplet_id": proplet_id,
        "metrics": {"uptime_seconds": max(uptime, 0)},
        "aggregated": None,
        "timestamp": timestamp(finished),
    }
