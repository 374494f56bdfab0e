"""The one task state machine: phases, Propeller's state numbers and the legal moves.

Every writer of a task's state (the operator on `WasiNNTask.status`, the local backend in its
SQLite transaction) asks `transition` for the next phase; the shim's kubernetes backend asks it
whether an intent (start, stop) is allowed before recording it. An illegal move raises
`Refusal`, whose message the REST layer answers with 409.

    Pending --SCHEDULE--> Scheduled --RUN--> Running --SUCCEED--> Completed
    Pending, Scheduled, Running --FAIL--> Failed        Scheduled, Running --STOP--> Failed
    Pending, Scheduled, Running --RETRY--> Pending      (the run waits for another attempt)
    Pending, Completed, Failed, Skipped, Interrupted --START--> Pending   (a new run)
    Pending --SKIP--> Skipped   (a job/workflow dependent whose run_if condition failed)

Stop follows Propeller: its manager only tells the proplet to stop, the proplet reports the run
as failed with a cancellation error, and the manager records Failed (4). Interrupted (6) is what
Propeller's manager records for runs its own shutdown cut short.
"""

from __future__ import annotations

from enum import StrEnum

STOPPED_ERROR = "task was stopped before completion"


class TaskPhase(StrEnum):
    """A task's phase; `state` is Propeller's number for it."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    INTERRUPTED = "Interrupted"

    @property
    def state(self) -> int:
        """Propeller's numeric state."""
        return PROPELLER_STATES[self]

    @property
    def active(self) -> bool:
        """Queued or running: the task holds a worker (or will)."""
        return self in ACTIVE

    @property
    def finished(self) -> bool:
        """The run ended: nothing more will run until a new start."""
        return self in FINISHED

    @classmethod
    def of_state(cls, state: int) -> TaskPhase:
        """The phase Propeller's number `state` names (ValueError for another number)."""
        for phase, number in PROPELLER_STATES.items():
            if number == state:
                return phase
        raise ValueError(f"{state} is not a Propeller task state")


# Propeller's numbers (its task package): the one table.
PROPELLER_STATES: dict[TaskPhase, int] = {
    TaskPhase.PENDING: 0,
    TaskPhase.SCHEDULED: 1,
    TaskPhase.RUNNING: 2,
    TaskPhase.COMPLETED: 3,
    TaskPhase.FAILED: 4,
    TaskPhase.SKIPPED: 5,
    TaskPhase.INTERRUPTED: 6,
}
ACTIVE = frozenset({TaskPhase.SCHEDULED, TaskPhase.RUNNING})
FINISHED = frozenset(
    {TaskPhase.COMPLETED, TaskPhase.FAILED, TaskPhase.SKIPPED, TaskPhase.INTERRUPTED}
)
# Phases a run's result is published from (MQTT), as Propeller's proplet reports them.
REPORTED = frozenset({TaskPhase.COMPLETED, TaskPhase.FAILED})


class Event(StrEnum):
    """What happens to a task."""

    START = "start"  # a new run is requested: its results, error and times start empty
    SCHEDULE = "schedule"  # the run is placed: a Pod created, or queued for a local worker
    RUN = "run"  # the guest started
    SUCCEED = "succeed"  # the guest exited 0
    FAIL = "fail"  # the run ended with an error (including a start that could not happen)
    RETRY = "retry"  # the attempt ended or cannot be placed; the run waits for another
    STOP = "stop"  # a client stopped the run: it ends Failed (STOPPED_ERROR)
    UPDATE = "update"  # the task's spec is changed
    SKIP = "skip"  # a dependent's run_if condition failed: it ends Skipped (5) without running


class Refusal(Exception):  # noqa: N818 (a refusal is an answer, not a fault)
    """An event the phase does not allow; the message completes "task <id> ..."."""

    def __init__(self, phase: TaskPhase, event: Event, why: str) -> None:
        super().__init__(why)
        self.phase = phase
        self.event = event
        self.why = why

    def about(self, task_id: str) -> str:
        """The message naming the task, e.g. `task 1f.. is already scheduled or running`."""
        return f"task {task_id} {self.why}"


_P = TaskPhase
_IDLE = (_P.PENDING, *sorted(FINISHED))
# (event, from) -> to. A pair not listed is refused with the event's reason in _WHY.
TABLE: dict[tuple[Event, TaskPhase], TaskPhase] = {
    **{(Event.START, p): _P.PENDING for p in _IDLE},
    (Event.SCHEDULE, _P.PENDING): _P.SCHEDULED,
    (Event.RUN, _P.SCHEDULED): _P.RUNNING,
    (Event.SUCCEED, _P.SCHEDULED): _P.COMPLETED,
    (Event.SUCCEED, _P.RUNNING): _P.COMPLETED,
    **{(Event.FAIL, p): _P.FAILED for p in (_P.PENDING, _P.SCHEDULED, _P.RUNNING)},
    **{(Event.RETRY, p): _P.PENDING for p in (_P.PENDING, _P.SCHEDULED, _P.RUNNING)},
    (Event.STOP, _P.SCHEDULED): _P.FAILED,
    (Event.STOP, _P.RUNNING): _P.FAILED,
    (Event.SKIP, _P.PENDING): _P.SKIPPED,
    # Propeller updates a task in any state; a running attempt keeps the spec it started with.
    **{(Event.UPDATE, p): p for p in _P},
}
_WHY: dict[Event, str] = {
    Event.START: "is already scheduled or running",
    Event.SCHEDULE: "is not pending",
    Event.RUN: "is not scheduled",
    Event.SUCCEED: "is not scheduled or running",
    Event.FAIL: "has finished already",
    Event.RETRY: "has finished already",
    Event.STOP: "is not scheduled or running",
    Event.SKIP: "is not pending",
    Event.UPDATE: "cannot be changed",  # never: Propeller updates a task in any state
}


def transition(phase: TaskPhase, event: Event) -> TaskPhase:
    """The phase after `event`; `Refusal` when `phase` does not allow it."""
    try:
        return TABLE[(event, phase)]
    except KeyError:
        raise Refusal(phase, event, _WHY[event]) from None


def allowed(phase: TaskPhase, event: Event) -> bool:
    """Whether `phase` allows `event`."""
    return (event, phase) in TABLE
