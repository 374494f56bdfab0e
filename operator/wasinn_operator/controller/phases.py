"""Job-style conditions and their reasons; the phases are `api.lifecycle`'s."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from ..api.lifecycle import TaskPhase
from ..api.summary import FailureReason
from ..api.times import format_time

__all__ = ["ConditionType", "Reason", "TaskPhase", "set_condition"]


class ConditionType(StrEnum):
    """Job-style condition types."""

    SCHEDULED = "Scheduled"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Reason(StrEnum):
    """Condition reasons a user can act on; a run's failure is named by the proplet's
    `FailureReason`."""

    UNSCHEDULABLE = "Unschedulable"
    MODEL_CLAIM_NOT_FOUND = "ModelClaimNotFound"
    INVALID_WASM = FailureReason.INVALID_WASM.value
    POLICY_VIOLATION = FailureReason.POLICY_VIOLATION.value
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = FailureReason.DEADLINE_EXCEEDED.value
    POD_CREATED = "PodCreated"
    POD_SCHEDULED = "PodScheduled"
    WORKER_ASSIGNED = "WorkerAssigned"  # execution: warm, handed to a worker
    NO_WARM_WORKER = "NoWarmWorker"  # execution: warm, no worker of its pool is ready
    DISPATCHED = "Dispatched"  # the shim handed the run to external proplets (api/external.py)
    PROPLET_FAILED = "PropletFailed"  # an external proplet reported the run failed
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    RETRYING = "Retrying"
    STOPPED = "Stopped"
    START_FAILED = FailureReason.START_FAILED.value  # also a start the shim recorded failed


def set_condition(
    conditions: list[dict[str, Any]],
    kind: ConditionType,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new condition list with `kind` set; the transition time moves only on a change."""
    value = "True" if status else "False"
    result = []
    found = False
    for condition in conditions:
        if condition.get("type") == kind.value:
            found = True
            changed = condition.get("status") != value
            result.append(
                {
                    "type": kind.value,
                    "status": value,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": format_time(now)
                    if changed
                    else condition.get("lastTransitionTime", format_time(now)),
                }
            )
        else:
            result.append(condition)
    if not found:
        result.append(
            {
                "type": kind.value,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": format_time(now),
            }
        )
    return result
