"""Warm execution, the operator's side: which tasks may run warm, on which pool and worker, and
an attempt's state read from its worker's report (api/warm.py).

An assigned attempt is seen by `reconcile` as a Pod-shaped record (`attempt_record`): the
worker Pod's name and node, phase Pending (assigned), Running (the worker reported the start)
or Succeeded/Failed (its summary as the termination message). So status, conditions, results,
deadlines and retries come from the same code as for a task's own Pod. A worker Pod that is
gone, replaced or restarted while it holds an attempt fails that attempt (retried per
backoffLimit); so does one that outlives the attempt's deadline by `DEADLINE_GRACE_SECONDS`.
Pure: Pods and tasks are the API's JSON.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from ..api import WasiNNTaskSpec
from ..api.nodefeatures import parse_features
from ..api.times import maybe_time
from ..api.warm import WORKER_CONTAINER, WarmReport
from .builders import ATTEMPT_LABEL, CONTAINER
from .nodes import requested_targets
from .settings import OperatorSettings

# How long past its timeout a warm attempt may run before the operator gives up on its worker
# (the worker enforces the timeout itself; this covers a worker that hangs).
DEADLINE_GRACE_SECONDS = 30
WARM_SOURCES = ("url", "inline", "image", "path")


def refusal(spec: WasiNNTaskSpec, settings: OperatorSettings) -> str | None:
    """Why the task cannot run warm here (None: it can), naming the field and what is allowed."""
    if not settings.warm_enabled:
        return (
            "spec.execution: warm is not enabled on this cluster (allowed: pod; the chart's "
            "warmWorkers.enabled turns warm workers on)"
        )
    wasm = spec.wasm
    if wasm is not None and wasm.kind not in WARM_SOURCES:
        return (
            f"spec.wasm.{wasm.kind}: a warm worker cannot read it (allowed with execution: warm: "
            f"{', '.join(WARM_SOURCES)}; or use execution: pod)"
        )
    models = spec.models
    if models.model_fields_set - {"read_only"} or not models.read_only:
        return (
            "spec.models: warm workers mount only the operator's models claim, read-only at "
            "/models (leave spec.models unset, or use execution: pod)"
        )
    for index, source in enumerate(spec.model_sources):
        if source.location.scheme == "pvc":
            return (
                f"spec.modelSources[{index}]: pvc:// sources are mounted into a task's own Pod "
                "(allowed with execution: warm: https and oci sources; or use execution: pod)"
            )
    if requested_targets(spec):
        return (
            "spec.device/args --target: warm pools run on CPU (allowed with execution: warm: "
            "device CPU or AUTO; use execution: pod for a GPU or NPU)"
        )
    extra = [f for f in parse_features(spec.node_features) if f not in settings.node_features]
    if extra:
        return (
            "spec.nodeFeatures: warm pools run where the chart places them (allowed with "
            "execution: warm: none beyond the operator's; or use execution: pod)"
        )
    if spec.daemon:
        return (
            "spec.daemon: a long-running task would hold a shared worker (allowed with "
            "execution: warm: daemon false; or use execution: pod)"
        )
    if spec.resources:
        return (
            "spec.resources: a warm worker's resources are its pool's (chart warmWorkers."
            "resources); leave them unset, or use execution: pod"
        )
    if pool_for(spec, settings) is None:
        pools = ", ".join(f"{name} {dict(labels)}" for name, labels in settings.warm_pools)
        return (
            f"spec.nodeSelector {spec.node_selector}: no warm pool's nodes carry these labels "
            f"(pools: {pools}); or use execution: pod"
        )
    return None


def pool_for(spec: WasiNNTaskSpec, settings: OperatorSettings) -> str | None:
    """The first pool whose node selector includes every label the task's nodeSelector asks."""
    for name, labels in settings.warm_pools:
        offered = {**dict(labels), settings.label[0]: settings.label[1]}
        if all(offered.get(key) == value for key, value in spec.node_selector.items()):
            return name
    return None


