"""`status` of a WasiNNTask: every field the operator (its only writer) writes.

The CRD's status schema is generated from this model, and the API server prunes any field a
structural schema does not list: a status field written anywhere must be declared here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .crd import GROUP
from .lifecycle import TaskPhase

# The shim's intents (the operator carries them out): a run request is a counter, bumped by
# every start; a start that could not happen carries its error.
RUN_ANNOTATION = f"{GROUP}/run"
START_ERROR_ANNOTATION = f"{GROUP}/start-error"
# Status fields a new run starts without ("attempts" stays: Pod names go on counting).
RUN_FIELDS = (
    "results",
    "resultsTruncated",
    "error",
    "exitCode",
    "startTime",
    "completionTime",
    "retryAfter",
    "podName",
    "nodeName",
    "failedAttempts",
    "conditions",
    "digest",
    "worker",
)


class Condition(BaseModel):
    """A Job-style condition (Scheduled, Complete, Failed, Suspended)."""

    model_config = ConfigDict(populate_by_name=True)
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = Field(default=None, alias="lastTransitionTime")


class WorkerRef(BaseModel):
    """A warm worker Pod holding an attempt, as the operator assigned it."""

    model_config = ConfigDict(populate_by_name=True)
    pod: str
    uid: str
    pool: str
    restarts: int = Field(
        default=0, description="The worker container's restart count when assigned."
    )
    timeout_seconds: int | None = Field(
        default=None, alias="timeoutSeconds", description="The attempt's timeout (resolved)."
    )
    engine: str | None = Field(default=None, description="The attempt's engine (resolved).")


class WasiNNTaskStatus(BaseModel):
    """What happened, at a glance (phase, exitCode) and in detail (conditions)."""

    model_config = ConfigDict(populate_by_name=True)
    phase: TaskPhase | None = None
    state: int | None = Field(
        default=None,
        description="Propeller's numeric state (Pending 0 ... Failed 4; api/lifecycle.py).",
    )
    run: int | None = Field(
        default=None,
        description="The run request (annotation wasinn.dev/run) this status describes.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pod_name: str | None = Field(default=None, alias="podName")
    worker: WorkerRef | None = Field(
        default=None,
        description="The warm worker the current attempt is assigned to (execution: warm).",
    )
    node_name: str | None = Field(default=None, alias="nodeName")
    attempts: int | None = Field(default=None, description="Attempts started (one Pod each).")
    failed_attempts: int | None = Field(
        default=None,
        alias="failedAttempts",
        description="Attempts that failed; retried while at most backoffLimit.",
    )
    exit_code: int | None = Field(default=None, alias="exitCode")
    results: str | None = Field(
        default=None,
        description="The guest's stdout (capped; see resultsTruncated and the Pod log).",
    )
    results_truncated: bool | None = Field(default=None, alias="resultsTruncated")
    error: str | None = None
    digest: str | None = Field(default=None, description="sha256 of the module that ran.")
    start_time: datetime | None = Field(default=None, alias="startTime")
    completion_time: datetime | None = Field(default=None, alias="completionTime")
    retry_after: datetime | None = Field(
        default=None,
        alias="retryAfter",
        description="When the next attempt may start (exponential backoff).",
    )
    propeller_id: str | None = Field(
        default=None,
        alias="propellerId",
        description="The Propeller task id (UUID) this task answers to.",
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", json_schema_extra={"format": "int64"}
    )


def requested_run(task: dict[str, Any]) -> int:
    """The run the shim last requested (0: never started, or not the shim's task)."""
    notes = task["metadata"].get("annotations") or {}
    return int(notes.get(RUN_ANNOTATION) or 0)


def described_run(task: dict[str, Any]) -> int:
    """The run request `status` describes; a status written before the operator recorded
    requests (no `run`) describes the current one."""
    status = task.get("status") or {}
    if "run" in status:
        return int(status["run"])
    return requested_run(task) if status.get("phase") else 0
