"""How a Propeller task is written on a WasiNNTask, and read back: pure mapping, no API calls.

Fields with a place in the spec go there; the rest (the Propeller name, inputs and CLI args as
given, times, the run counter, the MQTT outbox mark, the proplet a manager addressed) are
annotations. The operator's `status` gives the state, results and errors.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..api import WasmSource
from ..api.times import parse_time as kube_parse_time
from .store import TaskRecord, TaskState, now

PREFIX = "wasinn.dev/"
NAME, CREATED, UPDATED = PREFIX + "propeller-name", PREFIX + "created-at", PREFIX + "updated-at"
INPUTS, CLI_ARGS, IMAGE = PREFIX + "inputs", PREFIX + "cli-args", PREFIX + "image-url"
RUN, PUBLISHED, PROPLET = PREFIX + "run", PREFIX + "published-run", PREFIX + "proplet-id"
PHASES = {
    "Pending": TaskState.PENDING,
    "Scheduled": TaskState.SCHEDULED,
    "Running": TaskState.RUNNING,
    "Completed": TaskState.COMPLETED,
    "Failed": TaskState.FAILED,
    "Interrupted": TaskState.INTERRUPTED,
}
FINISHED = (TaskState.COMPLETED, TaskState.FAILED)
WASM_KEYS = tuple(f.alias or n for n, f in WasmSource.model_fields.items())
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
)


def task_spec(record: TaskRecord, artifacts_url: str) -> dict[str, Any]:
    """The spec fields of `record`; an uploaded module is served from the shim's artifacts."""
    spec: dict[str, Any] = {
        "cliArgs": list(record.cli_args or []),
        "args": [str(i) for i in record.inputs],
        "env": dict(record.env),
        "daemon": record.daemon,
    }
    if record.digest:
        url = f"{artifacts_url}/artifacts/{record.digest}"
        spec["wasm"] = {"url": url, "digest": record.digest}
    elif record.image_url:
        spec["wasm"] = {"image": record.image_url}
    return spec


def task_annotations(record: TaskRecord) -> dict[str, str | None]:
    """The Propeller fields the spec has no place for (None removes one)."""
    return {
        NAME: record.name,
        INPUTS: json.dumps(record.inputs),
        CLI_ARGS: json.dumps(record.cli_args),
        IMAGE: record.image_url or None,
    }


def to_record(obj: dict[str, Any]) -> TaskRecord:
    """The Propeller task a WasiNNTask object holds."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    notes = annotations_of(obj)
    wasm = spec.get("wasm") or {}
    state = PHASES.get(status.get("phase") or "Pending", TaskState.PENDING)
    run = int(notes.get(RUN, "0"))
    created = parse_time(notes.get(CREATED)) or parse_time(meta.get("creationTimestamp")) or now()
    return TaskRecord(
        id=meta["name"],
        name=notes.get(NAME, meta["name"]),
        state=state,
        image_url=notes.get(IMAGE) or "",
        digest=wasm.get("digest", "") if "url" in wasm else "",
        cli_args=json.loads(notes[CLI_ARGS]) if CLI_ARGS in notes else spec.get("cliArgs"),
        inputs=json.loads(notes[INPUTS]) if INPUTS in notes else list(spec.get("args") or []),
        env=dict(spec.get("env") or {}),
        daemon=bool(spec.get("daemon")),
        proplet_id=notes.get(PROPLET) or status.get("nodeName") or "",
        results=status.get("results"),
        results_truncated=bool(status.get("resultsTruncated")),
        error=status.get("error") or "",
        start_time=parse_time(status.get("startTime")),
        finish_time=parse_time(status.get("completionTime")),
        created_at=created,
        updated_at=parse_time(notes.get(UPDATED)) or created,
        run=run,
        unpublished=state in FINISHED and notes.get(PUBLISHED) != str(run),
    )


def active(obj: dict[str, Any]) -> bool:
    """Started and not finished: the operator owns the task until it ends."""
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    suspended = bool((obj.get("spec") or {}).get("suspend"))
    return not suspended and phase not in ("Completed", "Failed", "Interrupted")


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    """The object's annotations (a copy)."""
    return dict(obj["metadata"].get("annotations") or {})


def iso(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time, or None."""
    return kube_parse_time(value) if value else None
