"""The shim's intents on a task, carried out: a run request (`wasinn.dev/run`), a start error
(`wasinn.dev/start-error`), a suspension (a stop) and a resume."""

from __future__ import annotations

from typing import Any

from ..api.lifecycle import STOPPED_ERROR, Event, TaskPhase
from ..api.status import (
    RUN_ANNOTATION,
    RUN_FIELDS,
    START_ERROR_ANNOTATION,
    described_run,
    requested_run,
)
from ..api.times import format_time
from .phases import ConditionType, Reason
from .plan import Facts, Plan, condition, fail, move


def take_run_request(task: dict[str, Any], facts: Facts, plan: Plan) -> bool:
    """Start the run the shim requested (`wasinn.dev/run`) if the status describes an earlier
    one; True when the request carries a start error (the run is then Failed)."""
    requested, described = requested_run(task), described_run(task)
    notes = task["metadata"].get("annotations") or {}
    if requested == described or TaskPhase(plan.status["phase"]).active:
        # (The shim asks only while no run is under way; a request made otherwise waits.)
        if RUN_ANNOTATION in notes or "run" in plan.status:  # the shim's task
            plan.status["run"] = described
        return False
    new_run(plan)
    plan.status["run"] = requested
    error = notes.get(START_ERROR_ANNOTATION)
    if error is None:
        return False
    fail(plan, Reason.START_FAILED, error, facts.now)
    return True


def new_run(plan: Plan) -> None:
    """A new run: the previous run's results, errors, times and conditions go."""
    for key in RUN_FIELDS:
        plan.status.pop(key, None)
    move(plan, Event.START)


def stopped_run(status: dict[str, Any]) -> bool:
    """Whether the run was ended by a suspension (Interrupted: by an earlier version)."""
    if status.get("phase") == TaskPhase.INTERRUPTED:
        return True
    failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
    return status.get("phase") == TaskPhase.FAILED and any(
        c.get("reason") == Reason.STOPPED for c in failed
    )


def suspend(pod: dict[str, Any] | None, facts: Facts, plan: Plan) -> None:
    """`spec.suspend` is true: delete the running Pod and end a run under way as stopped."""
    status = plan.status
    phase = TaskPhase(status["phase"])
    running = pod is not None and (pod.get("status") or {}).get("phase") in ("Pending", "Running")
    if running and pod is not None:
        plan.delete_pods.append(pod["metadata"]["name"])
    # A run under way ends Failed (Stopped), as Propeller records a stopped task: also when its
    # Pod is already going (deleted by a reconcile whose status write lost a race), and when it
    # waits between attempts or for a node. A task suspended before it ever started waits.
    started = int(status.get("attempts", 0)) > 0 or int(status.get("run", 0)) > 0
    if running or phase.active or (phase is TaskPhase.PENDING and started):
        if phase is TaskPhase.PENDING and running:
            move(plan, Event.SCHEDULE)
        move(plan, Event.STOP if TaskPhase(status["phase"]).active else Event.FAIL)
        status.update(error=STOPPED_ERROR, results="", completionTime=format_time(facts.now))
        for key in ("retryAfter", "resultsTruncated"):
            status.pop(key, None)
        message = "spec.suspend is true: the run was stopped"
        condition(plan, ConditionType.FAILED, True, Reason.STOPPED, message, facts.now)
    condition(
        plan, ConditionType.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true", facts.now
    )
