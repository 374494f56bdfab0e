"""The bodies and answers of the job, workflow, proplet detail, task metrics and invoke routes,
as models for /openapi.json (shapes from Propeller's manager/api/responses.go and
requests.go), and their error codes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..api.propeller import Env, ErrorBody, Input
from .jobs import MAX_GROUP, MODES

# A task in a job or workflow answer: a Task plus `job_id` or `workflow_id`, `depends_on`,
# `run_if`.
GroupTask = dict[str, Any]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a guarded route: 401, `codes`, 503."""
    return {code: {"model": ErrorBody} for code in (401, *codes, 503)}


class JobCreated(BaseModel):
    """`POST /jobs` (201) and `GET /jobs/{id}`."""

    job_id: str
    tasks: list[GroupTask]


class WorkflowCreated(BaseModel):
    """`POST /workflows` (201)."""

    tasks: list[GroupTask]


class JobSummary(BaseModel):
    """One job of `GET /jobs`: its state derived from its tasks'."""

    job_id: str
    name: str | None = None
    state: int
    tasks: list[GroupTask]
    start_time: datetime
    finish_time: datetime
    created_at: datetime


class JobPage(BaseModel):
    """`GET /jobs`."""

    offset: int
    limit: int
    total: int
    jobs: list[JobSummary]


class JobMessage(BaseModel):
    """`POST /jobs/{id}/start` and `/stop`."""

    message: str
    job_id: str


class AliveHistoryPage(BaseModel):
    """`GET /proplets/{id}/alive-history`: heartbeats, newest first."""

    offset: int
    limit: int
    total: int
    history: list[datetime]


class MetricsPage(BaseModel):
    """`GET /tasks/{id}/metrics` and `GET /proplets/{id}/metrics`: samples, newest first."""

    offset: int
    limit: int
    total: int
    metrics: list[dict[str, Any]]


class Invoked(BaseModel):
    """`POST /tasks/{id}/invoke`."""

    invoked: bool
    results: str = Field(description="what the invocation printed")


class SDFDocument(BaseModel):
    """`GET /proplets/{id}/sdf`: an SDF document."""

    info: dict[str, Any]
    sdfThing: dict[str, Any]  # noqa: N815  (SDF's own name)


class Invocation(BaseModel):
    """`POST /tasks/{id}/invoke`'s body: inputs (strings or numbers, Propeller's FlexStrings)
    instead of the task's own, env over its own."""

    model_config = ConfigDict(extra="ignore")
    inputs: list[Input] | None = None
    env: Env | None = None


def group_schemas(task_create: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schemas of a job's and a workflow's request and of an invocation's body, given
    the schema of a task's creation."""
    uuid_string = {"type": "string", "format": "uuid"}
    task = dict(task_create)
    # Empty or absent: the shim picks one.
    any_id = {"anyOf": [uuid_string, {"type": "string", "maxLength": 0}, {"type": "null"}]}
    task["properties"] = task_create["properties"] | {"id": any_id}
    tasks = {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_GROUP,
        "items": {"$ref": "#/components/schemas/GroupTask"},
    }
    request = {
        "title": "JobRequest",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "execution_mode": {"type": "string", "enum": ["", *MODES]},
            "tasks": tasks,
        },
        "required": ["tasks"],
    }
    workflow = {
        "title": "WorkflowRequest",
        "type": "object",
        "properties": {"tasks": tasks},
        "required": ["tasks"],
    }
    return {
        "GroupTask": task | {"title": "GroupTask"},
        "JobRequest": request,
        "WorkflowRequest": workflow,
        "Invocation": Invocation.model_json_schema(),
    }
