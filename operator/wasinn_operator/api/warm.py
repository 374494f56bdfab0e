"""Warm execution's hand-off contract between the operator and its proplet workers.

The operator alone writes a task's status: it assigns an attempt to a worker there
(`status.worker`, `status.attempts`). A worker never writes status; it reports on the task's
annotation `wasinn.dev/warm-report` instead, once when the attempt starts and once when it ends
(with the RunSummary, cut to the termination-message size like a Pod's), and the operator turns
that report into status through the same code that reads a task Pod.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .crd import GROUP, PROPELLER_ID_LABEL, PROPELLER_NAME_ANNOTATION

REPORT_ANNOTATION = f"{GROUP}/warm-report"
# Labels of worker Pods: which pool they serve (the operator picks workers by it).
POOL_LABEL = f"{GROUP}/warm-pool"
WORKER_CONTAINER = "worker"


class WarmReport(BaseModel):
    """A worker's word on one attempt: started, and (when done) how it ended."""

    model_config = ConfigDict(populate_by_name=True)
    attempt: int = Field(ge=1)
    worker: str = Field(description="The uid of the worker Pod that ran the attempt.")
    start_time: str = Field(alias="startTime")
    summary: str | None = Field(default=None, description="RunSummary.to_message(), when done.")

    def to_annotation(self) -> str:
        """The annotation's value."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


def read_report(task: dict[str, Any]) -> WarmReport | None:
    """The task's warm report, if it carries a well-formed one."""
    text = ((task.get("metadata") or {}).get("annotations") or {}).get(REPORT_ANNOTATION)
    if not text:
        return None
    try:
        return WarmReport.model_validate_json(text)
    except ValidationError:
        return None


def assignment(task: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(attempt, status.worker) of an attempt assigned to a worker and not yet ended."""
    status = task.get("status") or {}
    worker = status.get("worker")
    if not isinstance(worker, dict) or status.get("phase") not in ("Scheduled", "Running"):
        return None
    return int(status.get("attempts") or 0), worker


def task_document(task: dict[str, Any]) -> dict[str, Any]:
    """The document `wasinn proplet run` takes (WASINN_TASK) for an assigned warm task: its
    spec, with the defaults the operator resolved for the attempt (status.worker)."""
    spec = dict(task.get("spec") or {})
    meta = task["metadata"]
    ref = (task.get("status") or {}).get("worker") or {}
    document = {
        key: spec[key]
        for key in ("wasm", "cliArgs", "args", "env", "device", "modelSources")
        if key in spec
    }
    document["id"] = (meta.get("labels") or {}).get(PROPELLER_ID_LABEL) or meta["uid"]
    document["name"] = (meta.get("annotations") or {}).get(PROPELLER_NAME_ANNOTATION) or meta[
        "name"
    ]
    for key in ("timeoutSeconds", "engine"):
        if ref.get(key) is not None:
            document[key] = ref[key]
    return document
