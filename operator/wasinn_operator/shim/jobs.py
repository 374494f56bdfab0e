"""Jobs and workflows: groups of tasks that run in dependency order (Propeller's semantics).

`POST /jobs` and `POST /workflows` create every task of the group through `TaskService` (each
checked against the task policy; none is stored when one is refused). A task may name the
others it waits for in `depends_on` (their ids, given by the client in the same request) and
when it runs in `run_if`: `success` (the default: every dependency Completed) or `failure` (some
dependency Failed). The dependencies must exist in the group and form no cycle.

Starting a job starts its tasks without dependencies; a workflow's are started by the client
(`POST /tasks/{id}/start`). `advance()` (called every second by `schedule.py`) then starts each
Pending task whose dependencies all finished (Completed, Failed or Skipped) when its condition
holds, and marks it Skipped (5) when it does not, so a failure skips a `success` dependent and
its own dependents in turn. An Interrupted dependency (stopped) is not finished: its dependents
wait, as in Propeller. Membership lives in a small SQLite database beside the tasks' own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.propeller import Env, Input, TaskInput, TaskState, rfc3339
from .errors import BadRequestError, ConflictError, NotFoundError, ShimError
from .httpbits import describe
from .service import TaskService, _check_page
from .store import now

RUN_IF = ("success", "failure")
MODES = ("parallel", "sequential", "configurable")
JOB_STATUS = {"pending": TaskState.PENDING, "running": TaskState.RUNNING,
              "completed": TaskState.COMPLETED, "failed": TaskState.FAILED}  # fmt: skip
MAX_GROUP = 1000  # tasks in one job or workflow
FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.SKIPPED)
SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
    execution_mode TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    task_id TEXT PRIMARY KEY, group_id TEXT NOT NULL REFERENCES groups(id),
    position INTEGER NOT NULL, depends_on TEXT NOT NULL, run_if TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS members_group ON members(group_id, position);
"""


class GroupTask(TaskInput):
    """A task of a job or workflow request: a Task with its id and dependencies."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    depends_on: list[str] | None = None
    run_if: str | None = None


class JobRequest(BaseModel):
    """`POST /jobs` (`name`, `tasks`, `execution_mode`) and `POST /workflows` (`tasks`)."""

    model_config = ConfigDict(extra="ignore")
    name: str = ""
    tasks: list[GroupTask] = Field(default_factory=list)
    execution_mode: str = ""


@dataclass(frozen=True)
class Member:
    """A task's place in its group."""

    task_id: str
    group_id: str
    kind: str  # "job" or "workflow"
    depends_on: list[str]
    run_if: str


def group_schemas(task_create: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schemas of a job or workflow request and of an invocation's body, given
    the schema of a task's creation."""
    uuid_string = {"type": "string", "format": "uuid"}
    null = {"type": "null"}
    task = dict(task_create)
    task["properties"] = task_create["properties"] | {
        # Empty or absent: the shim picks one.
        "id": {"anyOf": [uuid_string, {"type": "string", "maxLength": 0}, null]},
        "depends_on": {"anyOf": [{"type": "array", "items": uuid_string}, null]},
        "run_if": {"anyOf": [{"type": "string", "enum": ["", *RUN_IF]}, null]},
    }
    request = {
        "title": "JobRequest",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "execution_mode": {"type": "string", "enum": ["", *MODES]},
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_GROUP,
                "items": {"$ref": "#/components/schemas/GroupTask"},
            },
        },
        "required": ["tasks"],
    }
    invocation = Invocation.model_json_schema()
    return {"GroupTask": task | {"title": "GroupTask"}, "JobRequest": request,
            "Invocation": invocation}  # fmt: skip


class Invocation(BaseModel):
    """`POST /tasks/{id}/invoke`'s body: inputs (strings or numbers, Propeller's FlexStrings)
    instead of the task's own, env over its own."""

    model_config = ConfigDict(extra="ignore")
    inputs: list[Input] | None = None
    env: Env | None = None


def decode_request(data: Any) -> JobRequest:
    """The request body as a `JobRequest`; BadRequestError naming the field otherwise."""
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe(exc)) from None


