"""The kubernetes backend's writes for runs on external proplets (shim/kubeexternal.py): the
dispatch with its run request, the report of the proplet's result, and what a restarted shim
takes up again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wasinn_operator.api.external import DISPATCH_ANNOTATION, REPORT_ANNOTATION
from wasinn_operator.api.status import RUN_ANNOTATION
from wasinn_operator.shim.kubeexternal import (
    REPORT_RESULTS,
    dispatch_patch,
    report_patch,
    under_way,
)
from wasinn_operator.shim.kubemap import PUBLISHED
from wasinn_operator.shim.store import DispatchedRun, Outcome, TaskPhase

pytestmark = pytest.mark.unit
EDGE = "6f0c1a3e-0000-4000-8000-0000000000bb"


def task(notes: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "t", "annotations": notes}, "spec": {}, "status": status or {}}


def dispatched(run: int = 1, phase: str = "Running", requested: int = 0) -> dict[str, Any]:
    """A task whose run `run` went to EDGE, as the operator records it; `requested`: a later
    run request."""
    notes = {
        RUN_ANNOTATION: str(requested or run),
        DISPATCH_ANNOTATION: json.dumps({"run": run, "proplets": [EDGE], "broadcast": False}),
    }
    return task(notes, {"phase": phase, "run": run})


def test_a_dispatch_is_a_run_request_whose_result_the_proplet_publishes() -> None:
    patch = dispatch_patch(task({RUN_ANNOTATION: "2"}), "", (EDGE, "b"))
    notes = patch["metadata"]["annotations"]
    assert (notes[RUN_ANNOTATION], notes[PUBLISHED]) == ("3", "3")
    assert json.loads(notes[DISPATCH_ANNOTATION]) == {
        "run": 3,
        "proplets": [EDGE, "b"],
        "broadcast": True,
    }
    assert notes[REPORT_ANNOTATION] is None  # an earlier run's report goes
    assert patch["spec"] == {"suspend": False}


def test_a_report_is_written_once_for_the_current_run_only() -> None:
    done = Outcome(TaskPhase.COMPLETED, results="42\n")
    patch = report_patch(dispatched(), 1, done, EDGE)
    assert patch is not None
    report = json.loads(patch["metadata"]["annotations"][REPORT_ANNOTATION])
    assert report == {
        "run": 1,
        "proplet": EDGE,
        "failed": False,
        "results": "42\n",
        "resultsTruncated": False,
        "error": "",
    }
    reported = dispatched()
    reported["metadata"]["annotations"][REPORT_ANNOTATION] = json.dumps(report)
    assert report_patch(reported, 1, done, EDGE) is None  # a second result
    assert report_patch(dispatched(requested=2), 1, done, EDGE) is None  # a later run
    assert report_patch(dispatched(phase="Failed"), 1, done, EDGE) is None  # ended (a stop)


def test_a_reports_results_are_capped() -> None:
    flood = Outcome(TaskPhase.FAILED, results="x" * (REPORT_RESULTS + 1), error="e" * 5000)
    patch = report_patch(dispatched(), 1, flood, EDGE)
    assert patch is not None
    report = json.loads(patch["metadata"]["annotations"][REPORT_ANNOTATION])
    assert len(report["results"]) == REPORT_RESULTS and report["resultsTruncated"] is True
    assert report["failed"] is True and len(report["error"]) == 4096


def test_a_restarted_shim_takes_up_the_runs_under_way() -> None:
    assert under_way(dispatched()) == DispatchedRun("t", 1, (EDGE,), False)
    assert under_way(dispatched(phase="Completed")) is None
    assert under_way(dispatched(requested=2)) is None  # the cluster's run now
    reported = dispatched()
    reported["metadata"]["annotations"][REPORT_ANNOTATION] = json.dumps({"run": 1})
    assert under_way(reported) is None  # its end is the operator's to record
