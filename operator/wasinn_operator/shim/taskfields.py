"""Propeller's task fields that have no column or spec field of their own: one JSON object.

`kind`, `priority`, `schedule`, `timezone`, `is_recurring`, `next_run`, `metadata`, `latent`,
`mode`, `encrypted`, `kbs_resource_path`, `broadcast`, `depends_on`, `run_if`, `workflow_id`,
`job_id` and `monitoring_profile` live in `TaskRecord.extra`: the local backend keeps it in
the `extra` column, the kubernetes backend in the `wasinn.dev/propeller-fields` annotation.
This module applies a request to it (Propeller's defaults and checks: manager/service.go
CreateTask/UpdateTask, manager/api/requests.go), renders it as Propeller's JSON (Go's
`omitempty` as in pkg/task/task.go), and matches the `?metadata=` list filter (as Propeller's
default in-memory store does: every given key present with the same text).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..api import cron
from ..api.propeller import TaskInput
from ..api.times import propeller_time
from .errors import BadRequestError

DEFAULT_PRIORITY = 50
DEFAULT_KIND = "standard"
DEFAULT_TIMEZONE = "UTC"
MAX_METADATA_BYTES = 1 << 20  # Propeller's limit on `metadata` as JSON
RUN_IF = ("success", "failure")
# pkg/proplet/metrics.go MonitoringProfile: Propeller decodes the object into this struct, so it
# answers every field (zero when not given) and drops other keys; `interval` is a Go
# time.Duration (whole nanoseconds), `history_size` a Go int.
MONITORING_FIELDS: dict[str, type] = {
    "enabled": bool,
    "interval": int,
    "collect_cpu": bool,
    "collect_memory": bool,
    "collect_disk_io": bool,
    "collect_threads": bool,
    "collect_file_descriptors": bool,
    "export_to_mqtt": bool,
    "retain_history": bool,
    "history_size": int,
}
INT64 = 1 << 63
# Stored as given, echoed when not empty (Go's omitempty).
PLAIN = (
    "kind",
    "priority",
    "schedule",
    "timezone",
    "is_recurring",
    "metadata",
    "latent",
    "mode",
    "encrypted",
    "kbs_resource_path",
    "broadcast",
    "depends_on",
    "run_if",
    "workflow_id",
    "job_id",
    "monitoring_profile",
)
REDACTED = "<REDACTED>"
# How `to_json` answers the fields, for the OpenAPI document.
_TEXT, _FLAG, _OBJECT = {"type": "string"}, {"type": "boolean"}, {"type": "object"}
SCHEMA: dict[str, dict[str, Any]] = {
    "kind": _TEXT,
    "priority": {"type": "integer", "minimum": 0, "maximum": 100},
    "schedule": _TEXT,
    "timezone": _TEXT,
    "is_recurring": _FLAG,
    "next_run": {"type": "string", "format": "date-time"},
    "metadata": _OBJECT,
    "latent": _FLAG,
    "mode": _TEXT,
    "encrypted": _FLAG,
    "kbs_resource_path": _TEXT,
    "broadcast": _FLAG,
    "depends_on": {"type": "array", "items": _TEXT},
    "run_if": {"type": "string", "enum": list(RUN_IF)},
    "workflow_id": _TEXT,
    "job_id": _TEXT,
    "monitoring_profile": _OBJECT,
}


def apply(
    extra: dict[str, Any],
    body: TaskInput,
    proplet_id: str,
    *,
    creating: bool,
    in_group: bool = False,
) -> None:
    """Apply the Propeller fields of `body` to `extra` (in place), or `BadRequestError`.

    On create Propeller's defaults are set (kind standard, priority 0 → 50, the next run of a
    schedule); on update a field the body leaves out, or sets to its zero value where
    Propeller's UpdateTask skips those (priority 0), keeps what is stored. `proplet_id` is the
    task's requested proplet after this request (broadcast and a proplet exclude each other).
    `in_group`: the task is created as part of a job or workflow (`shim/jobs.py`), whose
    dependencies are checked there, as Propeller's CreateJob does.
    """
    given = body.model_fields_set
    if body.priority is not None and not 0 <= body.priority <= 100:
        raise BadRequestError(f"priority: must be between 0 and 100, got {body.priority}")
    if body.run_if and body.run_if not in RUN_IF:
        raise BadRequestError(f"run_if: must be 'success' or 'failure', got {body.run_if!r}")
    for name in ("metadata", "monitoring_profile"):
        try:
            size = len(json.dumps(getattr(body, name), allow_nan=False))
        except ValueError:
            raise BadRequestError(f"{name}: a number is out of range") from None
        if size > MAX_METADATA_BYTES:
            raise BadRequestError(f"{name}: {size} bytes as JSON, over the 1 MiB limit")
    for name in PLAIN:
        if name not in given:
            continue
        value = getattr(body, name)
        if name == "priority" and not value and not creating:
            continue  # Propeller's UpdateTask keeps the priority when given 0
        if name == "monitoring_profile" and value is not None:
            extra[name] = monitoring_profile(value)  # `{}` too: Go's non-nil pointer
            continue
        if value in (None, "", [], {}, False, 0):
            extra.pop(name, None)
        else:
            extra[name] = value
    if creating:
        extra.setdefault("kind", DEFAULT_KIND)
        if not extra.get("priority"):
            extra["priority"] = DEFAULT_PRIORITY
    if extra.get("broadcast") and proplet_id:
        raise BadRequestError("broadcast and proplet_id are mutually exclusive")
    if extra.get("depends_on") and not extra.get("workflow_id") and not in_group:
        raise BadRequestError("depends_on: a task with dependencies needs a workflow_id")
    _schedule(extra, body, creating)


def monitoring_profile(given: Mapping[str, Any]) -> dict[str, Any]:
    """`monitoring_profile` as Propeller's struct holds it: every field, zero when absent or
    null, other keys dropped; a field of the wrong type is a 400 naming it."""
    profile: dict[str, Any] = {}
    for key, kind in MONITORING_FIELDS.items():
        value = given.get(key)
        if value is None:
            value = kind()
        elif kind is bool and not isinstance(value, bool):
            raise BadRequestError(f"monitoring_profile.{key}: must be true or false")
        elif kind is int and (
            isinstance(value, bool) or not isinstance(value, int) or not -INT64 <= value < INT64
        ):
            raise BadRequestError(f"monitoring_profile.{key}: must be a whole number (64-bit)")
        profile[key] = value
    return profile


def _schedule(extra: dict[str, Any], body: TaskInput, creating: bool) -> None:
    schedule = extra.get("schedule") or ""
    if not schedule:
        # As Propeller: `timezone` and `is_recurring` are kept as given (CreateTask stores the
        # task as sent), clearing a schedule ends recurrence (UpdateTask); no schedule, no run.
        extra.pop("next_run", None)
        if not creating and "schedule" in body.model_fields_set:
            extra.pop("is_recurring", None)
        return
    try:
        parsed = cron.parse(schedule)
    except cron.CronError as exc:
        raise BadRequestError(f"schedule: invalid cron expression: {exc}") from None
    if creating or "schedule" in body.model_fields_set or "timezone" in body.model_fields_set:
        extra.setdefault("timezone", DEFAULT_TIMEZONE)
        following = parsed.next_run(datetime.now().astimezone(), extra["timezone"])
        if following is None:
            extra.pop("next_run", None)
        else:
            extra["next_run"] = propeller_time(following)


def to_json(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as Propeller answers them: empty ones left out, except `encrypted` (always)
    and `next_run` (Go's zero time when unscheduled)."""
    fields = {name: extra[name] for name in PLAIN if extra.get(name) not in (None, "", [], {})}
    profile = extra.get("monitoring_profile")
    if isinstance(profile, dict):  # stored before profiles were checked: answered as Go would
        fields["monitoring_profile"] = {
            key: _typed(profile.get(key), kind) for key, kind in MONITORING_FIELDS.items()
        }
    fields["encrypted"] = bool(extra.get("encrypted"))
    fields["next_run"] = extra.get("next_run") or propeller_time(None)
    return fields