class JobService:
    """Creates, lists, starts and stops jobs and workflows; advances their dependents."""

    def __init__(self, tasks: TaskService, db_path: Path | str) -> None:
        """Groups live in the SQLite database at `db_path` (":memory:": in memory)."""
        self.tasks = tasks
        self._lock = threading.RLock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)

    # Creation.
    def create(self, kind: str, request: JobRequest) -> tuple[str, list[dict[str, Any]]]:
        """A new job or workflow and its tasks (all Pending): (its id, the tasks' JSON)."""
        if request.execution_mode and request.execution_mode not in MODES:
            raise BadRequestError(
                f"execution_mode: {request.execution_mode!r} is not one of {', '.join(MODES)}"
            )
        ids = _check_group(request.tasks)
        group_id = str(uuid.uuid4())
        created: list[str] = []
        with self._lock:
            try:
                for body, task_id in zip(request.tasks, ids, strict=True):
                    self.tasks.create(body, task_id)
                    created.append(task_id)
            except ShimError:
                for task_id in created:  # all or nothing, as Propeller rolls back
                    self.tasks.delete(task_id)
                raise
            with self._db:
                self._db.execute(
                    "INSERT INTO groups VALUES (?, ?, ?, ?, ?)",
                    (group_id, kind, request.name, request.execution_mode, rfc3339(now())),
                )
                rows = [
                    (task_id, group_id, i, json.dumps(body.depends_on or []), body.run_if or "")
                    for i, (body, task_id) in enumerate(zip(request.tasks, ids, strict=True))
                ]
                self._db.executemany("INSERT INTO members VALUES (?, ?, ?, ?, ?)", rows)
        return group_id, [self.task_json(task_id) for task_id in ids]

    # Reads.
    def task_json(self, task_id: str) -> dict[str, Any]:
        """The task's JSON with its group fields (`job_id` or `workflow_id`, `depends_on`,
        `run_if`)."""
        return self.tasks.get(task_id).to_json() | self.fields(task_id)

    def fields(self, task_id: str) -> dict[str, Any]:
        """The group fields of a task ({} for a task in no group), Go's omitempty applied."""
        member = self._member(task_id)
        if member is None:
            return {}
        found: dict[str, Any] = {f"{member.kind}_id": member.group_id}
        if member.depends_on:
            found["depends_on"] = member.depends_on
        if member.run_if:
            found["run_if"] = member.run_if
        return found

    def job_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's tasks, in the order they were given; NotFoundError for an unknown job."""
        self._group(job_id, "job")
        return [self.task_json(m.task_id) for m in self._members(job_id)]

    def list_jobs(self, offset: int, limit: int, status: str) -> dict[str, Any]:
        """Propeller's JobPage: jobs newest first with their state (derived from their tasks),
        filtered by `status` (pending, running, completed or failed)."""
        _check_page(offset, limit)
        if status and status not in JOB_STATUS:
            raise BadRequestError(f"status: {status!r} is not one of {', '.join(JOB_STATUS)}")
        rows = self._db.execute(
            "SELECT id, name, created_at FROM groups WHERE kind = 'job' "
            "ORDER BY created_at DESC, id"
        ).fetchall()
        jobs = []
        for job_id, name, _ in rows:
            tasks = [self.task_json(m.task_id) for m in self._members(job_id)]
            summary = _summary(job_id, name, tasks)
            if not status or summary["state"] == JOB_STATUS[status]:
                jobs.append(summary)
        return {"offset": offset, "limit": limit, "total": len(jobs),
                "jobs": jobs[offset : offset + limit]}  # fmt: skip

    # Runs.
    def start_job(self, job_id: str) -> None:
        """Start the job's tasks that depend on nothing; the rest follow (`advance`)."""
        self._group(job_id, "job")
        members = self._members(job_id)
        roots = [m for m in members if not m.depends_on]
        try:
            for member in roots:
                self.tasks.start(member.task_id)
        except ShimError:
            self._stop(members)  # as Propeller: a job that cannot start does not half run
            raise

    def stop_job(self, job_id: str) -> None:
        """Stop every scheduled or running task of the job."""
        self._group(job_id, "job")
        self._stop(self._members(job_id))

    def advance(self) -> None:
        """Start (or skip) every Pending group task whose dependencies all finished."""
        rows = self._db.execute(
            "SELECT m.task_id, m.group_id, g.kind, m.depends_on, m.run_if FROM members m "
            "JOIN groups g ON g.id = m.group_id WHERE m.depends_on != '[]'"
        ).fetchall()
        for row in rows:
            member = _member_of(row)
            try:
                self._advance(member)
            except ShimError as exc:  # a deleted or changed task: the next tick decides again
                if not isinstance(exc, NotFoundError | ConflictError):
                    raise

    def _advance(self, member: Member) -> None:
        if self.tasks.task_state(member.task_id) != TaskState.PENDING:
            return
        states = {dep: self.tasks.task_state(dep) for dep in member.depends_on}
        if not all(state in FINISHED for state in states.values()):
            return
        if member.run_if == "failure":
            run = any(state == TaskState.FAILED for state in states.values())
        else:
            run = all(state == TaskState.COMPLETED for state in states.values())
        if run:
            self.tasks.start(member.task_id)
        else:
            condition = member.run_if or "success"
            want = "some dependency failed" if condition == "failure" else "all completed"
            self.tasks.store.skip(member.task_id, f"skipped: run_if {condition} needs {want}")

    def forget(self, task_id: str) -> None:
        """A deleted task leaves its group."""
        with self._db:
            self._db.execute("DELETE FROM members WHERE task_id = ?", (task_id,))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # Helpers.
    def _stop(self, members: list[Member]) -> None:
        for member in members:
            try:
                if self.tasks.task_state(member.task_id).active:
                    self.tasks.stop(member.task_id)
            except (NotFoundError, ConflictError):
                pass  # deleted, or ended meanwhile

    def _group(self, group_id: str, kind: str) -> None:
        row = self._db.execute(
            "SELECT 1 FROM groups WHERE id = ? AND kind = ?", (group_id, kind)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"{kind} {group_id} not found")

    def _members(self, group_id: str) -> list[Member]:
        rows = self._db.execute(
            "SELECT m.task_id, m.group_id, g.kind, m.depends_on, m.run_if FROM members m "
            "JOIN groups g ON g.id = m.group_id WHERE m.group_id = ? ORDER BY m.position",
            (group_id,),
        ).fetchall()
        return [_member_of(row) for row in rows]

    def _member(self, task_id: str) -> Member | None:
        row = self._db.execute(
            "SELECT m.task_id, m.group_id, g.kind, m.depends_on, m.run_if FROM members m "
            "JOIN groups g ON g.id = m.group_id WHERE m.task_id = ?",
            (task_id,),
        ).fetchone()
        return None if row is None else _member_of(row)


