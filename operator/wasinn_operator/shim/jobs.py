"""Jobs and workflows: groups of tasks that run in dependency order (Propeller's semantics).

`POST /jobs` and `POST /workflows` create every task of the group through `TaskService` (each
checked against the task policy; none is kept when one is refused, as Propeller rolls back).
Membership is stored on the tasks themselves (`TaskRecord.extra`: `job_id` or `workflow_id`,
`depends_on`, `run_if`, and for a job its `job_name` and `execution_mode`), so groups work on
either backend and survive restarts with the tasks. A task names the others it waits for in
`depends_on` (their ids, given by the client in the same request) and when it runs in `run_if`:
`success` (the default: every dependency Completed) or `failure` (some dependency Failed). The
dependencies must be tasks of the group and form no cycle (manager/service.go CreateJob,
CreateWorkflow; pkg/dag).

Starting a job starts its tasks that depend on nothing (every execution mode does, as in
Propeller's StartJob); a workflow's roots are started by the client. `advance()` (called every
tick by `schedule.py`) then starts each Pending group task whose dependencies all finished
(Completed, Failed or Skipped) when its condition holds, and marks it Skipped (5) when it does
not, so a failure skips a `success` dependent and, in turn, its own dependents. A dependency
that was interrupted is not finished: its dependents wait. The ordering is done here, above
the backends: the kubernetes backend runs each task as its own WasiNNTask.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.lifecycle import TaskPhase
from ..api.propeller import TaskInput
from ..api.times import propeller_time
from .errors import BadRequestError, ConflictError, NotFoundError, ShimError
from .httpbits import describe
from .service import TaskService, _check_page
from .store import TaskRecord

RUN_IF = ("success", "failure")
MODES = ("parallel", "sequential", "configurable")
DEFAULT_MODE = "parallel"
# Propeller's job status filter (task.ToJobStatus) and the job state each one selects.
JOB_STATUS = {
    "pending": TaskPhase.PENDING,
    "running": TaskPhase.RUNNING,
    "completed": TaskPhase.COMPLETED,
    "failed": TaskPhase.FAILED,
}
MAX_GROUP = 100  # tasks in one job or workflow (each is a task of its own)
# Tasks read per page when scanning every task (the kubernetes backend lists every object for
# each page: few pages).
SCAN_PAGE = 10_000
DONE = (TaskPhase.COMPLETED, TaskPhase.FAILED, TaskPhase.SKIPPED)
log = logging.getLogger("wasinn.shim.jobs")


class GroupTask(TaskInput):
    """A task of a job or workflow request: a Task with (optionally) its own id."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None


class JobRequest(BaseModel):
    """`POST /jobs` (`name`, `tasks`, `execution_mode`) and `POST /workflows` (`tasks`)."""

    model_config = ConfigDict(extra="ignore")
    name: str = ""
    tasks: list[GroupTask] = Field(default_factory=list)
    execution_mode: str = ""


def decode_request(data: Any) -> JobRequest:
    """The request body as a `JobRequest`; BadRequestError naming the field otherwise."""
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe(exc)) from None


def every_task(service: TaskService) -> Iterator[TaskRecord]:
    """Every task (without results), a page at a time."""
    offset = 0
    while True:
        records, total = service.store.page(offset, SCAN_PAGE)
        yield from records
        offset += len(records)
        if not records or offset >= total:
            return


