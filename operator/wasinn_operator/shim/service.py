"""The manager's logic, transport-free: what each REST route (and MQTT start/stop) does.

Inputs arrive decoded (`TaskInput`, and a module already received into the artifact store as a
`ModuleUpload`); every failure is a typed `ShimError`. One lock orders the operations that touch
both the artifact store and the task store, so garbage collection never removes a module a task
is about to refer to; it removes only a module an operation here stopped referring to. Every
task is checked against the task policy (`api/policy.py`) before anything of it is stored or
run: on create, update, upload and start, and for a manager's MQTT start.

Answers carry the module (`file`) only redacted and listings carry each task's results, as
Propeller's do (results are capped per task, so a page of 100 stays bounded). `health()`
checks every dependency (see `health.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api.lifecycle import TaskPhase
from ..api.policy import PROPELLER_FIELDS, PolicyError, Resolve, TaskPolicy, check_task
from ..api.propeller import (
    Health,
    Proplet,
    PropletPage,
    Task,
    TaskInput,
    TaskPage,
)
from . import dependencies, taskfields
from .artifacts import ArtifactStore, ModuleUpload
from .config import BuildInfo
from .dispatch import Dispatcher
from .errors import BadRequestError, ConflictError, NotFoundError, ShimError
from .health import HealthChecks
from .latent import LatentTasks
from .proplets import PropletRegistry
from .store import PropletRecord, TaskRecord, TaskStore, now
from .validation import check_task_limit, proplet_alive_filter

MAX_PAGE = 1000
# What one task may hold besides its module (stored, and answered in every listing).
MAX_ITEMS = 1024  # entries of cli_args, inputs or env
MAX_SPEC_BYTES = 64 << 10  # name, image_url, cli_args, inputs and env together, as JSON
log = logging.getLogger("wasinn.shim")


class TaskService:
    """Tasks CRUD, start/stop, results and proplets over a `TaskStore` and an `ArtifactStore`."""

    def __init__(
        self,
        store: TaskStore,
        artifacts: ArtifactStore,
        instance_id: str,
        policy: TaskPolicy | None = None,
        resolve: Resolve = os.path.realpath,
        *,
        min_free_bytes: int = 64 << 20,
        disk_paths: list[Path] | None = None,
        build: BuildInfo | None = None,
    ) -> None:
        """`policy` (default: the strict one) decides what tasks may hold; `resolve` maps their
        host paths to what they name (`os.path.realpath` for tasks run on this machine)."""
        self.store = store
        self.artifacts = artifacts
        self.instance_id = instance_id
        self.policy = policy or TaskPolicy()
        self._resolve = resolve
        self._lock = threading.RLock()
        self.checks = HealthChecks(
            store, artifacts, min_free_bytes, disk_paths or [artifacts.directory], build
        )
        self._redact = taskfields.Redactor()
        self.registry = PropletRegistry(store.proplets)
        self.dispatcher: Dispatcher | None = None  # manager mode (MQTT): set by `main.build`
        self.latent = LatentTasks()

    # Tasks.
    def create(
        self,
        body: TaskInput,
        task_id: str | None = None,
        module: ModuleUpload | None = None,
        *,
        group: dict[str, Any] | None = None,
    ) -> Task:
        """A new Pending task; `name` is required, the id is a fresh UUID unless given;
        `module` (received already) becomes its file. Its `updated_at` stays Go's zero time
        until it is changed, as in Propeller. `group`: the task belongs to a job or workflow
        (`jobs.py`); these entries join its `extra`."""
        if not body.name:
            raise BadRequestError("name: a task needs a non-empty name")
        self._admit(None, body)
        with self._lock:
            record = TaskRecord(id=task_id or str(uuid.uuid4()), name=body.name)
            record.updated_at = record.created_at
            self._apply(record, body, module, creating=True, in_group=group is not None)
            record.extra = {**record.extra, **(group or {})}
            write = self.store.add if group is not None else self._checked(self.store.add)
            self._write(write, record, "")
            return self._task(record)

    def list(self, offset: int, limit: int, metadata: dict[str, Any] | None = None) -> TaskPage:
        """A page, newest first, of the tasks whose metadata has every key of `metadata`."""
        _check_page(offset, limit)
        check_task_limit(limit)
        records, total = self.store.page(offset, limit, metadata)
        tasks = [self._task(r) for r in records]
        return TaskPage(offset=offset, limit=limit, total=total, tasks=tasks)

    def get(self, task_id: str) -> Task:
        """The task (its file redacted)."""
        return self._task(self.store.get(task_id))

    def update(self, task_id: str, body: TaskInput, module: ModuleUpload | None = None) -> Task:
        """Apply every field present in the body (Propeller applies only some); a missing or
        empty `name` leaves the name as it is; `module` (received already) replaces the file.
        A running task may be changed too: its running attempt keeps what it started with."""
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, body)
            old = record.digest
            self._apply(record, body, module, creating=False)
            record.updated_at = now()
            changed = {"depends_on", "workflow_id"} & body.model_fields_set
            write = self._checked(self.store.save) if changed else self.store.save
            self._write(write, record, self._releasable(record, old))
            return self._task(record)

    def upload(self, task_id: str, filename: str, module: ModuleUpload) -> Task:
        """Set the task's module from a multipart upload (`file`, a `.wasm` name)."""
        check_module_name(filename)
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, TaskInput())
            old = record.digest
            record.digest = module.commit()
            record.updated_at = now()
            self._write(self.store.save, record, self._releasable(record, old))
            return self._task(record)

    def _checked(self, write: Callable[[TaskRecord], None]) -> Callable[[TaskRecord], None]:
        """`write`, once the task's dependencies are known to exist (`dependencies.py`): a
        refused task is not stored and the module it would have used is removed (`_write`)."""

        def checked(record: TaskRecord) -> None:
            dependencies.check(self.store, record)
            write(record)

        return checked

    def _releasable(self, record: TaskRecord, old: str) -> str:
        # A running attempt may still read the module it started with: keep it (a later
        # change or delete of an idle task lets it go).
        return "" if record.phase.active else old

    def _task(self, record: TaskRecord) -> Task:
        """The Propeller task, its module (when it has one) redacted as Propeller does."""
        file = None
        if record.digest:
            try:
                file = self._redact(record.digest, self.artifacts.open)
            except (NotFoundError, OSError):
                file = None
        return record.to_task(file)

    def delete(self, task_id: str) -> None:
        """Delete the task (ending its run) and its module when no other task uses it."""
        with self._lock:
            record = self.store.remove(task_id)
            self._release(record.digest, "")
        self.latent.forget(task_id)
        if self.dispatcher is not None:
            self.dispatcher.forget(task_id)

    def start(self, task_id: str) -> None:
        """Queue a run, or hand it to external proplets (`dispatch.py`); without a module
        (file, upload or image_url) that is a conflict. A task addressed to a proplet this
        service does not know is not found (404), as in Propeller, and one addressed to an
        external proplet that is not alive a conflict (409); an encrypted one needs a key
        broker, which the shim has not (400). A latent task is deployed, not run."""
        with self._lock:
            record = self.store.get(task_id)
            if not (record.digest or record.image_url):
                raise ConflictError(
                    f"task {task_id} has no wasm module: set `file`, upload one, or set `image_url`"
                )
            if record.extra.get("encrypted"):
                raise BadRequestError(
                    "encrypted: encrypted modules need a key broker service, which this shim "
                    "does not have; store the module unencrypted"
                )
            if record.proplet_id and record.phase == TaskPhase.PENDING:
                self.proplet(record.proplet_id)  # NotFoundError when no such proplet
            self._admit(record, TaskInput())  # stored under an older, wider policy?
            if record.extra.get("latent"):
                self._deploy(record)
                return
            placement = self.dispatcher.place(record) if self.dispatcher else None
            if placement is None:
                self.store.start(task_id)
                return
        assert self.dispatcher is not None
        self.dispatcher.send_start(placement)  # unlocked: it waits for the broker

    def stop(self, task_id: str) -> None:
        """End a scheduled or running task: Failed (4), error `task was stopped before
        completion`, as Propeller records a stopped task (a dispatched run's proplets are
        told to stop). A task whose run has finished is left as it is (Propeller answers 200:
        its proplet has nothing left to stop); one that never ran is a 409."""
        if self.dispatcher is not None and self.dispatcher.stop(task_id):
            return
        if self.latent.forget(task_id):
            # kubernetes: a deployed latent task is never run, so never Running (a conflict).
            with contextlib.suppress(ConflictError):
                self.store.stop(task_id)
            return
        try:
            self.store.stop(task_id)
        except ConflictError:
            record = self.store.get(task_id)
            if not (record.phase.finished and record.start_time is not None):
                raise

    def _deploy(self, record: TaskRecord) -> None:
        """Deploy latent task `record`: Running while it waits for invocations (Propeller's
        state for it), its runs being the invocations."""
        # kubernetes refuses (the operator owns the status): the task stays as it is there.
        with contextlib.suppress(BadRequestError):
            self.store.dispatch(record.id, self.instance_id)
        self.latent.deploy(record.id)

    def results(self, task_id: str) -> Any:
        """The task's results (the guest's stdout), None before it finished."""
        return self.store.get(task_id).results

    def proplets(self, offset: int, limit: int, status: str | None = None) -> PropletPage:
        """The backend's workers and the external proplets (`registry`); `status` active or
        inactive keeps the alive or the other ones (anything else is a 400, as in Propeller)."""
        _check_page(offset, limit)
        found = self.registry.list(proplet_alive_filter(status))
        return PropletPage(
            offset=offset,
            limit=limit,
            total=len(found),
            proplets=[_proplet(p) for p in found[offset : offset + limit]],
        )

    def proplet(self, proplet_id: str) -> Proplet:
        """One proplet (a worker of the backend or an external one); an unknown id is a 404,
        or a 400 when it is not a UUID (as Propeller's entityReq answers; kubernetes node
        names, which are not UUIDs, are still found)."""
        return _proplet(self.registry.get(proplet_id))

    def health(self) -> Health:
        """Propeller's health answer and every dependency's check; commit and build time come
        from the image's build."""
        return self.checks.health(self.instance_id)

    # Tasks from a Propeller manager (MQTT).
    def accept(
        self,
        task_id: str,
        body: TaskInput,
        wasm: bytes | None = None,
        error: str | None = None,
        *,
        run: bool = True,
    ) -> bool:
        """Create or replace task `task_id` from a manager's start, then run it (or, with
        `error` or when the policy refuses it, record it Failed so the manager hears why it
        could not run). `run=False` (a latent task, run by invocations) only stores it.

        Returns False (and changes nothing) when that task is already scheduled or running:
        a redelivered start message must not run it twice. With `error`, the body (which may
        be what was refused) is not applied; only its name is kept, cut to 1024 characters.
        """
        with self._lock:
            if self.refuse_start(task_id, body):
                return True
            try:
                record = self.store.get(task_id)
            except NotFoundError:
                record = TaskRecord(id=task_id, name=(body.name or task_id)[:1024])
                if error is None:
                    self._apply(record, body, creating=True)
                self.store.add(record)
            else:
                if record.phase.active:
                    return False
                if error is None:
                    self._apply(record, body)
                record.updated_at = now()
            old = record.digest
            if wasm is not None:
                record.digest = self.artifacts.put(wasm)
            self._write(self.store.save, record, old)
            if error is None and not (record.digest or record.image_url):
                error = "the start message holds no file and no image_url"
            if error is not None:
                self.store.fail(task_id, error)
            elif run:
                self.store.start(task_id)
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
            if record is not None and record.phase.active:
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

    def change_extra(self, task_id: str, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Let `change` edit the task's Propeller fields (a copy); when it returns True they
        are saved, its `updated_at` untouched (the scheduler's own bookkeeping, not a client's
        update). Whether they were."""
        with self._lock:
            record = self.store.get(task_id)
            extra = dict(record.extra)
            if not change(extra):
                return False
            record.extra = extra
            self.store.save(record)
            return True

    def admit(self, record: TaskRecord | None, body: TaskInput) -> None:
        """BadRequestError unless the policy allows the task `body` makes of `record` (an
        invocation's inputs and env, say)."""
        self._admit(record, body)

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

    def _apply(
        self,
        record: TaskRecord,
        body: TaskInput,
        module: ModuleUpload | None = None,
        *,
        creating: bool = False,
        in_group: bool = False,
    ) -> None:
        given = body.model_fields_set
        if body.name:
            record.name = body.name
        if "proplet_id" in given:
            record.proplet_id = body.proplet_id or ""
        extra = dict(record.extra)
        taskfields.apply(extra, body, record.proplet_id, creating=creating, in_group=in_group)
        record.extra = extra
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
        _check_size(record)
        # The module last: committed only once the rest is known to be acceptable.
        if module is not None:
            record.digest = module.commit()
        elif "file" in given:
            wasm = body.wasm_bytes()
            record.digest = self.artifacts.put(wasm) if wasm else ""

    def _write(self, write: Callable[[TaskRecord], None], record: TaskRecord, old: str) -> None:
        """`write(record)`, then remove the module it stopped using (`old`); if the write fails,
        remove the module it would have used instead."""
        try:
            write(record)
        except BaseException:
            self._release(record.digest, old)
            raise
        self._release(old, record.digest)

    def _release(self, old: str, new: str) -> None:
        """Remove module `old` if the operation just made stopped using it and no task does."""
        if not old or old == new:
            return
        try:
            self.artifacts.release({old}, self.store.digests())
        except (ShimError, OSError) as exc:  # the module stays; the operation succeeded
            log.warning("could not remove module %s: %s", old, exc)

    def task_phase(self, task_id: str) -> TaskPhase:
        """The task's phase (for the bridge and tests)."""
        return self.store.get(task_id).phase


def check_module_name(filename: str) -> None:
    """An uploaded module's file name must end with `.wasm` (as Propeller requires)."""
    if not filename.endswith(".wasm"):
        raise BadRequestError(f"file: the file name {filename!r} must end with .wasm")


def _check_size(record: TaskRecord) -> None:
    for name, items in (("cli_args", record.cli_args), ("inputs", record.inputs),
                        ("env", record.env)):  # fmt: skip
        if items is not None and len(items) > MAX_ITEMS:
            raise BadRequestError(f"{name}: {len(items)} entries; at most {MAX_ITEMS} are accepted")
    fields = [record.name, record.image_url, record.cli_args, record.inputs, record.env]
    size = len(json.dumps(fields))
    if size > MAX_SPEC_BYTES:
        raise BadRequestError(
            f"name, image_url, cli_args, inputs and env: {size} bytes as JSON; at most "
            f"{MAX_SPEC_BYTES} are accepted"
        )


def _proplet(found: PropletRecord) -> Proplet:
    history = found.alive_history
    return Proplet(
        id=found.id,
        name=found.name,
        task_count=found.task_count,
        alive=found.alive,
        last_alive_at=history[-1] if history else None,
        metadata=found.metadata,
    )


def _check_page(offset: int, limit: int) -> None:
    if not 0 <= offset < 1 << 63:
        raise BadRequestError("offset: must be between 0 and 2^63-1")
    if not 0 <= limit <= MAX_PAGE:
        raise BadRequestError(f"limit: must be between 0 and {MAX_PAGE}")
