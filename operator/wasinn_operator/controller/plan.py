"""A reconcile's plan, and the moves it makes on the plan's status (every phase change an
`api.lifecycle` event)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.lifecycle import Event, TaskPhase, transition
from ..api.times import format_time
from .phases import ConditionType, Reason, set_condition


@dataclass(frozen=True)
class Facts:
    """What the cluster says, gathered by the handler before `reconcile`."""

    now: datetime
    pods: list[dict[str, Any]]
    claim_exists: bool = True
    # The cluster's Nodes; None when not read (no start decision or unschedulable Pod needs
    # them), which counts as placeable.
    nodes: list[dict[str, Any]] | None = None
    wasm_problem: str | None = None
    # execution: warm: the pool's worker Pods (None: not read) and attempts held per worker.
    workers: list[dict[str, Any]] | None = None
    load: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """What to do: the handler applies it in order (create, delete, status, events)."""

    status: dict[str, Any]
    create_configmap: dict[str, Any] | None = None
    create_pod: dict[str, Any] | None = None
    delete_pods: list[str] = field(default_factory=list)
    delete_task: bool = False
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def fail(plan: Plan, reason: Reason, message: str, now: datetime, error: str | None = None) -> None:
    """End the run Failed: `error` (else `message`), and condition Failed with `reason`."""
    plan.status["error"] = error or message
    plan.status["completionTime"] = format_time(now)
    plan.status.pop("retryAfter", None)
    move(plan, Event.FAIL)
    condition(plan, ConditionType.FAILED, True, reason, message, now)


def has_condition(status: dict[str, Any], kind: ConditionType, value: bool) -> bool:
    """Whether `status` has condition `kind` set to `value`."""
    return any(
        c.get("type") == kind.value and c.get("status") == ("True" if value else "False")
        for c in status.get("conditions") or []
    )


def move(plan: Plan, *events: Event) -> None:
    """Apply `events` to the plan's phase (`Refusal` for a move the lifecycle forbids: a bug)."""
    phase = TaskPhase(plan.status.get("phase") or TaskPhase.PENDING)
    for event in events:
        phase = transition(phase, event)
    plan.status["phase"] = phase.value


def schedule(plan: Plan) -> None:
    """A Pod of a new attempt exists: an earlier attempt still on record ends first."""
    if TaskPhase(plan.status["phase"]).active:
        move(plan, Event.RETRY)
    move(plan, Event.SCHEDULE)


def reach_running(plan: Plan) -> None:
    """The Pod runs: Running, through Scheduled when its creation was not seen."""
    phase = TaskPhase(plan.status["phase"])
    if phase is TaskPhase.PENDING:
        move(plan, Event.SCHEDULE, Event.RUN)
    elif phase is TaskPhase.SCHEDULED:
        move(plan, Event.RUN)


def condition(
    plan: Plan, kind: ConditionType, value: bool, reason: Reason, message: str, now: datetime
) -> None:
    """Set condition `kind` on the plan's status."""
    plan.status["conditions"] = set_condition(
        list(plan.status.get("conditions") or []), kind, value, reason.value, message, now
    )
