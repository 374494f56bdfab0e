"""The proplets the shim knows: its backend's own workers and external proplets seen on MQTT.

The backend's own (the local pool, or the cluster's OpenVINO nodes) come from
`TaskStore.proplets()` on every read; external proplets (Propeller's Rust proplet, embedded
ones) are added through this registry's API by the MQTT side: `register` (a
`control/proplet/create`), `heartbeat` (a `control/proplet/alive`, registering an unknown id as
Propeller's manager does), `record_metrics` (a proplet's metrics message) and `set_task_count`.
`delete` removes an external proplet that runs nothing (409 otherwise, as Propeller); the
backend's own cannot be deleted: they are this shim. Held in memory: a restarted shim learns
external proplets again from their next heartbeat, as a Propeller manager with a fresh store.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ConflictError, NotFoundError
from .store import PropletRecord, now

ALIVE_SECONDS = 10.0  # Propeller's proplet.AliveTimeout
HISTORY = 100  # heartbeats kept per proplet
SAMPLES = 1000  # metrics samples kept per proplet


@dataclass
class _External:
    id: str
    name: str
    namespace: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    task_count: int = 0
    history: collections.deque[datetime] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )

    def record(self) -> PropletRecord:
        beats = list(self.history)
        alive = bool(beats) and (now() - beats[-1]).total_seconds() <= ALIVE_SECONDS
        return PropletRecord(self.id, self.name, self.task_count, alive, beats)


class PropletRegistry:
    """Every proplet: `own()` (the backend's, read each time) and the external ones."""

    def __init__(self, own: Callable[[], list[PropletRecord]]) -> None:
        self._own = own
        self._lock = threading.Lock()
        self._external: dict[str, _External] = {}
        self._samples: dict[str, collections.deque[dict[str, Any]]] = {}

    # The API for the MQTT side.
    def register(
        self,
        proplet_id: str,
        name: str = "",
        namespace: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Add (or refresh) an external proplet; its registration counts as a heartbeat."""
        with self._lock:
            found = self._external.get(proplet_id)
            if found is None:
                found = self._external[proplet_id] = _External(proplet_id, name or proplet_id)
            found.name = name or found.name
            found.namespace = namespace or found.namespace
            if metadata:
                found.metadata = dict(metadata)
            found.history.append(now())

    def heartbeat(self, proplet_id: str, namespace: str = "", at: datetime | None = None) -> None:
        """An external proplet is alive (registered first when unknown)."""
        with self._lock:
            found = self._external.get(proplet_id)
            if found is None:
                found = self._external[proplet_id] = _External(proplet_id, proplet_id)
            found.namespace = namespace or found.namespace
            found.history.append(at or now())

    def set_task_count(self, proplet_id: str, count: int) -> None:
        """How many tasks an external proplet runs now (kept by whoever dispatches to it)."""
        with self._lock:
            if proplet_id in self._external:
                self._external[proplet_id].task_count = max(0, count)

    def record_metrics(self, proplet_id: str, sample: dict[str, Any]) -> None:
        """Keep one metrics sample (Propeller's PropletMetrics shape) of any known proplet."""
        with self._lock:
            samples = self._samples.setdefault(proplet_id, collections.deque(maxlen=SAMPLES))
            samples.append(dict(sample))

    def metadata(self, proplet_id: str) -> dict[str, Any]:
        """What an external proplet announced about itself ({} for the backend's own)."""
        with self._lock:
            found = self._external.get(proplet_id)
            return dict(found.metadata) if found else {}

    # Reads (the REST routes).
    def proplets(self) -> list[PropletRecord]:
        """The backend's own proplets, then the external ones in order of registration."""
        own = self._own()
        with self._lock:
            return own + [p.record() for p in self._external.values()]

    def get(self, proplet_id: str) -> PropletRecord:
        """One proplet; NotFoundError when unknown."""
        for found in self.proplets():
            if found.id == proplet_id:
                return found
        raise NotFoundError(f"proplet {proplet_id} not found")

    def alive_history(self, proplet_id: str, offset: int, limit: int) -> tuple[list[datetime], int]:
        """A page of the proplet's heartbeats, newest first, and their count."""
        beats = list(reversed(self.get(proplet_id).alive_history))
        return beats[offset : offset + limit], len(beats)

    def metrics(self, proplet_id: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the proplet's metrics samples, newest first, and their count (an empty
        page for an unknown id, as Propeller)."""
        with self._lock:
            samples = list(reversed(self._samples.get(proplet_id, ())))
        return samples[offset : offset + limit], len(samples)

    def delete(self, proplet_id: str) -> None:
        """Forget an external proplet that runs no task."""
        if any(p.id == proplet_id for p in self._own()):
            raise ConflictError(
                f"proplet {proplet_id} is this shim's own backend and cannot be deleted"
            )
        with self._lock:
            found = self._external.get(proplet_id)
            if found is None:
                raise NotFoundError(f"proplet {proplet_id} not found")
            if found.task_count > 0:
                raise ConflictError(f"proplet {proplet_id} has {found.task_count} active tasks")
            del self._external[proplet_id]
            self._samples.pop(proplet_id, None)
