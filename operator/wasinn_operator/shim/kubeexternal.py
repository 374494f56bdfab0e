"""Runs on external proplets as the kubernetes backend writes them on a WasiNNTask: the
dispatch with its run request, and the proplet's result as a report (api/external.py; the
operator records both in status). Pure: objects are the API's JSON, patches merge patches.
"""

from __future__ import annotations

from typing import Any

from ..api import external
from ..api.external import ExternalDispatch, ExternalReport, read_dispatch
from ..api.status import requested_run
from .kubemap import PUBLISHED, RUN, SKIPPED, START_ERROR, UPDATED, iso, view_phase
from .store import DispatchedRun, Outcome, TaskPhase, now

# What a report annotation holds of a proplet's result (annotations share 256 KiB per object;
# the operator keeps at most its results cap of them in status).
REPORT_RESULTS = 64 << 10
REPORT_TEXT = 4096


def dispatch_patch(
    obj: dict[str, Any], proplet_id: str, proplets: tuple[str, ...]
) -> dict[str, Any]:
    """A new run request for `obj` that external `proplets` execute (`proplet_id` empty: a
    broadcast), its result marked published (the proplet publishes it)."""
    run = requested_run(obj) + 1
    sent = ExternalDispatch(run=run, proplets=list(proplets), broadcast=not proplet_id)
    notes = {
        RUN: str(run),
        PUBLISHED: str(run),
        external.DISPATCH_ANNOTATION: sent.to_annotation(),
        external.REPORT_ANNOTATION: None,
        START_ERROR: None,
        SKIPPED: None,
        UPDATED: iso(now()),
    }
    return {"metadata": {"annotations": notes}, "spec": {"suspend": False}}


def report_patch(
    obj: dict[str, Any], run: int, outcome: Outcome, proplet: str
) -> dict[str, Any] | None:
    """The report of dispatched run `run`'s end; None when that run is not the task's current
    dispatched run any more, has ended, or was reported already."""
    sent = read_dispatch(obj)
    reported = external.read_report(obj)
    if sent is None or not sent.run == run == requested_run(obj):
        return None
    if view_phase(obj).finished or (reported is not None and reported.run == run):
        return None
    results, truncated = outcome.results, outcome.truncated
    if results is not None and len(results) > REPORT_RESULTS:
        results, truncated = results[:REPORT_RESULTS], True
    report = ExternalReport.model_validate(
        {
            "run": run,
            "proplet": proplet[:REPORT_TEXT],
            "failed": outcome.phase is TaskPhase.FAILED,
            "results": results,
            "resultsTruncated": truncated,
            "error": outcome.error[:REPORT_TEXT],
        }
    )
    return {"metadata": {"annotations": {external.REPORT_ANNOTATION: report.to_annotation()}}}


def under_way(obj: dict[str, Any]) -> DispatchedRun | None:
    """The task's dispatched run when it is under way: current, not ended, not reported."""
    sent = read_dispatch(obj)
    if sent is None or sent.run != requested_run(obj) or not view_phase(obj).active:
        return None
    reported = external.read_report(obj)
    if reported is not None and reported.run == sent.run:
        return None
    return DispatchedRun(obj["metadata"]["name"], sent.run, tuple(sent.proplets), sent.broadcast)