def _typed(value: Any, kind: type) -> Any:
    """`value` if it is a `kind` (a bool is not an int here), else the zero `kind`."""
    same = isinstance(value, kind) and isinstance(value, bool) == (kind is bool)
    return value if same else kind()


def priority(extra: Mapping[str, Any]) -> int:
    """The task's priority (higher runs first); 50 when unset."""
    value = extra.get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_PRIORITY


def parse_metadata_filter(values: list[str]) -> dict[str, Any] | None:
    """`?metadata=` as Propeller reads it: one JSON object (null: no filter), or 400."""
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestError("metadata: multiple values not supported for metadata")
    try:
        found = json.loads(values[0])
    except ValueError as exc:
        raise BadRequestError(f"metadata: invalid metadata: {exc}") from None
    if found is not None and not isinstance(found, dict):
        raise BadRequestError("metadata: invalid metadata: must be a JSON object")
    return found or None


def matches(extra: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    """Whether the task's metadata has every wanted key with the same value, compared as text
    the way Go prints it (so `"3"` and `3` match, as in Propeller)."""
    if not wanted:
        return True
    metadata = extra.get("metadata") or {}
    return all(
        key in metadata and go_text(metadata[key]) == go_text(v) for key, v in wanted.items()
    )


def go_text(value: Any) -> str:
    """`fmt.Sprint` of a JSON value decoded by Go (numbers are float64)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, int | float):
        number = float(value)
        if number.is_integer() and abs(number) < 1e21:
            return str(int(number))
        return repr(number)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Redactor:
    """`file` as Propeller answers it: the module's base64 cut to its first and last 10
    characters around `<REDACTED>` (whole when 20 characters or fewer); cached per digest."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, digest: str, read: Any) -> str:
        """The redacted form of module `digest`; `read(digest)` opens it (a binary file)."""
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None:
            return cached
        with read(digest) as module:
            module.seek(0, 2)
            size = module.tell()
            if size <= 15:  # 20 base64 characters or fewer
                module.seek(0)
                text = base64.b64encode(module.read()).decode()
            else:
                module.seek(0)
                head = base64.b64encode(module.read(9)).decode()[:10]
                start = (size // 3 - 3) * 3 if size % 3 == 0 else (size // 3 - 2) * 3
                module.seek(start)
                tail = base64.b64encode(module.read()).decode()[-10:]
                text = head + REDACTED + tail
        with self._lock:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            self._cache[digest] = text
        return text


def redact(encoded: str) -> str:
    """The redacted form of a base64 text (for callers that hold it whole)."""
    return encoded if len(encoded) <= 20 else encoded[:10] + REDACTED + encoded[-10:]