class JobService:
    """Creates, lists, starts and stops jobs and workflows; advances their dependents."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks

    # Creation.
    def create_job(self, request: JobRequest) -> tuple[str, list[dict[str, Any]]]:
        """A new job and its tasks (all Pending): (its id, the tasks' JSON)."""
        mode = request.execution_mode.strip()
        if mode and mode not in MODES:
            raise BadRequestError(f"execution_mode: {mode!r} is not one of {', '.join(MODES)}")
        job_id = _given_group_id(request.tasks, "job_id")
        group = {"job_id": job_id, "job_name": request.name, "execution_mode": mode}
        return job_id, self._create(request.tasks, group)

    def create_workflow(self, request: JobRequest) -> list[dict[str, Any]]:
        """A new workflow's tasks (all Pending), as JSON."""
        workflow_id = _given_group_id(request.tasks, "workflow_id")
        return self._create(request.tasks, {"workflow_id": workflow_id})

    def _create(self, tasks: list[GroupTask], group: dict[str, Any]) -> list[dict[str, Any]]:
        ids = _check_group(tasks)
        # The group's id is a Propeller field of every task; the job's name and mode are ours.
        member = {k: v for k, v in group.items() if k in ("job_id", "workflow_id")}
        private = {k: v for k, v in group.items() if k not in member and v}
        created: list[str] = []
        try:
            for body, task_id in zip(tasks, ids, strict=True):
                self.tasks.create(body.model_copy(update=member), task_id, group=private)
                created.append(task_id)
        except ShimError:
            for task_id in created:  # all or nothing, as Propeller rolls back
                self.tasks.delete(task_id)
            raise
        return [self.tasks.get(task_id).to_json() for task_id in ids]

    # Reads.
    def _job(self, job_id: str) -> list[TaskRecord]:
        """The job's tasks, in the order they were given; NotFoundError when it has none."""
        members = [r for r in every_task(self.tasks) if r.extra.get("job_id") == job_id]
        if not members:
            raise NotFoundError(f"job {job_id} not found")
        return list(reversed(members))  # listings are newest first

    def job_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's tasks as JSON, in the order they were given."""
        return [self.tasks.get(r.id).to_json() for r in self._job(job_id)]

    def list_jobs(self, offset: int, limit: int, status: str) -> dict[str, Any]:
        """Propeller's JobPage: jobs newest first with their state (derived from their tasks),
        filtered by `status` (pending, running, completed or failed)."""
        _check_page(offset, limit)
        if status and status not in JOB_STATUS:
            raise BadRequestError(
                f"status: invalid job status {status!r} (allowed: {', '.join(JOB_STATUS)})"
            )
        groups: dict[str, list[TaskRecord]] = {}
        for record in every_task(self.tasks):
            job_id = record.extra.get("job_id")
            if job_id:
                groups.setdefault(job_id, []).insert(0, record)
        jobs = [_summary(job_id, members) for job_id, members in groups.items()]
        jobs.sort(key=lambda j: j["job_id"])
        jobs.sort(key=lambda j: datetime.fromisoformat(j["created_at"]), reverse=True)
        if status:
            jobs = [j for j in jobs if j["state"] == JOB_STATUS[status].state]
        return {"offset": offset, "limit": limit, "total": len(jobs),
                "jobs": jobs[offset : offset + limit]}  # fmt: skip

    # Runs.
    def start_job(self, job_id: str) -> None:
        """Start the job's tasks that depend on nothing; the rest follow (`advance`). When one
        cannot start, the started ones are stopped (as Propeller's StartJob)."""
        members = self._job(job_id)
        try:
            for record in members:
                if not record.extra.get("depends_on"):
                    self.tasks.start(record.id)
        except ShimError:
            self._stop(members)
            raise

    def stop_job(self, job_id: str) -> None:
        """Stop every scheduled or running task of the job."""
        self._stop(self._job(job_id))

    def advance(self, records: list[TaskRecord] | None = None) -> None:
        """Start (or skip) every Pending group task whose dependencies all finished.
        `records`: every task, when the caller read them already."""
        records = list(every_task(self.tasks)) if records is None else records
        phases = {r.id: r.phase for r in records}
        for record in records:
            deps = record.extra.get("depends_on") or []
            if record.phase is not TaskPhase.PENDING or not deps:
                continue
            if not (record.extra.get("job_id") or record.extra.get("workflow_id")):
                continue
            states = [phases.get(dep) for dep in deps]
            if not all(state in DONE for state in states):
                continue  # waiting (or a dependency was deleted: it never finishes)
            try:
                self._decide(record, states)
            except (NotFoundError, ConflictError) as exc:
                log.info("task %s: %s (decided again next tick)", record.id, exc)
            except ShimError as exc:  # e.g. no module: the dependent cannot run
                log.warning("task %s could not start: %s", record.id, exc)
                self.tasks.fail(record.id, str(exc))

    def _decide(self, record: TaskRecord, states: list[TaskPhase | None]) -> None:
        condition = record.extra.get("run_if") or "success"
        if condition == "failure":
            run = any(state is TaskPhase.FAILED for state in states)
        else:
            run = all(state is TaskPhase.COMPLETED for state in states)
        if run:
            self.tasks.start(record.id)
        else:
            want = "a dependency that failed" if condition == "failure" else "every one completed"
            self.tasks.store.skip(record.id, f"skipped: run_if {condition} needs {want}")

    def _stop(self, members: list[TaskRecord]) -> None:
        for record in members:
            try:
                if self.tasks.task_phase(record.id).active:
                    self.tasks.stop(record.id)
            except (NotFoundError, ConflictError):
                pass  # deleted, or ended meanwhile


def _given_group_id(tasks: list[GroupTask], key: str) -> str:
    """The first group id a task carries (Propeller keeps it), else a new one."""
    for task in tasks:
        given = getattr(task, key)
        if given:
            return str(given)
    return str(uuid.uuid4())


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
        if missing:  # Propeller: 500 "dependency validation failed"
            raise BadRequestError(
                f"tasks.{i}.depends_on: task {missing[0]} does not exist in this request"
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


def _summary(job_id: str, members: list[TaskRecord]) -> dict[str, Any]:
    """Propeller's JobSummary: the job's state from its tasks', earliest start, latest finish
    (Go's zero time when none), earliest creation."""

    def pick(times: list[datetime | None], latest: bool) -> str:
        known = [t for t in times if t is not None]
        if not known:
            return propeller_time(None)
        return propeller_time(max(known) if latest else min(known))

    summary: dict[str, Any] = {"job_id": job_id}
    name = members[0].extra.get("job_name") if members else ""
    if name:
        summary["name"] = name
    return summary | {
        "state": _job_state([m.phase for m in members]).state,
        "tasks": [m.to_task().to_json() for m in members],
        "start_time": pick([m.start_time for m in members], latest=False),
        "finish_time": pick([m.finish_time for m in members], latest=True),
        "created_at": pick([m.created_at for m in members], latest=False),
    }


def _job_state(phases: list[TaskPhase]) -> TaskPhase:
    """Failed if any failed or was interrupted; Running if any is active; Completed when all
    completed or were skipped; Pending otherwise (Propeller's ComputeJobState)."""
    if any(p in (TaskPhase.FAILED, TaskPhase.INTERRUPTED) for p in phases):
        return TaskPhase.FAILED
    if any(p.active for p in phases):
        return TaskPhase.RUNNING
    if phases and all(p in (TaskPhase.COMPLETED, TaskPhase.SKIPPED) for p in phases):
        return TaskPhase.COMPLETED
    return TaskPhase.PENDING
