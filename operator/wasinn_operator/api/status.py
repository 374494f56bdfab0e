"""`status` of a WasiNNTask: every field the operator (and the shim) writes.

The CRD's status schema is generated from this model, and the API server prunes any field a
structural schema does not list: a status field written anywhere must be declared here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The task's phases, named as Propeller's states (controller/phases.py's TaskPhase values).
Phase = Literal["Pending", "Scheduled", "Running", "Completed", "Failed", "Interrupted"]


class Condition(BaseModel):
    """A Job-style condition (Scheduled, Complete, Failed, Suspended)."""

    model_config = ConfigDict(populate_by_name=True)
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = Field(default=None, alias="lastTransitionTime")


class WasiNNTaskStatus(BaseModel):
    """What happened, at a glance (phase, exitCode) and in detail (conditions)."""

    model_config = ConfigDict(populate_by_name=True)
    phase: Phase | None = None
    state: int | None = Field(
        default=None,
        description="Propeller's numeric state (Pending 0 ... Failed 4, Interrupted 6).",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pod_name: str | None = Field(default=None, alias="podName")
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
