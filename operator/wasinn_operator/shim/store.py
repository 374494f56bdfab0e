"""The backend interface: where tasks live and how they run.

The service talks only to a `TaskStore`. The local backend implements it with SQLite and a
worker pool; the kubernetes backend implements it on WasiNNTask objects (start and stop are
intents the operator carries out; results = status). Both decide with `api.lifecycle`, and
both must pass tests/integration/test_shim_*.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from ..api.lifecycle import TaskPhase
from ..api.propeller import Task
from ..api.times import ZERO_TIME
from . import taskfields

__all__ = ["Outcome", "PropletRecord", "TaskPhase", "TaskRecord", "TaskStore", "now"]


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


@dataclass
class TaskRecord:
    """One task as a backend stores it: Propeller's fields, the module's digest, the outbox."""

    id: str
    name: str
    phase: TaskPhase = TaskPhase.PENDING
    image_url: str = ""
    digest: str = ""  # sha256:<hex> of the task's file in the artifact store; "" = none
    cli_args: list[str] | None = None
    inputs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    daemon: bool = False
    proplet_id: str = ""
    results: Any = None
    error: str = ""
    start_time: datetime | None = None
    finish_time: datetime | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    run: int = 0  # bumped by every start: a result belongs to one run
    unpublished: bool = False  # a result awaits its MQTT publication
    results_truncated: bool = False  # the guest printed more than the results keep
    extra: dict[str, Any] = field(default_factory=dict)  # Propeller's other fields (taskfields)

    def copy(self, **changes: Any) -> TaskRecord:
        """A copy with `changes` applied."""
        return replace(self, **changes)

    def to_task(self, file: str | None = None) -> Task:
        """The Propeller Task; `file` is the module's redacted base64 when the caller has it."""
        return Task(
            id=self.id,
            name=self.name,
            state=self.phase.state,
            image_url=self.image_url or None,
            file=file,
            cli_args=self.cli_args,
            # Text, as Propeller keeps them (earlier versions stored numbers).
            inputs=[i if isinstance(i, str) else str(i) for i in self.inputs] or None,
            env=dict(self.env) or None,
            daemon=self.daemon,
            proplet_id=self.proplet_id or None,
            results=self.results,
            results_truncated=self.results_truncated,
            error=self.error or None,
            start_time=self.start_time or Task.model_fields["start_time"].default,
            finish_time=self.finish_time or Task.model_fields["finish_time"].default,
            created_at=self.created_at,
            # Go's zero time until the task changes, as Propeller's CreateTask leaves it.
            updated_at=self.updated_at if self.updated_at != self.created_at else ZERO_TIME,
            fields=taskfields.to_json(self.extra),
        )


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its phase, results (the guest's stdout) and error."""

    phase: TaskPhase
    results: str | None = None
    error: str = ""
    truncated: bool = False  # `results` is the start of a longer output


@dataclass(frozen=True)
class DispatchedRun:
    """Run `run` of task `task_id`, handed to external `proplets` (all alive ones for a
    broadcast)."""

    task_id: str
    run: int
    proplets: tuple[str, ...]
    broadcast: bool


@dataclass(frozen=True)
class PropletRecord:
    """A worker of the backend (local: this machine's pool; kubernetes: an OpenVINO node)."""

    id: str
    name: str
    task_count: int
    alive: bool
    alive_history: list[datetime]  # heartbeats, oldest first
    metadata: dict[str, Any] = field(default_factory=dict)  # Propeller's PropletMetadata fields
    namespace: str = ""
    external: bool = False  # seen on MQTT, not one of the backend's own workers


class EndListeners:
    """The listeners a backend's `watch_ends` was given; calling it tells each of them."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def add(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def __call__(self, task_id: str) -> None:
        for listener in self._listeners:
            listener(task_id)


class TaskStore(Protocol):
    """Task records, their state transitions, their results and the MQTT outbox.

    Errors: `NotFoundError` for an unknown id, `ConflictError` for a transition the state forbids.
    Every listing is ordered newest first by `created_at` (ties by insertion, later first), as
    Propeller lists tasks, so pages are stable and new tasks come first.
    """

    def add(self, record: TaskRecord) -> None:
        """Store a new task (Pending). `ConflictError` if the id exists."""

    def get(self, task_id: str) -> TaskRecord:
        """The task."""

    def page(
        self, offset: int, limit: int, metadata: dict[str, Any] | None = None
    ) -> tuple[list[TaskRecord], int]:
        """Tasks `offset`..`offset+limit`, newest first, of those whose metadata matches
        `metadata` (`taskfields.matches`), and their count; the records may leave out
        `results` (a listing never shows them)."""

    def save(self, record: TaskRecord) -> None:
        """Write the spec fields (name, image_url, digest, cli_args, inputs, env, daemon, extra,
        proplet_id, updated_at) of an existing task, also while it runs: the running attempt
        keeps the spec it started with."""

    def remove(self, task_id: str) -> TaskRecord:
        """Delete the task, ending its run if any; returns what was deleted."""

    def start(self, task_id: str, proplet_id: str = "") -> TaskRecord:
        """Pending or finished → Scheduled: a new run (results, error and times cleared), which
        the backend then executes. `ConflictError` when already Scheduled or Running."""

    def dispatch(self, task_id: str, proplet_id: str, proplets: tuple[str, ...] = ()) -> TaskRecord:
        """Pending or finished → Running: a new run (results, error and finish time cleared,
        start time now) that external proplet `proplet_id` (empty: a broadcast to `proplets`)
        executes, not the backend; its end comes from `report`. `proplets` empty: the shim
        itself holds the run (a deployed latent task). `ConflictError` when already Scheduled
        or Running; `BadRequestError` from a backend that cannot hold such a run (kubernetes:
        one without external proplets, as the operator owns the status)."""

    def dispatched(self) -> list[DispatchedRun]:
        """The dispatched runs still under way, from the records (kubernetes: after a shim
        restart the dispatcher takes them up again); the local backend ends its dispatched
        runs when the shim stops (interrupted), so it has none."""

    def report(self, task_id: str, run: int, outcome: Outcome, proplet: str = "") -> bool:
        """Record the end of dispatched run `run` as its proplet (`proplet`, which answered)
        reported it (not published again: the proplet published it). False when that run
        already ended or was superseded (a stop, a restart, a second report)."""

    def stop(self, task_id: str) -> TaskRecord:
        """Scheduled or Running → Failed with `STOPPED_ERROR` and empty results, ending the run
        (its result is published, as a Propeller proplet reports a stopped task); the
        kubernetes backend records the stop and the operator ends the run. `ConflictError`
        when not Scheduled or Running."""

    def fail(self, task_id: str, error: str) -> TaskRecord:
        """Mark a task that is not running Failed with `error`, as a new run whose result is
        published (e.g. its module could not be fetched). `ConflictError` while it is active."""

    def skip(self, task_id: str, reason: str) -> TaskRecord:
        """Pending → Skipped (5) with `reason` as its error: a job or workflow task whose
        `run_if` condition failed; it never runs and no result is published. `ConflictError`
        unless Pending; a later start runs it anew."""

    def unpublished(self) -> list[TaskRecord]:
        """Finished runs whose result is not yet acknowledged by the MQTT broker, oldest first
        (a backend may return only the first of them: the outbox asks again)."""

    def mark_published(self, task_id: str, run: int) -> None:
        """The broker acknowledged run `run`'s result (a later run stays unpublished)."""

    def wait_for_results(self, timeout: float) -> None:
        """Block until a run may have finished, or `timeout` seconds passed."""

    def watch_ends(self, listener: Callable[[str], None]) -> None:
        """Call `listener(task_id)` from any thread when a run of that task may have ended or
        the task was deleted (`waits.EndWaits`); a backend that learns of ends only by reading
        them (kubernetes) never calls it, and its waiters read again every second."""

    def digests(self) -> set[str]:
        """Digests of every stored file some task refers to (the artifact store keeps these)."""

    def counts(self) -> dict[TaskPhase, int]:
        """How many tasks are in each phase."""

    def proplets(self) -> list[PropletRecord]:
        """The backend's workers."""

    def checks(self) -> dict[str, str | None]:
        """The backend's dependencies for /health, each None when fine, else what is wrong
        (local: the database and the worker pool; kubernetes: the API server)."""

    def close(self) -> None:
        """Stop the backend's threads and end its runs (their tasks are recovered on start-up)."""
