"""Propeller's manager JSON (tasks, pages, proplets, MQTT messages) and its mapping to `TaskSpec`.

Shapes follow Propeller v-old (commit 8d800f1) on output and accept v-new on input: `inputs`
may be uint64 numbers or strings, `state` is numeric, unset times are Go's zero time.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from .lifecycle import PROPELLER_STATES, TaskPhase
from .task import ENV_NAME, TaskSpec, WasmSource
from .times import ZERO_TIME, propeller_time

UINT64_MAX = (1 << 64) - 1
ARTIFACTS_PATH = "/artifacts"
# Fields Go's `omitempty` drops when empty; `cli_args` is not among them (it is `null`), nor
# `results`: an `any`, dropped only when nil, so a failed run answers `"results": ""` as
# Propeller's manager does. `results_truncated` is ours: present, true, only when results were cut.
OMIT_WHEN_EMPTY = (
    "image_url",
    "file",
    "inputs",
    "env",
    "proplet_id",
    "results_truncated",
    "error",
)
# Base64 of a module: it starts with "\0asm" ("AGFzb" + one of Q-T), or is empty (no file). The
# schema says so, so generated clients (and fuzzers) know what the server accepts; the server
# checks the decoded magic itself as well.
_B64_TAIL = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
WASM_BASE64 = (
    r"^(?:|AGFzbQ==|AGFzb[Q-T][A-Za-z0-9+/]=|AGFzb[Q-T][A-Za-z0-9+/]{2}" + _B64_TAIL + ")$"
)


# Task.state: Propeller's number of a `TaskPhase` (the lifecycle's table).
State = Annotated[
    int, WithJsonSchema({"type": "integer", "enum": sorted(PROPELLER_STATES.values())})
]


def _env_names(env: dict[str, str] | None) -> dict[str, str] | None:
    bad = [name for name in env or {} if not ENV_NAME.match(name)]
    if bad:
        raise ValueError(
            f"invalid environment variable name(s) {', '.join(map(repr, bad))}: a name must "
            "match [-._a-zA-Z][-._a-zA-Z0-9]*"
        )
    return env


def _base64(value: str | None) -> str | None:
    if value:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not valid base64 (standard alphabet, padded): {exc}") from None
    return value


def _input_text(value: Any) -> Any:
    # Propeller keeps inputs as strings (pkg/task FlexStrings): a number becomes its literal
    # JSON text, exactly as sent ("1.50" stays "1.50"; the decoder keeps it in `json_text`),
    # and `null` the empty string (Go decodes null into a string as "").
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return getattr(value, "json_text", None) or json.dumps(value)
    return value


Input = Annotated[
    StrictStr,
    BeforeValidator(_input_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}),
]
Env = Annotated[
    dict[str, str],
    AfterValidator(_env_names),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": ENV_NAME.pattern},
            "additionalProperties": {"type": "string"},
        }
    ),
]
File = Annotated[
    str,
    AfterValidator(_base64),
    WithJsonSchema({"type": "string", "pattern": WASM_BASE64, "contentEncoding": "base64"}),
]


class TaskInput(BaseModel):
    """A Task as clients send it (POST and PUT): every field optional, unknown ones ignored.

    Server-owned fields a client may echo back (`id`, `state`, `results`, times) are ignored.
    """

    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(
        default=None, description="required on create; on update, missing or empty keeps the name"
    )
    image_url: str | None = None
    file: File | None = None
    cli_args: list[str] | None = Field(
        default=None,
        description="wasmtime flags (e.g. -S nn, --env K=V, -W timeout=30s); the service's task "
        "policy decides which a task may use, and refuses the task (400) otherwise",
    )
    inputs: list[Input] | None = None
    env: Env | None = Field(
        default=None,
        description="the guest's environment; names such as LD_*, PATH, WASINN_* and PROPLET_* "
        "are reserved",
    )
    daemon: StrictBool | None = None
    # Propeller's other task fields (shim/taskfields.py keeps and checks them).
    kind: StrictStr | None = None
    priority: StrictInt | None = Field(default=None, description="0-100; 0 means 50")
    schedule: StrictStr | None = Field(default=None, description="a five-field cron expression")
    timezone: StrictStr | None = None
    is_recurring: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    latent: StrictBool | None = None
    mode: StrictStr | None = None
    encrypted: StrictBool | None = None
    kbs_resource_path: StrictStr | None = None
    proplet_id: StrictStr | None = None
    broadcast: StrictBool | None = None
    depends_on: list[StrictStr] | None = None
    run_if: StrictStr | None = Field(default=None, description="'success' or 'failure'")
    workflow_id: StrictStr | None = None
    job_id: StrictStr | None = None
    monitoring_profile: dict[str, Any] | None = None

    def wasm_bytes(self) -> bytes | None:
        """The decoded `file`, or None when absent or empty."""
        return base64.b64decode(self.file, validate=True) if self.file else None


class Task(BaseModel):
    """A Task as the manager answers it."""

    id: str
    name: str
    state: State = TaskPhase.PENDING.state
    image_url: str | None = None
    file: str | None = Field(
        default=None,
        description="the module's base64 redacted as Propeller does: its first and last 10 "
        "characters around <REDACTED>",
    )
    cli_args: list[str] | None = None
    inputs: list[str] | None = None
    env: dict[str, str] | None = None
    daemon: bool = False
    proplet_id: str | None = None
    results: Any = None
    results_truncated: bool = Field(
        default=False,
        description="(not in Propeller) true when `results` is only the start of the guest's "
        "output, cut at the shim's limit; absent otherwise",
    )
    error: str | None = None
    start_time: datetime = ZERO_TIME
    finish_time: datetime = ZERO_TIME
    created_at: datetime = ZERO_TIME
    updated_at: datetime = ZERO_TIME
    fields: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,
        description="Propeller's other fields (kind, priority, schedule, next_run, metadata, "
        "...), rendered by shim/taskfields.py",
    )

    def to_json(self) -> dict[str, Any]:
        """The wire form: Go's omitempty fields dropped when empty, times in RFC 3339."""
        data = self.model_dump(mode="json")
        for key in OMIT_WHEN_EMPTY:
            value = data.get(key)
            if value is False or value in (None, "", [], {}):
                data.pop(key, None)
        if data.get("results") is None:
            data.pop("results", None)
        for key in ("start_time", "finish_time", "created_at", "updated_at"):
            data[key] = propeller_time(getattr(self, key))
        return data | self.fields


