"""Runs on external proplets, the operator's side (the hand-off is in api/external.py).

A run the shim dispatched gets no Pod: taking its run request, the operator records it Running
on its proplets (start time now, `nodeName` the proplet; none for a broadcast); the shim's
report ends it Completed or Failed with the proplet's results and error; no report by its
deadline fails it (DeadlineExceeded, naming the proplets); a suspension (the shim's stop)
ends it Failed (Stopped) as any run. Pure: the task is the API's JSON.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..api import WasiNNTaskSpec
from ..api.external import (
    DEADLINE_GRACE_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    ExternalDispatch,
    read_dispatch,
    read_report,
)
from ..api.lifecycle import Event
from ..api.status import requested_run
from ..api.times import format_time, maybe_time
from .intents import suspend
from .phases import ConditionType, Reason, TaskPhase
from .plan import Facts, Plan, condition, fail, move, reach_running
from .settings import OperatorSettings


def current(task: dict[str, Any]) -> ExternalDispatch | None:
    """The dispatch of the task's requested run, None when that run is the cluster's."""
    dispatch = read_dispatch(task)
    if dispatch is None or dispatch.run != requested_run(task):
        return None
    return dispatch


def step(
    dispatch: ExternalDispatch,
    task: dict[str, Any],
    spec: WasiNNTaskSpec,
    facts: Facts,
    settings: OperatorSettings,
    plan: Plan,
) -> None:
    """Carry the external run on by one step (see the module's docstring)."""
    status = plan.status
    who = _who(dispatch)
    if TaskPhase(status["phase"]) is TaskPhase.PENDING and not spec.suspend:
        status["attempts"] = int(status.get("attempts", 0)) + 1
        for key in ("podName", "worker", "retryAfter", "nodeName"):
            status.pop(key, None)
        if len(dispatch.proplets) == 1 and not dispatch.broadcast:
            status["nodeName"] = dispatch.proplets[0]
        status["startTime"] = format_time(facts.now)
        reach_running(plan)
        message = f"run {dispatch.run} dispatched to {who} over MQTT"
        condition(plan, ConditionType.SCHEDULED, True, Reason.DISPATCHED, message, facts.now)
    if spec.suspend:
        suspend(None, facts, plan)
        return
    if TaskPhase(status["phase"]).finished:
        return
    report = read_report(task)
    if report is not None and report.run == dispatch.run:
        _absorb(report.results, report.results_truncated, settings, plan)
        proplet = report.proplet or who
        if report.failed:
            error = report.error or "the proplet reported a failure"
            fail(plan, Reason.PROPLET_FAILED, f"{proplet}: {error}", facts.now, error=error)
        else:
            status.pop("error", None)
            move(plan, Event.SUCCEED)
            status["completionTime"] = format_time(facts.now)
            message = f"external proplet {proplet} reported the result"
            condition(plan, ConditionType.COMPLETE, True, Reason.COMPLETED, message, facts.now)
        return
    limit = spec.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
    started = maybe_time(status.get("startTime")) or facts.now
    deadline = started + timedelta(seconds=limit + DEADLINE_GRACE_SECONDS)
    if facts.now >= deadline:
        message = (
            f"{who} reported no result within {limit} s (+{DEADLINE_GRACE_SECONDS} s grace) "
            f"of run {dispatch.run}'s dispatch"
        )
        fail(plan, Reason.DEADLINE_EXCEEDED, message, facts.now)
        return
    remaining = (deadline - facts.now).total_seconds()
    plan.requeue_after = min(remaining, plan.requeue_after or remaining)


def _absorb(results: str | None, truncated: bool, settings: OperatorSettings, plan: Plan) -> None:
    if results is None:
        return
    data = results.encode()
    plan.status["results"] = data[: settings.results_cap].decode("utf-8", errors="ignore")
    plan.status["resultsTruncated"] = truncated or len(data) > settings.results_cap


def _who(dispatch: ExternalDispatch) -> str:
    if dispatch.broadcast:
        return "the external proplets (broadcast)"
    return f"external proplet {', '.join(dispatch.proplets) or '(none)'}"
