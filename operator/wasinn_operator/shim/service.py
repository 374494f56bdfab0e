"""The manager's logic, transport-free: what each REST route (and MQTT start/stop) does.

Inputs arrive decoded (`TaskInput`, and a module already received into the artifact store as a
`ModuleUpload`); every failure is a typed `ShimError`. One lock orders the operations that touch
both the artifact store and the task store, so garbage collection never removes a module a task
is about to refer to; it removes only a module an operation here stopped referring to. Every
task is checked against the task policy (`api/policy.py`) before anything of it is stored or
run: on create, update, upload and start, and for a manager's MQTT start.

Answers never carry the module (`file`) or, in listings, the results: a page of tasks stays small
whatever the tasks hold. `health()` checks every dependency (see `health.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

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
from .artifacts import ArtifactStore, ModuleUpload
from .config import BuildInfo
from .errors import BadRequestError, ConflictError, InvocationError, NotFoundError, ShimError
from .health import HealthChecks
from .proplets import PropletRegistry
from .store import TaskRecord, TaskStore, now

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
        self.registry = PropletRegistry(store.proplets)
        self.checks = HealthChecks(
            store, artifacts, min_free_bytes, disk_paths or [artifacts.directory], build
        )

    # Tasks.
    def create(
        self, body: TaskInput, task_id: str | None = None, module: ModuleUpload | None = None
    ) -> Task:
        """A new Pending task; `name` is required, the id is a fresh UUID unless given;
        `module` (received already) becomes its file."""
        if not body.name:
            raise BadRequestError("name: a task needs a non-empty name")
        self._admit(None, body)
        with self._lock:
            record = TaskRecord(id=task_id or str(uuid.uuid4()), name=body.name)
            self._apply(record, body, module)
            self._write(self.store.add, record, "")
            return record.to_task()

    def list(self, offset: int, limit: int) -> TaskPage:
        """A page in creation order, without results and files (GET a task, or its results,
        for those)."""
        _check_page(offset, limit)
        records, total = self.store.page(offset, limit)
        tasks = [dataclasses.replace(r, results=None).to_task() for r in records]
        return TaskPage(offset=offset, limit=limit, total=total, tasks=tasks)

    def get(self, task_id: str) -> Task:
        """The task (without its file)."""
        return self.store.get(task_id).to_task()

    def get_with_module(self, task_id: str) -> tuple[Task, BinaryIO | None]:
        """The task and its module's file, open (None without one), for an answer that
        carries the file: it stays readable even if the module is removed meanwhile."""
        record = self.store.get(task_id)
        module = None
        if record.digest:
            try:
                module = self.artifacts.open(record.digest)
            except NotFoundError:
                module = None
        return record.to_task(), module

    def update(self, task_id: str, body: TaskInput, module: ModuleUpload | None = None) -> Task:
        """Apply every field present in the body (Propeller v-old applied only some); a null
        `name` leaves the name as it is; `module` (received already) replaces the file."""
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, body)
            old = record.digest
            self._apply(record, body, module)
            record.updated_at = now()
            self._write(self.store.save, record, old)
            return record.to_task()

    def upload(self, task_id: str, filename: str, module: ModuleUpload) -> Task:
        """Set the task's module from a multipart upload (`file`, a `.wasm` name)."""
        check_module_name(filename)
        with self._lock:
            record = self.store.get(task_id)
            self._admit(record, TaskInput())
            old = record.digest
            record.digest = module.commit()
            record.updated_at = now()
            self._write(self.store.save, record, old)
            return record.to_task()

    def delete(self, task_id: str) -> None:
        """Delete the task (ending its run) and its module when no other task uses it."""
        with self._lock:
            record = self.store.remove(task_id)
            self._release(record.digest, "")

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

    def invoke(self, task_id: str, inputs: Sequence[str] | None, env: dict[str, str] | None) -> str:
        """Run a latent task now with these `inputs` (instead of its own, when given) and `env`
        (over its own), and return what it printed; InvocationError when the run failed."""
        record = self.store.get(task_id)
        if not record.latent:
            raise ConflictError(f"task {task_id} is not a latent task and cannot be invoked")
        if not (record.digest or record.image_url):
            raise ConflictError(f"task {task_id} has no wasm module")
        fields: dict[str, Any] = {"env": record.env | dict(env or {})}
        if inputs is not None:
            fields["inputs"] = list(inputs)
        self._admit(record, TaskInput(**fields))
        call = record.copy(**fields)
        outcome = self.store.invoke(call)
        if outcome.state != TaskState.COMPLETED:
            raise InvocationError(outcome.error or f"the invocation ended {outcome.state.name}")
        return outcome.results or ""

    def results(self, task_id: str) -> Any:
        """The task's results (the guest's stdout), None before it finished."""
        return self.store.get(task_id).results

    def proplets(self, offset: int, limit: int) -> PropletPage:
        """The backend's workers."""
        _check_page(offset, limit)
        found = self.registry.proplets()
        return PropletPage(
            offset=offset,
            limit=limit,
            total=len(found),
            proplets=[Proplet(**vars(p)) for p in found[offset : offset + limit]],
        )

    def proplet(self, proplet_id: str) -> Proplet:
        """One worker."""
        return Proplet(**vars(self.registry.get(proplet_id)))

    def health(self) -> Health:
        """Propeller's health answer and every dependency's check; commit and build time come
        from the image's build."""
        return self.checks.health(self.instance_id)

    # Tasks from a Propeller manager (MQTT).
    def accept(
        self, task_id: str, body: TaskInput, wasm: bytes | None = None, error: str | None = None
    ) -> bool:
        """Create or replace task `task_id` from a manager's start, then run it (or, with
        `error` or when the policy refuses it, record it Failed so the manager hears why it
        could not run).

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
                    self._apply(record, body)
                self.store.add(record)
            else:
                if record.state.active:
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

    def _apply(
        self, record: TaskRecord, body: TaskInput, module: ModuleUpload | None = None
    ) -> None:
        given = body.model_fields_set
        if body.name:
            record.name = body.name
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

    def task_state(self, task_id: str) -> TaskState:
        """The task's state (for the bridge and tests)."""
        return self.store.get(task_id).state


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


def _check_page(offset: int, limit: int) -> None:
    if not 0 <= offset < 1 << 63:
        raise BadRequestError("offset: must be between 0 and 2^63-1")
    if not 0 <= limit <= MAX_PAGE:
        raise BadRequestError(f"limit: must be between 0 and {MAX_PAGE}")