class CreatedTask(Task):
    """The create response: the flat Task (Propeller's `.id`) plus `task` (the seed guide's)."""

    task: Task


class TaskPage(BaseModel):
    """One page of tasks, oldest first."""

    offset: int
    limit: int
    total: int
    tasks: list[Task]


class Proplet(BaseModel):
    """A worker as Propeller shows it (its PropletView): `alive` means a heartbeat within the
    last 10 s, `last_alive_at` is the last one (absent before any)."""

    id: str
    name: str
    task_count: int
    alive: bool
    last_alive_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The wire form: `last_alive_at` in RFC 3339, left out when there is none."""
        data = self.model_dump(mode="json", exclude={"last_alive_at"})
        if self.last_alive_at is not None:
            data["last_alive_at"] = propeller_time(self.last_alive_at)
        return data


class PropletPage(BaseModel):
    """One page of proplets."""

    offset: int
    limit: int
    total: int
    proplets: list[Proplet]


class Check(BaseModel):
    """One dependency of the service: `pass`, or `fail` with what is wrong in `output`."""

    status: str
    output: str | None = None


class Health(BaseModel):
    """`GET /health`, in the shape of SuperMQ's health handler (`status` "pass" or "fail"),
    plus `checks`: each dependency's state (ours, not Propeller's)."""

    status: str
    version: str
    commit: str
    description: str
    build_time: str
    instance_id: str
    checks: dict[str, Check] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str


class Started(BaseModel):
    """`POST /tasks/{id}/start`."""

    started: bool


class Stopped(BaseModel):
    """`POST /tasks/{id}/stop`."""

    stopped: bool


class Results(BaseModel):
    """`GET /tasks/{id}/results`."""

    results: Any = None


class _Addressed(BaseModel):
    """A manager message's addressing: v-new has `proplet_id` and `broadcast`, v-old neither."""

    id: str = Field(min_length=1)
    proplet_id: str | None = None
    broadcast: bool | None = None

    def addressed_to(self, proplet_id: str) -> bool:
        """v-new: broadcast or for this proplet; v-old (neither field): every proplet."""
        if self.broadcast is None and not self.proplet_id:
            return True
        return bool(self.broadcast) or self.proplet_id == proplet_id


class StartMessage(TaskInput, _Addressed):
    """`control/manager/start`: a Task, addressed; a latent one waits for invocations."""

    latent: StrictBool = False


class InvokeMessage(_Addressed):
    """`control/manager/invoke`: run latent task `id` once, with these inputs (none: its own)
    and env (added to its own); answered on `control/proplet/invoke_results`."""

    model_config = ConfigDict(extra="ignore")
    invocation_id: str = ""
    inputs: list[Input] | None = None
    env: Env | None = None


class StopMessage(_Addressed):
    """`control/manager/stop`: v-old sends the whole Task, v-new `{id, broadcast, proplet_id}`."""

    model_config = ConfigDict(extra="ignore")


def artifact_path(digest: str) -> str:
    """Where the shim serves an artifact: `/artifacts/sha256:<hex>`."""
    return f"{ARTIFACTS_PATH}/{digest}"


def wasm_source(
    digest: str | None,
    image_url: str | None,
    *,
    base_url: str | None = None,
    local_path: str | None = None,
) -> WasmSource:
    """The module of a task: its stored file (by URL for Pods, by path locally) or its image.

    A stored file wins over `image_url`, as in Propeller, where the proplet fetches the image
    only when `file` is empty.
    """
    if digest:
        if local_path is not None:
            return WasmSource(path=local_path, digest=digest)
        if base_url is None:
            raise ValueError("a stored file needs the shim's base URL or a local path")
        return WasmSource(url=base_url.rstrip("/") + artifact_path(digest), digest=digest)
    if image_url:
        return WasmSource(image=image_url)
    raise ValueError("the task has no wasm module: give `file`, upload one, or set `image_url`")


def to_task_spec(task: Task, wasm: WasmSource) -> TaskSpec:
    """A Propeller task as a WasiNNTask spec: `cli_args` → cliArgs, `inputs` → args (strings)."""
    return TaskSpec(
        id=task.id,
        name=task.name,
        wasm=wasm,
        cliArgs=list(task.cli_args or []),
        args=[str(value) for value in task.inputs or []],
        env=dict(task.env or {}),
        daemon=task.daemon,
    )


def from_task_spec(spec: TaskSpec) -> TaskInput:
    """The Propeller fields of a WasiNNTask spec (the stored file is the backend's business)."""
    return TaskInput(
        name=spec.name or spec.id,
        image_url=spec.wasm.image,
        cli_args=list(spec.cli_args),
        inputs=list(spec.args),
        env=dict(spec.env),
        daemon=spec.daemon,
    )
