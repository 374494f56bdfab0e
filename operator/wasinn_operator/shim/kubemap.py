"""How a Propeller task is written on a WasiNNTask, and read back: pure mapping, no API calls.

Fields with a place in the spec go there; the rest (the Propeller name, inputs and CLI args as
given, times, the MQTT outbox mark, the proplet a manager or client addressed, and Propeller's
other task fields as one JSON object) are annotations. The shim
records intent only: a run request (`wasinn.dev/run`, a counter) with `spec.suspend: false`, a
stop as `spec.suspend: true`, a start that failed as `wasinn.dev/start-error`. The operator, the
only writer of `status`, carries them out and says in `status.run` which request the status
describes; until it has, a task reads as its request says (queued, or failed to start).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..api import PROPELLER_FIELDS_ANNOTATION, PROPELLER_NAME_ANNOTATION, WasmSource
from ..api.lifecycle import REPORTED, TaskPhase
from ..api.status import RUN_ANNOTATION, START_ERROR_ANNOTATION, described_run, requested_run
from ..api.times import format_time, maybe_time
from .store import TaskRecord, now

PREFIX = "wasinn.dev/"
NAME, CREATED, UPDATED = PROPELLER_NAME_ANNOTATION, PREFIX + "created-at", PREFIX + "updated-at"
INPUTS, CLI_ARGS, IMAGE = PREFIX + "inputs", PREFIX + "cli-args", PREFIX + "image-url"
PUBLISHED, PROPLET = PREFIX + "published-run", PREFIX + "proplet-id"
RUN, START_ERROR = RUN_ANNOTATION, START_ERROR_ANNOTATION
FIELDS = PROPELLER_FIELDS_ANNOTATION  # Propeller's other task fields (shim/taskfields.py), JSON
# A never-started task the shim skipped (a dependent whose run_if failed): the reason. The
# operator has nothing to do for it (it stays suspended); a start removes it.
SKIPPED = PREFIX + "skipped"
WASM_KEYS = tuple(f.alias or n for n, f in WasmSource.model_fields.items())


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
        FIELDS: json.dumps(record.extra, separators=(",", ":")) if record.extra else None,
        PROPLET: record.proplet_id or None,
    }


def view_phase(obj: dict[str, Any]) -> TaskPhase:
    """The task's phase as Propeller's clients see it: a request the operator has not taken
    up yet is queued (Scheduled), or Failed when it could not start; a started run that waits
    (for a node, for its next attempt) is Scheduled too, as in Propeller a started task is
    never Pending again."""
    status = obj.get("status") or {}
    requested = requested_run(obj)
    if requested != described_run(obj):
        return TaskPhase.FAILED if START_ERROR in annotations_of(obj) else TaskPhase.SCHEDULED
    phase = TaskPhase(status.get("phase") or TaskPhase.PENDING)
    if phase is TaskPhase.PENDING and requested > 0:
        return TaskPhase.SCHEDULED
    if phase is TaskPhase.PENDING and SKIPPED in annotations_of(obj):
        return TaskPhase.SKIPPED
    return phase


def to_record(obj: dict[str, Any]) -> TaskRecord:
    """The Propeller task a WasiNNTask object holds."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    notes = annotations_of(obj)
    wasm = spec.get("wasm") or {}
    phase = view_phase(obj)
    run = requested_run(obj)
    created = maybe_time(notes.get(CREATED)) or maybe_time(meta.get("creationTimestamp")) or now()
    updated = maybe_time(notes.get(UPDATED)) or created
    if run != described_run(obj):  # not taken up yet: the previous run's status is not this one's
        status = {"error": notes.get(START_ERROR), "completionTime": notes.get(UPDATED)}
        if phase is not TaskPhase.FAILED:
            status = {}
    if phase is TaskPhase.SKIPPED:
        status = {"error": notes.get(SKIPPED), "completionTime": notes.get(UPDATED)}
    return TaskRecord(
        id=meta["name"],
        name=notes.get(NAME, meta["name"]),
        phase=phase,
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
        start_time=maybe_time(status.get("startTime")),
        finish_time=maybe_time(status.get("completionTime")),
        created_at=created,
        updated_at=updated,
        run=run,
        unpublished=phase in REPORTED and notes.get(PUBLISHED) != str(run),
        extra=json.loads(notes[FIELDS]) if notes.get(FIELDS) else {},
    )


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    """The object's annotations (a copy)."""
    return dict(obj["metadata"].get("annotations") or {})


def iso(value: datetime) -> str:
    """A time as annotations hold it (`api.times`' one form)."""
    return format_time(value)