def _member_of(row: tuple[str, str, str, str, str]) -> Member:
    return Member(row[0], row[1], row[2], json.loads(row[3]), row[4])


def _check_group(tasks: list[GroupTask]) -> list[str]:
    """The tasks' ids (given, else new); BadRequestError for a group Propeller refuses."""
    if not tasks:
        raise BadRequestError("tasks: a job or workflow needs at least one task")
    if len(tasks) > MAX_GROUP:
        raise BadRequestError(f"tasks: {len(tasks)} tasks; at most {MAX_GROUP} are accepted")
    ids = []
    for i, task in enumerate(tasks):
        if not task.name:
            raise BadRequestError(f"tasks.{i}.name: a task needs a non-empty name")
        if task.run_if and task.run_if not in RUN_IF:
            raise BadRequestError(f"tasks.{i}.run_if: must be 'success' or 'failure'")
        try:
            ids.append(str(uuid.UUID(task.id)) if task.id else str(uuid.uuid4()))
        except ValueError:
            raise BadRequestError(f"tasks.{i}.id: {task.id!r} is not a UUID") from None
    if len(set(ids)) != len(ids):
        raise BadRequestError("tasks: two tasks have the same id")
    known = set(ids)
    for i, task in enumerate(tasks):
        missing = [dep for dep in task.depends_on or [] if dep not in known]
        if missing:
            raise BadRequestError(
                f"tasks.{i}.depends_on: {', '.join(missing)} is not a task of this request"
            )
    _check_acyclic({tid: list(t.depends_on or []) for tid, t in zip(ids, tasks, strict=True)})
    return ids


def _check_acyclic(graph: dict[str, list[str]]) -> None:
    """BadRequestError naming a task on a dependency cycle (an iterative depth-first search)."""
    done: set[str] = set()
    for start, first in graph.items():
        stack = [(start, iter(first))]
        on_path = {start}
        while stack:
            node, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
            elif dep in on_path:
                raise BadRequestError(f"depends_on: a cycle through task {dep}")
            elif dep not in done:
                stack.append((dep, iter(graph[dep])))
                on_path.add(dep)


def _summary(job_id: str, name: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Propeller's JobSummary: the job's state from its tasks', earliest start, latest finish."""
    states = [TaskState(t["state"]) for t in tasks]
    zero = rfc3339(None)

    def pick(key: str, latest: bool) -> str:
        times = [str(t[key]) for t in tasks if t[key] != zero]
        if not times:
            return zero
        parsed = sorted(times, key=datetime.fromisoformat)
        return parsed[-1] if latest else parsed[0]

    summary: dict[str, Any] = {"job_id": job_id}
    if name:
        summary["name"] = name
    return summary | {
        "state": int(_job_state(states)),
        "tasks": tasks,
        "start_time": pick("start_time", latest=False),
        "finish_time": pick("finish_time", latest=True),
        "created_at": pick("created_at", latest=False),
    }


def _job_state(states: list[TaskState]) -> TaskState:
    """Failed if any failed or was interrupted; Running if any is active; Completed when all
    completed or were skipped; Pending otherwise (Propeller's ComputeJobState)."""
    if any(s in (TaskState.FAILED, TaskState.INTERRUPTED) for s in states):
        return TaskState.FAILED
    if any(s.active for s in states):
        return TaskState.RUNNING
    if states and all(s in (TaskState.COMPLETED, TaskState.SKIPPED) for s in states):
        return TaskState.COMPLETED
    return TaskState.PENDING
