"""Manager mode: which proplet runs a started task, and the messages that drive external ones.

The shim is a Propeller manager toward the proplets that announce themselves on its channel
(`proplets.py` holds them). On start, Propeller's selection (manager/service.go StartTask):

- `proplet_id` naming an external proplet: it must be alive; `control/manager/start` goes to
  it and the task is Running until its result arrives;
- `broadcast`: one `control/manager/start` without a `proplet_id`, which every proplet on the
  channel runs; the first result ends the task. With no external proplet alive the shim's own
  backend runs it (as before manager mode), so a broadcast task never waits for nobody;
- neither: the shim's own backend (local or kubernetes). With `round_robin` the backend and
  the alive external proplets take turns, as Propeller's round-robin scheduler picks among
  alive proplets. Off by default, deliberately: a task created through this API expects the
  models directory and policy of this shim, which an external proplet may not have.

The start message is Propeller's `startPayload` (manager/service.go publishStart; the Rust
proplet's `StartRequest` in proplet/src/types.rs parses it). A result on
`control/proplet/results` for a dispatched run ends it through the lifecycle (Completed, or
Failed when `error` is a non-empty string, as updateResultsHandler decides). Stop publishes
`control/manager/stop` `{id, broadcast, proplet_id}` and records the run Failed at once, as
for the shim's own runs. A proplet that stops heartbeating while it holds a run fails that run
with an error naming it and when it was last alive: re-dispatching could run a task with side
effects twice, and the client can start it again. Runs are tracked in memory: a restarted shim
records its Running tasks interrupted (the local backend's recovery); on kubernetes the
WasiNNTasks keep the dispatched runs and `recover` takes them up again.

Proplets' `control/proplet/task_metrics` about dispatched tasks are kept with the shim's own
task metrics, decoded as Propeller's ProcessMetrics (`taskmetrics.from_proplet`). Transport
stays in the bridge: it hands `connect` a `send(topic suffix, body) -> acked`.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..api.lifecycle import TaskPhase
from ..api.times import propeller_time
from .artifacts import ArtifactStore
from .errors import ConflictError, NotFoundError, ShimError, UnavailableError
from .proplets import PropletRegistry
from .store import Outcome, PropletRecord, TaskRecord, TaskStore
from .taskmetrics import TaskMetricsStore, from_proplet

START_TOPIC = "control/manager/start"
STOP_TOPIC = "control/manager/stop"
RESULTS_LIMIT = 1 << 20  # characters of a proplet's results kept, as for the shim's own runs
MAX_TEXT = 1024  # characters of a text a proplet announces
# Propeller's PropletMetadata (pkg/proplet/proplet.go), as createPropletHandler reads it.
METADATA_TEXT = ("description", "location", "ip", "environment", "os", "hostname", "cpu_arch",
                 "proplet_version", "wasm_runtime")  # fmt: skip
MAX_TAGS = 64
SENT_KEPT = 10_000  # ids of dispatched tasks remembered, to know the own messages coming back
Send = Callable[[str, Mapping[str, Any]], bool]
log = logging.getLogger("wasinn.shim.dispatch")


@dataclass(frozen=True)
class Placement:
    """A run handed to external proplets: `proplets` it went to (all alive ones for a
    broadcast), and the task as it was before the start (Propeller sends that state)."""

    task_id: str
    run: int
    proplets: tuple[str, ...]
    broadcast: bool
    state: int


class Dispatcher:
    """Selects proplets, sends start and stop, and ends runs from results and liveness."""

    def __init__(
        self,
        store: TaskStore,
        artifacts: ArtifactStore,
        registry: PropletRegistry,
        own_id: str,
        *,
        round_robin: bool = False,
        task_metrics: TaskMetricsStore | None = None,
    ) -> None:
        """`round_robin`: tasks addressed to no proplet take turns between the backend and the
        alive external proplets."""
        self.store = store
        self.task_metrics = task_metrics
        self.artifacts = artifacts
        self.registry = registry
        self.own_id = own_id
        self.round_robin = round_robin
        self._send: Send | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, Placement] = {}
        self._sent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._cursor = 0
        # Until then, runs taken up again after a restart (`recover`) are not failed for a
        # proplet the registry has not heard from yet (it learns them from their heartbeats).
        self._recovered_until = 0.0

    def connect(self, send: Send) -> None:
        """The bridge's publisher (QoS as configured; True once the broker acknowledged)."""
        self._send = send

    # Selection.
    def select(self, record: TaskRecord) -> tuple[tuple[str, ...], bool] | None:
        """The external proplets to start `record` on and whether it is a broadcast; None
        when the shim's own backend runs it. `ConflictError` for a named proplet not alive."""
        if self._send is None or record.extra.get("latent"):
            return None  # latent tasks wait for invocations, which the shim answers itself
        alive = [p for p in self.registry.external() if p.alive]
        if record.extra.get("broadcast"):
            return (tuple(p.id for p in alive), True) if alive else None
        if record.proplet_id and self.registry.is_external(record.proplet_id):
            if not any(p.id == record.proplet_id for p in alive):
                raise ConflictError(f"specified proplet {record.proplet_id} is not alive")
            return (record.proplet_id,), False
        if record.proplet_id or not self.round_robin or not alive:
            return None
        picked = self._next([None, *alive])
        return None if picked is None else ((picked.id,), False)

    def _next(self, candidates: list[PropletRecord | None]) -> PropletRecord | None:
        """Round robin as Propeller's scheduler: advance, then take (None: the backend)."""
        with self._lock:
            self._cursor = (self._cursor + 1) % len(candidates)
            return candidates[self._cursor]

    def owns(self, task_id: str) -> bool:
        """Whether this shim dispatched task `task_id` (its own start and stop messages come
        back to it on the channel, maybe after the run ended: the proplet role ignores them)."""
        with self._lock:
            return task_id in self._sent

    # Start and stop.
    def place(self, record: TaskRecord) -> Placement | None:
        """Select and record the run Running on the chosen proplets (None: the backend runs
        it; nothing changed). The caller then calls `send_start` without holding locks."""
        chosen = self.select(record)
        if chosen is None:
            return None
        proplets, broadcast = chosen
        running = self.store.dispatch(record.id, "" if broadcast else proplets[0], proplets)
        placement = Placement(record.id, running.run, proplets, broadcast, record.phase.state)
        self._hold(placement)
        return placement

    def _hold(self, placement: Placement) -> None:
        with self._lock:
            self._runs[placement.task_id] = placement
            self._sent[placement.task_id] = None
            self._sent.move_to_end(placement.task_id)
            while len(self._sent) > SENT_KEPT:
                self._sent.popitem(last=False)
        self._count()

    def recover(self) -> int:
        """Take up the dispatched runs the store still holds under way (kubernetes, after a
        shim restart: the WasiNNTasks keep them), so their results are recorded when they
        arrive; how many. A result published while the shim was down is lost with the
        broker's message: the operator fails that run at its deadline, saying so."""
        runs = self.store.dispatched()
        for run in runs:
            self._hold(Placement(run.task_id, run.run, run.proplets, run.broadcast, 0))
        if runs:
            self._recovered_until = time.monotonic() + self.registry.alive_seconds
            log.info("took up %d dispatched run(s) again", len(runs))
        return len(runs)

    def send_start(self, placement: Placement) -> None:
        """Publish the start; when the broker does not take it the run fails (as Propeller
        records "failed to publish start message") and `UnavailableError` says so."""
        try:
            record = self.store.get(placement.task_id)
            payload = self.start_payload(record, placement)
            sent = self._send is not None and self._send(START_TOPIC, payload)
            problem = "" if sent else "the broker did not acknowledge it"
        except (ShimError, OSError) as exc:
            problem = str(exc)
        if problem:
            error = f"failed to publish start message: {problem}"
            self._end(placement, Outcome(TaskPhase.FAILED, error=error))
            raise UnavailableError(f"task {placement.task_id}: {error}")

    def start_payload(self, record: TaskRecord, placement: Placement) -> dict[str, Any]:
        """Propeller's startPayload (Go's omitempty kept): the module as base64 `file`."""
        extra = record.extra
        payload: dict[str, Any] = {"id": record.id, "name": record.name, "state": placement.state}
        if record.image_url:
            payload["image_url"] = record.image_url
        if record.digest:
            module = self.artifacts.path(record.digest).read_bytes()
            payload["file"] = base64.b64encode(module).decode()
        if record.inputs:
            payload["inputs"] = [str(i) for i in record.inputs]
        payload["cli_args"] = record.cli_args
        payload |= {
            "broadcast": placement.broadcast,
            "daemon": record.daemon,
            "latent": bool(extra.get("latent")),
        }
        if record.env:
            payload["env"] = dict(record.env)
        payload["encrypted"] = bool(extra.get("encrypted"))
        for name in ("kbs_resource_path", "monitoring_profile"):
            if extra.get(name):
                payload[name] = extra[name]
        if not placement.broadcast:
            payload["proplet_id"] = placement.proplets[0]
        if extra.get("depends_on"):
            payload["parent_results"] = self._parent_results(extra["depends_on"])
        return payload

    def _parent_results(self, parents: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for parent in parents:
            try:
                found[parent] = self.store.get(parent).results
            except NotFoundError:
                continue
        return found

    def stop(self, task_id: str) -> bool:
        """End a dispatched run (Failed, stopped) and tell its proplets; False when `task_id`
        is not one (the backend stops it)."""
        with self._lock:
            placement = self._runs.get(task_id)
        if placement is None:
            return False
        record = self.store.stop(task_id)
        # The proplet reports the stop itself (its cancellation): one result per run.
        self.store.mark_published(task_id, record.run)
        self._forget(placement)
        self._send_stop(placement)
        return True

    def forget(self, task_id: str) -> None:
        """The task was deleted: stop its dispatched run, if any, on its proplets."""
        with self._lock:
            placement = self._runs.get(task_id)
        if placement is not None:
            self._forget(placement)
            self._send_stop(placement)

    def _send_stop(self, placement: Placement) -> None:
        body: dict[str, Any] = {"id": placement.task_id, "broadcast": placement.broadcast}
        if not placement.broadcast:
            body["proplet_id"] = placement.proplets[0]
        if self._send is None or not self._send(STOP_TOPIC, body):
            log.warning("stop %s: the broker did not acknowledge the stop", placement.task_id)

    # What proplets report.
    def on_result(self, message: Mapping[str, Any]) -> bool:
        """A `control/proplet/results` message; True when it ended a dispatched run."""
        task_id, sender = message.get("task_id"), message.get("proplet_id")
        if not isinstance(task_id, str) or sender == self.own_id:
            return False  # malformed, or the shim's own result coming back
        with self._lock:
            placement = self._runs.get(task_id)
        if placement is None:
            return False
        if not placement.broadcast and sender != placement.proplets[0]:
            log.warning("ignoring a result for %s from proplet %s, not its own", task_id, sender)
            return False
        error = message.get("error")
        failed = isinstance(error, str) and bool(error)
        results, truncated = _results(message.get("results"))
        outcome = Outcome(
            TaskPhase.FAILED if failed else TaskPhase.COMPLETED,
            results=results,
            error=error if failed and isinstance(error, str) else "",
            truncated=truncated,
        )
        return self._end(placement, outcome, sender if isinstance(sender, str) else "")

    def on_task_metrics(self, message: Mapping[str, Any]) -> bool:
        """A `control/proplet/task_metrics` message about a task this shim dispatched (also
        after its run ended: proplets send them with or after the result) is kept for
        `GET /tasks/{id}/metrics`, as Propeller's handleTaskMetrics keeps them."""
        task_id, sender = message.get("task_id"), message.get("proplet_id")
        if self.task_metrics is None or not isinstance(task_id, str) or sender == self.own_id:
            return False
        sample = from_proplet(message)
        if sample is None or not self.owns(task_id):
            return False
        self.task_metrics.record(task_id, sample)
        return True

    def sweep(self) -> None:
        """Fail every dispatched run none of whose proplets is alive any more."""
        with self._lock:
            placements = list(self._runs.values())
        if not placements:
            return
        proplets = {p.id: p for p in self.registry.external()}
        recovering = time.monotonic() < self._recovered_until
        for placement in placements:
            held = [proplets[i] for i in placement.proplets if i in proplets]
            if any(p.alive for p in held) or (recovering and len(held) < len(placement.proplets)):
                continue
            error = f"proplet {', '.join(placement.proplets)} stopped heartbeating{_last(held)}"
            error += " while running the task"
            if self._end(placement, Outcome(TaskPhase.FAILED, error=error)):
                self._send_stop(placement)  # should it come back, it must not run on

    def _end(self, placement: Placement, outcome: Outcome, proplet: str = "") -> bool:
        self._forget(placement)
        try:
            return self.store.report(placement.task_id, placement.run, outcome, proplet)
        except NotFoundError:
            return False

    def _forget(self, placement: Placement) -> None:
        with self._lock:
            if self._runs.get(placement.task_id) == placement:
                del self._runs[placement.task_id]
        self._count()

    def _count(self) -> None:
        """Each external proplet's task count: the dispatched runs it holds."""
        with self._lock:
            counts: dict[str, int] = {}
            for placement in self._runs.values():
                for proplet_id in placement.proplets:
                    counts[proplet_id] = counts.get(proplet_id, 0) + 1
        for proplet in self.registry.external():
            self.registry.set_task_count(proplet.id, counts.get(proplet.id, 0))


def proplet_metadata(announced: object) -> dict[str, Any]:
    """The metadata of a `control/proplet/create`: Propeller's fields only (text cut to
    `MAX_TEXT`, at most `MAX_TAGS` tags), as its createPropletHandler keeps them; a proplet is
    untrusted, so nothing else of what it announces is stored."""
    if not isinstance(announced, dict):
        return {}
    kept: dict[str, Any] = {}
    for name in METADATA_TEXT:
        value = announced.get(name)
        if isinstance(value, str) and value:
            kept[name] = value[:MAX_TEXT]
    tags = announced.get("tags")
    if isinstance(tags, list):
        texts = [t[:MAX_TEXT] for t in tags if isinstance(t, str)][:MAX_TAGS]
        if texts:
            kept["tags"] = texts
    memory = announced.get("total_memory_bytes")
    if isinstance(memory, int) and not isinstance(memory, bool) and 0 < memory < 1 << 64:
        kept["total_memory_bytes"] = memory
    return kept


def _results(value: object) -> tuple[str | None, bool]:
    """A proplet's results as text (Rust proplets send text; other JSON is kept as JSON text),
    cut to `RESULTS_LIMIT` characters."""
    if value is None:
        return None, False
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:RESULTS_LIMIT], len(text) > RESULTS_LIMIT


def _last(held: list[PropletRecord]) -> str:
    beats = [p.alive_history[-1] for p in held if p.alive_history]
    return f" (last alive at {propeller_time(max(beats))})" if beats else ""
