"""The proplets the shim knows: its backend's own workers and external proplets seen on MQTT.

The backend's own (the local pool, or the cluster's OpenVINO nodes) come from
`TaskStore.proplets()` on every read. External proplets (Propeller's Rust proplet, embedded
ones) are added through this API by the MQTT side:

- `register(id, name, namespace, metadata)`: a `control/proplet/create` (counts as a heartbeat),
- `heartbeat(id, namespace)`: a `control/proplet/alive` (registers an unknown id, as Propeller's
  manager does),
- `set_task_count(id, n)`: kept by whoever dispatches tasks to it,
- `record_metrics(id, sample)`: a `control/proplet/metrics` message (any proplet, own included),
- `list(alive)`, `get(id)`, `external()`, `is_external(id)`: reads,
- `delete(id)`: forget an external proplet that runs nothing (409 otherwise, as Propeller);
  the backend's own cannot be deleted: they are this shim.

A proplet is alive when its last heartbeat is at most `ALIVE_SECONDS` old (Propeller's
`AliveTimeout`). Held in memory: a restarted shim learns external proplets again from their
next heartbeat, as a Propeller manager with an in-memory store does.
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
from .validation import check_id

ALIVE_SECONDS = 10.0  # Propeller's proplet.AliveTimeout
HISTORY = 100  # heartbeats kept per proplet
SAMPLES = 1000  # metrics samples kept per proplet
# Named here: inside the class, `list` is the method.
Records = list[PropletRecord]
Beats = list[datetime]
Samples = list[dict[str, Any]]


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

    def record(self, alive_seconds: float) -> PropletRecord:
        beats = list(self.history)
        alive = bool(beats) and (now() - beats[-1]).total_seconds() <= alive_seconds
        return PropletRecord(
            self.id,
            self.name,
            self.task_count,
            alive,
            beats,
            namespace=self.namespace,
            metadata=dict(self.metadata),
            external=True,
        )


class PropletRegistry:
    """Every proplet: the backend's own (`own()`, read each time) and the external ones."""

    def __init__(self, own: Callable[[], Records], alive_seconds: float = ALIVE_SECONDS) -> None:
        self._own = own
        self._alive_seconds = alive_seconds
        self._lock = threading.Lock()
        self._external: dict[str, _External] = {}
        self._samples: dict[str, collections.deque[dict[str, Any]]] = {}

    # Writes (the MQTT side).
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
        """How many tasks an external proplet runs now (unknown ids are ignored)."""
        with self._lock:
            if proplet_id in self._external:
                self._external[proplet_id].task_count = max(0, count)

    def record_metrics(self, proplet_id: str, sample: dict[str, Any]) -> None:
        """Keep one metrics sample (Propeller's PropletMetrics shape) of any proplet."""
        with self._lock:
            samples = self._samples.setdefault(proplet_id, collections.deque(maxlen=SAMPLES))
            samples.append(dict(sample))

    @property
    def alive_seconds(self) -> float:
        """How recent a heartbeat keeps a proplet alive."""
        return self._alive_seconds

    # Reads.
    def list(self, alive: bool | None = None) -> Records:
        """The backend's own proplets, then the external ones in order of registration;
        `alive` True or False keeps only the alive or the other ones."""
        own = self._own()
        with self._lock:
            found = own + [p.record(self._alive_seconds) for p in self._external.values()]
        return [p for p in found if alive is None or p.alive == alive]

    def external(self) -> Records:
        """The external proplets only (those a manager backend may dispatch to)."""
        with self._lock:
            return [p.record(self._alive_seconds) for p in self._external.values()]

    def is_external(self, proplet_id: str) -> bool:
        """Whether `proplet_id` is an external proplet this registry holds."""
        with self._lock:
            return proplet_id in self._external

    def get(self, proplet_id: str) -> PropletRecord:
        """One proplet; NotFoundError when unknown, BadRequestError when unknown and not a UUID
        (Propeller's entityReq; kubernetes node names, not UUIDs, are still found)."""
        for found in self.list():
            if found.id == proplet_id:
                return found
        check_id(proplet_id, "proplet")
        raise NotFoundError(f"proplet {proplet_id} not found")

    def alive_history(self, proplet_id: str, offset: int, limit: int) -> tuple[Beats, int]:
        """A page of the proplet's heartbeats, newest first, and their count."""
        beats = list(reversed(self.get(proplet_id).alive_history))
        return beats[offset : offset + limit], len(beats)

    def metrics(self, proplet_id: str, offset: int, limit: int) -> tuple[Samples, int]:
        """A page of the proplet's metrics samples, newest first, and their count (an empty
        page for an unknown id, as Propeller answers)."""
        with self._lock:
            samples = list(reversed(self._samples.get(proplet_id, ())))
        return samples[offset : offset + limit], len(samples)

    # Removal.
    def delete(self, proplet_id: str) -> None:
        """Forget an external proplet that runs no task (ConflictError while it does, or for
        the backend's own; NotFoundError when unknown)."""
        if any(p.id == proplet_id for p in self._own()):
            raise ConflictError(
                f"proplet {proplet_id} is this shim's own backend and cannot be deleted"
            )
        with self._lock:
            found = self._external.get(proplet_id)
            if found is None:
                check_id(proplet_id, "proplet")
                raise NotFoundError(f"proplet {proplet_id} not found")
            if found.task_count > 0:
                raise ConflictError(f"proplet {proplet_id} has {found.task_count} active tasks")
            del self._external[proplet_id]
            self._samples.pop(proplet_id, None)
