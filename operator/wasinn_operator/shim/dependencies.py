"""The dependencies of a task created or changed on its own (`POST /tasks`, `PUT /tasks/{id}`).

A task's `depends_on` names tasks of its workflow (`workflow_id`) that must finish before it
runs (`jobs.py` starts it then). As Propeller's CreateTask checks them
(dag.ValidateDependenciesExist and dag.ValidateDAG over the workflow's tasks and the new one),
each named task must exist and belong to the same workflow, and the dependencies may form no
cycle. Propeller answers 500
(`dependency validation failed: ...`) for a missing one; here it is a 400 naming it, and nothing
is stored. The tasks of a `POST /jobs` or `POST /workflows` request are checked in `jobs.py`.
"""

from __future__ import annotations

import uuid

from .errors import BadRequestError, NotFoundError
from .store import TaskRecord, TaskStore


def check(store: TaskStore, record: TaskRecord) -> None:
    """BadRequestError unless every task `record` depends on exists in its workflow and no
    dependency leads back to it."""
    deps: list[str] = list(record.extra.get("depends_on") or [])
    workflow = record.extra.get("workflow_id")
    for dep in deps:
        if dep == record.id:
            raise BadRequestError(f"depends_on: task {dep} cannot depend on itself")
        found = _get(store, dep)
        if found is None:
            raise BadRequestError(f"depends_on: task {dep} does not exist")
        if found.extra.get("workflow_id") != workflow:
            raise BadRequestError(f"depends_on: task {dep} is not in workflow {workflow}")
    # A task changed by PUT may already be a dependency of others: follow the stored ones.
    seen: set[str] = set()
    waiting = list(deps)
    while waiting:
        current = waiting.pop()
        if current == record.id:
            raise BadRequestError(f"depends_on: a cycle through task {record.id}")
        if current in seen:
            continue
        seen.add(current)
        found = _get(store, current)
        if found is not None:
            waiting.extend(found.extra.get("depends_on") or [])


def _get(store: TaskStore, task_id: str) -> TaskRecord | None:
    """The stored task, None when there is none (an id that is not a UUID names none)."""
    try:
        uuid.UUID(task_id)
        return store.get(task_id)
    except (ValueError, NotFoundError):
        return None
