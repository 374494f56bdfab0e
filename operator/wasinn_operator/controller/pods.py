"""Reading a task's Pods: which is the current attempt, how it ended, what it reported."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..api import RunSummary
from ..api.lifecycle import TaskPhase
from .builders import ATTEMPT_LABEL, CONTAINER


def run_summary(pod: dict[str, Any]) -> tuple[RunSummary | None, int | None]:
    """The proplet's termination message and exit code, if the container terminated."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated") or {}
        exit_code = terminated.get("exitCode")
        message = terminated.get("message") or ""
        try:
            return RunSummary.model_validate(json.loads(message)), exit_code
        except (ValueError, ValidationError):
            # FallbackToLogsOnError: the message is the log tail when the proplet wrote none.
            error = message.strip()[-1000:] or terminated.get("reason") or None
            return (
                RunSummary(state="Failed", exitCode=exit_code or 1, error=error),
                exit_code,
            )
    return None, None


def start_decision_due(task: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """Whether a reconcile may start an attempt now, and so needs the claim, node and
    ConfigMap facts: not while the current attempt's Pod has not ended, nor when it has ended
    but the task still shows it Scheduled or Running (that reconcile records how it ended;
    a retry starts in a later one)."""
    status = task.get("status") or {}
    pod = current_pod(pods, int(status.get("attempts", 0)))
    if pod is None:
        return True
    return ended(pod) and status.get("phase") not in (TaskPhase.SCHEDULED, TaskPhase.RUNNING)


def current_pod(pods: list[dict[str, Any]], attempts: int) -> dict[str, Any] | None:
    """The live (not deleted) Pod of the latest attempt the status records or a later one."""
    live = [
        p for p in pods if not p["metadata"].get("deletionTimestamp") and attempt_of(p) >= attempts
    ]
    return max(live, key=attempt_of, default=None)


def attempt_of(pod: dict[str, Any]) -> int:
    """The attempt number a Pod is labelled with (-1 when it carries none)."""
    label = (pod["metadata"].get("labels") or {}).get(ATTEMPT_LABEL, "")
    return int(label) if label.isdigit() else -1


def ended(pod: dict[str, Any]) -> bool:
    """Whether the Pod has run to its end, either way."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def unschedulable(pod: dict[str, Any]) -> bool:
    """Pending with PodScheduled False: the scheduler found no node for it (FailedScheduling)."""
    scheduled = pod_condition(pod, "PodScheduled")
    pending = (pod.get("status") or {}).get("phase", "Pending") == "Pending"
    return pending and scheduled is not None and scheduled.get("status") == "False"


def pod_condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The Pod's condition of type `kind`, if it has one."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None