def ready(pod: dict[str, Any]) -> bool:
    """Running, Ready and not being deleted: a worker that can take an attempt."""
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def restarts(pod: dict[str, Any]) -> int:
    """The worker container's restart count."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == WORKER_CONTAINER:
            return int(container.get("restartCount") or 0)
    return 0


def choose_worker(workers: list[dict[str, Any]], load: dict[str, int]) -> dict[str, Any] | None:
    """The ready worker holding the fewest attempts (by name on a tie), None when none is ready."""
    candidates = [w for w in workers if ready(w)]
    return min(
        candidates,
        key=lambda w: (load.get(w["metadata"]["name"], 0), w["metadata"]["name"]),
        default=None,
    )


def worker_ref(worker: dict[str, Any], pool: str, spec: WasiNNTaskSpec) -> dict[str, Any]:
    """`status.worker` for an attempt of `spec` (defaults applied) assigned to `worker`."""
    meta = worker["metadata"]
    ref: dict[str, Any] = {
        "pod": meta["name"],
        "uid": meta["uid"],
        "pool": pool,
        "restarts": restarts(worker),
        "engine": spec.engine,
    }
    if spec.timeout_seconds is not None:
        ref["timeoutSeconds"] = spec.timeout_seconds
    return ref


def attempt_record(
    status: dict[str, Any],
    worker: dict[str, Any] | None,
    report: WarmReport | None,
    now: datetime,
    timeout_seconds: int | None,
) -> dict[str, Any] | None:
    """The assigned attempt as a Pod-shaped record (see the module's docstring); None when no
    attempt is assigned to a worker."""
    ref = status.get("worker")
    attempt = int(status.get("attempts") or 0)
    if not isinstance(ref, dict) or not attempt:
        return None
    name = str(ref.get("pod"))
    mine = report if report and report.attempt == attempt and report.worker == ref["uid"] else None
    node = ((worker or {}).get("spec") or {}).get("nodeName") or status.get("nodeName")
    record: dict[str, Any] = {
        "metadata": {"name": name, "labels": {ATTEMPT_LABEL: str(attempt)}},
        "spec": {"nodeName": node},
        "status": {"phase": "Pending"},
    }
    if mine is not None and mine.summary is not None:
        return _ended(record, mine.start_time, message=mine.summary)
    gone = _gone(ref, worker)
    if gone:
        return _ended(record, mine.start_time if mine else None, message=gone)
    if mine is None:
        return record
    record["status"].update(phase="Running", startTime=mine.start_time)
    started = maybe_time(mine.start_time)
    grace = timedelta(seconds=(timeout_seconds or 0) + DEADLINE_GRACE_SECONDS)
    if timeout_seconds and started and now > started + grace:
        late = f"the warm worker {name} did not end the attempt by its deadline"
        return _ended(record, mine.start_time, message=late, reason="DeadlineExceeded")
    return record


def _gone(ref: dict[str, Any], worker: dict[str, Any] | None) -> str | None:
    name = ref.get("pod")
    if worker is None or worker["metadata"].get("uid") != ref.get("uid"):
        return f"the warm worker Pod {name} is gone"
    if worker["metadata"].get("deletionTimestamp"):
        return f"the warm worker Pod {name} is being deleted"
    if (worker.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return f"the warm worker Pod {name} ended"
    if restarts(worker) > int(ref.get("restarts") or 0):
        return f"the warm worker Pod {name} restarted"
    return None


def _ended(
    record: dict[str, Any], start: str | None, message: str, reason: str | None = None
) -> dict[str, Any]:
    """The record of an ended attempt: Succeeded when the summary says Completed; a message
    that is no summary (the worker is gone) has no exit code, like a Pod killed from outside."""
    terminated: dict[str, Any] = {"message": message}
    try:
        summary = json.loads(message)
    except ValueError:
        summary = None
    succeeded = False
    if isinstance(summary, dict):
        succeeded = summary.get("state") == "Completed"
        code = summary.get("exitCode")
        terminated["exitCode"] = code if isinstance(code, int) else 1
    record["status"] = {
        "phase": "Succeeded" if succeeded else "Failed",
        "containerStatuses": [{"name": CONTAINER, "state": {"terminated": terminated}}],
    }
    if start:
        record["status"]["startTime"] = start
    if reason:
        record["status"]["reason"] = reason
    return record


def queue_state(status: dict[str, Any]) -> str | None:
    """`queued` (waiting for or assigned to a worker, not started), `running`, or None."""
    phase = status.get("phase")
    if phase == "Running":
        return "running"
    if phase in ("Pending", "Scheduled") and not status.get("completionTime"):
        return "queued"
    return None


__all__ = [
    "DEADLINE_GRACE_SECONDS",
    "attempt_record",
    "choose_worker",
    "pool_for",
    "queue_state",
    "ready",
    "refusal",
    "restarts",
    "worker_ref",
]
