"""Runs on external proplets, the operator's side: no Pod, Running at once, the shim's report
folded into status, the deadline, a stop (api/external.py, controller/external.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wasinn_operator.api.external import (
    DEADLINE_GRACE_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    DISPATCH_ANNOTATION,
    REPORT_ANNOTATION,
    ExternalDispatch,
    ExternalReport,
)
from wasinn_operator.api.lifecycle import STOPPED_ERROR
from wasinn_operator.api.status import RUN_ANNOTATION
from wasinn_operator.controller import Facts, OperatorSettings, Plan, reconcile

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 6, 6, 0, 0, tzinfo=UTC)
EDGE = "6f0c1a3e-0000-4000-8000-0000000000bb"
SETTINGS = OperatorSettings()


def task(
    run: int = 1,
    status: dict[str, Any] | None = None,
    dispatch: ExternalDispatch | None = None,
    report: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    notes = {RUN_ANNOTATION: str(run)}
    if dispatch is not None:
        notes[DISPATCH_ANNOTATION] = dispatch.to_annotation()
    if report is not None:
        notes[REPORT_ANNOTATION] = ExternalReport.model_validate(report).to_annotation()
    return {
        "metadata": {"name": "t", "namespace": "ml", "uid": "u", "annotations": notes},
        "spec": {"wasm": {"url": "http://shim/artifacts/a"}, **spec},
        "status": status or {},
    }


def run(body: dict[str, Any], now: datetime = NOW) -> Plan:
    return reconcile(body, Facts(now=now, pods=[]), SETTINGS)


def running(body: dict[str, Any]) -> dict[str, Any]:
    plan = run(body)
    assert plan.create_pod is None  # an external run never gets a Pod
    return {**body, "status": plan.status}


def test_a_dispatched_run_is_running_on_its_proplet_without_a_pod() -> None:
    plan = run(task(dispatch=ExternalDispatch(run=1, proplets=[EDGE])))
    assert plan.create_pod is None and plan.create_configmap is None
    status = plan.status
    assert (status["phase"], status["state"], status["run"]) == ("Running", 2, 1)
    assert status["nodeName"] == EDGE and status["startTime"]
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "Dispatched"
    assert f"external proplet {EDGE}" in scheduled["message"]
    assert plan.requeue_after == DEFAULT_TIMEOUT_SECONDS + DEADLINE_GRACE_SECONDS
    broadcast = run(task(dispatch=ExternalDispatch(run=1, proplets=[EDGE, "b"], broadcast=True)))
    assert broadcast.status["phase"] == "Running" and "nodeName" not in broadcast.status


def test_a_dispatch_of_an_earlier_run_is_not_this_one() -> None:
    plan = run(task(run=2, dispatch=ExternalDispatch(run=1, proplets=[EDGE])))
    assert plan.create_pod is not None  # run 2 is the cluster's


def test_the_report_ends_the_run_completed_or_failed() -> None:
    sent = ExternalDispatch(run=1, proplets=[EDGE])
    body = running(task(dispatch=sent))
    done = {"run": 1, "proplet": EDGE, "results": "42\n"}
    plan = run({**body, **task(dispatch=sent, report=done, status=body["status"])})
    assert (plan.status["phase"], plan.status["state"]) == ("Completed", 3)
    assert plan.status["results"] == "42\n" and plan.status["completionTime"]
    failed = {"run": 1, "proplet": EDGE, "failed": True, "results": "", "error": "no model"}
    plan = run(task(dispatch=sent, report=failed, status=body["status"]))
    assert (plan.status["phase"], plan.status["error"]) == ("Failed", "no model")
    reason = next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"]
    assert reason == "PropletFailed"
    # A report of another run is not this run's end.
    stale = run(task(dispatch=sent, report={**done, "run": 2}, status=body["status"]))
    assert stale.status["phase"] == "Running"


def test_results_are_capped_as_a_pods() -> None:
    sent = ExternalDispatch(run=1, proplets=[EDGE])
    body = running(task(dispatch=sent))
    long = {"run": 1, "results": "x" * (SETTINGS.results_cap + 5)}
    plan = run(task(dispatch=sent, report=long, status=body["status"]))
    assert len(plan.status["results"]) == SETTINGS.results_cap
    assert plan.status["resultsTruncated"] is True


def test_no_report_by_the_deadline_fails_the_run() -> None:
    sent = ExternalDispatch(run=1, proplets=[EDGE])
    body = running(task(dispatch=sent, timeoutSeconds=60))
    waiting = run(task(dispatch=sent, status=body["status"], timeoutSeconds=60))
    assert waiting.status["phase"] == "Running"
    late = NOW + timedelta(seconds=60 + DEADLINE_GRACE_SECONDS)
    plan = run(task(dispatch=sent, status=body["status"], timeoutSeconds=60), now=late)
    assert (plan.status["phase"], plan.status["state"]) == ("Failed", 4)
    assert plan.status["error"] == (
        f"external proplet {EDGE} reported no result within 60 s (+{DEADLINE_GRACE_SECONDS} s "
        "grace) of run 1's dispatch"
    )
    reason = next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"]
    assert reason == "DeadlineExceeded"


def test_a_stop_ends_the_run_failed_stopped() -> None:
    sent = ExternalDispatch(run=1, proplets=[EDGE])
    body = running(task(dispatch=sent))
    plan = run(task(dispatch=sent, status=body["status"], suspend=True))
    assert (plan.status["phase"], plan.status["error"]) == ("Failed", STOPPED_ERROR)
    assert plan.delete_pods == []
    # A later report changes nothing, and a finished run is not resumed.
    after = task(dispatch=sent, status=plan.status, report={"run": 1, "results": "late"})
    again = run(after)
    assert again.status["phase"] == "Failed" and again.create_pod is None
