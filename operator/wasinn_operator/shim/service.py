"""The manager's logic, transport-free: what each REST route (and MQTT start/stop) does.

Inputs arrive decoded (`TaskInput`); every failure is a typed `ShimError`. One lock orders the
operations that touch both the artifact store and the task store, so garbage collection never
removes a module a task is about to refer to. Every task is checked against the task policy
(`api/policy.py`) before anything of it is stored or run: on create, update, upload and start,
and for a manager's MQTT start.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from typing import Any

from .. import __version__
from ..api.policy import PROPELLER_FIELDS, PolicyError, Resolve, TaskPolicy, check_task
from ..api.propeller import (
    Health,
    Proplet,
    PropletPage,
    Task,
    TaskInput,
    TaskPage,
    TaskState,
)
from .artifacts import ArtifactStore
from .errors import BadRequestError, ConflictError, NotFoundError
from .store import TaskRecord, TaskStore, now

MAX_PAGE = 1000


class TaskService:
    """Tasks CRUD, start/stop, results and proplets over a `TaskStore` and an `ArtifactStore`."""

    def __init__(
        self,
        store: TaskStore,
        artifacts: ArtifactStore,
        instance_id: str,
        policy: TaskPolicy | None = None,
        resolve: Resolve = os.path.realpath,
    ) -> None:
        """`policy` (default: the strict one) decides what tasks may hold; `resolve` maps their
        host paths to what they name (`os.path.realpath` for tasks run on this machine)."""
        self.store = store
        self.artifacts = artifacts
        self.instance_id = instance_id
        self.policy = policy or TaskPolicy()
        self._resolve = resolve
        self._lock = threading.RLock()

    # Tasks.
    def create(self, body: TaskInput, task_id: str | None = None) -> Task:
        """A new Pending task; `name` is required, the id is a fresh UUID unless given."""
        if not body.name:
            raise BadRequestError("name: a task needs a non-empty name")
        self._admit(None, body)
        with self._lock:
            record = TaskRecord(id=task_id or str(uuid.uuid4()), name=body.name)
            self._apply(record, body)
            self.store.add(record)
            return self._task(record)

    def list(self, offset: int, limit: int) -> TaskPage:
        """A page in creation order (files are left out of pages; GET a task to read its file)."""
        _check_page(offset, limit)
        records, total = self.store.page(offset, limit)
        return TaskPage(
            offset=offset, limit=limit, total=total, tasks=[r.to_task() for r in records]
        )

    def get(self, task_id: str) -> Task:
        """The task with its file."""
        return self._task(self.store.get(task_id))

    def update(self, task_id: str, body: TaskInput) -> Task:
        """Apply every field present in the body (Propeller v-old applied only some); a null
        `name` leaves the name as it is."""
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, body)
            self._apply(record, body)
            record.updated_at = now()
            self.store.save(record)
            self._collect()
            return self._task(record)

    def upload(self, task_id: str, filename: str, data: bytes) -> Task:
        """Set the task's module from a multipart upload (`file`, a `.wasm` name)."""
        if not filename.endswith(".wasm"):
            raise BadRequestError(f"file: the file name {filename!r} must end with .wasm")
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, TaskInput())
            record.digest = self.artifacts.put(data)
            record.updated_at = now()
            self.store.save(record)
            self._collect()
            return self._task(record)

    def delete(self, task_id: str) -> None:
        """Delete the task (ending its run) and its module when no other task uses it."""
        with self._lock:
            self.store.remove(task_id)
            self._collect()

    def start(self, task_id: str) -> None:
        """Queue a run; without a module (file, upload or image_url) that is a conflict."""
        with self._lock:
            record = self.store.get(task_id)
            if not (record.digest or record.image_url):
                raise ConflictError(
                    f"task {task_id} has no wasm module: set `file`, upload one, or set `image_url`"
                )
            self._admit(record, TaskInput())  # stored under an older, wider policy?
            self.store.start(task_id)

    def stop(self, task_id: str) -> None:
        """End a scheduled or running task (state Interrupted)."""
        self.store.stop(task_id)

    def results(self, task_id: str) -> Any:
        """The task's results (the guest's stdout), None before it finished."""
        return self.store.get(task_id).results

    # Proplets and health.
    def proplets(self, offset: int, limit: int) -> PropletPage:
        """The backend's workers."""
        _check_page(offset, limit)
        found = self.store.proplets()
        return PropletPage(
            offset=offset,
            limit=limit,
            total=len(found),
            proplets=[Proplet(**vars(p)) for p in found[offset : offset + limit]],
        )

    def proplet(self, proplet_id: str) -> Proplet:
        """One worker."""
        for found in self.store.proplets():
            if found.id == proplet_id:
                return Proplet(**vars(found))
        raise NotFoundError(f"proplet {proplet_id} not found")

    def health(self) -> Health:
        """Propeller's health answer; commit and build time come from the image's build."""
        return Health(
            status="pass",
            version=__version__,
            commit=os.environ.get("WASINN_COMMIT", "unknown"),
            description="wasinn shim: Propeller manager API",
            build_time=os.environ.get("WASINN_BUILD_TIME", "unknown"),
            instance_id=self.instance_id,
        )

    # Tasks from a Propeller manager (MQTT).
    def accept(
        self, task_id: str, body: TaskInput, wasm: bytes | None = None, error: str | None = None
    ) -> bool:
        """Create or replace task `task_id` from a manager's start, then run it (or, with
        `error` or when the policy refuses it, record it Failed so the manager hears why it
        could not run).

        Returns False (and changes nothing) when that task is already scheduled or running:
        a redelivered start message must not run it twice.
        """
        with self._lock:
            if self.refuse_start(task_id, body):
                return True
            try:
                record = self.store.get(task_id)
            except NotFoundError:
                record = TaskRecord(id=task_id, name=body.name or task_id)
                self._apply(record, body)
                self.store.add(record)
            else:
                if record.state.active:
                    return False
                self._apply(record, body)
                record.updated_at = now()
            if wasm is not None:
                record.digest = self.artifacts.put(wasm)
            self.store.save(record)
            self._collect()
            if error is None and not (record.digest or record.image_url):
                error = "the start message holds no file and no image_url"
            if error is None:
                self.store.start(task_id)
            else:
                self.store.fail(task_id, error)
            return True

    def refuse_start(self, task_id: str, body: TaskInput) -> bool:
        """True when the policy refuses a manager's start of `task_id`: it is then recorded
        Failed with the reason (published to the manager), storing nothing of the message but
        the name, so no runnable task comes of it. False otherwise, changing nothing."""
        with self._lock:
            try:
                record: TaskRecord | None = self.store.get(task_id)
            except NotFoundError:
                record = None
            if record is not None and record.state.active:
                return False  # a redelivered start: accept() ignores it
            try:
                self._admit(record, body)
            except BadRequestError as exc:
                if record is None:
                    self.store.add(TaskRecord(id=task_id, name=body.name or task_id))
                self.store.fail(task_id, str(exc))
                return True
            return False

    def fail(self, task_id: str, error: str) -> None:
        """Fail a task that could not be run (its result is published)."""
        self.store.fail(task_id, error)

    # Helpers.
    def _admit(self, record: TaskRecord | None, body: TaskInput) -> None:
        """BadRequestError unless the policy allows the task `body` makes of `record`."""
        stored = record or TaskRecord(id="", name="")
        given = body.model_fields_set
        cli_args = body.cli_args if "cli_args" in given else stored.cli_args
        env = body.env if "env" in given else stored.env
        inputs = body.inputs if "inputs" in given else stored.inputs
        try:
            check_task(
                self.policy,
                cli_args or [],
                env or {},
                inputs or [],
                fields=PROPELLER_FIELDS,
                resolve=self._resolve,
            )
        except PolicyError as exc:
            raise BadRequestError(str(exc)) from None

    def _apply(self, record: TaskRecord, body: TaskInput) -> None:
        given = body.model_fields_set
        if body.name:
            record.name = body.name
        if "file" in given:
            wasm = body.wasm_bytes()
            record.digest = self.artifacts.put(wasm) if wasm else ""
        if "image_url" in given:
            record.image_url = body.image_url or ""
        if "cli_args" in given:
            record.cli_args = body.cli_args
        if "inputs" in given:
            record.inputs = list(body.inputs or [])
        if "env" in given:
            record.env = dict(body.env or {})
        if "daemon" in given:
            record.daemon = bool(body.daemon)

    def _task(self, record: TaskRecord) -> Task:
        file = None
        if record.digest:
            try:
                file = base64.b64encode(self.artifacts.read(record.digest)).decode()
            except NotFoundError:
                file = None
        return record.to_task(file)

    def _collect(self) -> None:
        self.artifacts.collect(self.store.digests())

    def task_state(self, task_id: str) -> TaskState:
        """The task's state (for the bridge and tests)."""
        return self.store.get(task_id).state


def _check_page(offset: int, limit: int) -> None:
    if not 0 <= offset < 1 << 63:
        raise BadRequestError("offset: must be between 0 and 2^63-1")
    if not 0 <= limit <= MAX_PAGE:
        raise BadRequestError(f"limit: must be between 0 and {MAX_PAGE}")
