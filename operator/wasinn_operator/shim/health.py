"""`GET /health`: Propeller's health fields plus a check of every dependency.

Checks: the backend's own (local: `database`, written to now, and `workers`, the pool's
threads; kubernetes: `kubernetes`, the API server), `artifacts` (a file can be created and
synced in the artifact store), `disk` (free space under each data directory above the minimum)
and, when configured, `mqtt` (connected to the broker). Any failing check makes `status`
"fail" (and the HTTP status 503); each says what is wrong. Results are reused for a second, so
probes cannot turn /health into a write load.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..api.propeller import Check, Health
from .artifacts import ArtifactStore
from .config import BuildInfo
from .store import TaskStore

CACHE_SECONDS = 1.0
Probe = Callable[[], str | None]


def free_space(paths: list[Path], minimum: int) -> str | None:
    """None when every path's filesystem has `minimum` bytes free, else which does not."""
    short = []
    for path in paths:
        try:
            free = shutil.disk_usage(path).free
        except OSError as exc:
            short.append(f"{path}: {exc.strerror or exc}")
            continue
        if free < minimum:
            short.append(f"{path}: {free >> 20} MiB free, below the {minimum >> 20} MiB minimum")
    return "; ".join(short) or None


class HealthChecks:
    """The service's dependencies, checked on demand (at most once a second)."""

    def __init__(
        self,
        store: TaskStore,
        artifacts: ArtifactStore,
        min_free_bytes: int,
        paths: list[Path],
        build: BuildInfo | None = None,
    ) -> None:
        self._build = build or BuildInfo()
        self._probes: dict[str, Probe] = {
            "artifacts": artifacts.check_writable,
            "disk": lambda: free_space(paths, min_free_bytes),
        }
        self._store = store
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Check]] | None = None

    def add(self, name: str, probe: Probe) -> None:
        """Another dependency (e.g. `mqtt`)."""
        self._probes[name] = probe

    def run(self) -> dict[str, Check]:
        """Every check, by name."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
            found: dict[str, str | None] = {}
            try:
                found.update(self._store.checks())
            except Exception as exc:  # a check that fails to run is a failed check
                found["backend"] = f"{type(exc).__name__}: {exc}"
            for name, probe in self._probes.items():
                try:
                    found[name] = probe()
                except Exception as exc:
                    found[name] = f"{type(exc).__name__}: {exc}"
            checks = {
                name: Check(status="pass")
                if problem is None
                else Check(status="fail", output=problem)
                for name, problem in sorted(found.items())
            }
            self._cached = (time.monotonic(), checks)
            return checks

    def health(self, instance_id: str) -> Health:
        """The health answer."""
        checks = self.run()
        failed = any(check.status != "pass" for check in checks.values())
        return Health(
            status="fail" if failed else "pass",
            version=__version__,
            commit=self._build.commit,
            description="wasinn shim: Propeller manager API",
            build_time=self._build.build_time,
            instance_id=instance_id,
            checks=checks,
        )
