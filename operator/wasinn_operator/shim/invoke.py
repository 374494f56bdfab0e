"""Invocations of latent tasks, as Propeller's proplet runs them: the one invoke path, for
`control/manager/invoke` (MQTT) and `POST /tasks/{id}/invoke` (REST).

A latent task (a manager's start with `latent`, or a task created with `latent: true` and
started) is deployed without running (`latent.py`); each invocation runs the stored module once
with the invocation's inputs (or the task's own, when it sends none) and env (added to the
task's), in a `wasinn proplet run` child of its own under the service's task policy. MQTT
invocations are answered `{task_id, invocation_id, proplet_id, results, error}` on
`control/proplet/invoke_results`; REST ones with what the run printed. Invocations run on this
machine whatever the backend (they are answered while the caller waits), at most `SLOTS` at a
time.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..api.policy import POLICY_ENV
from ..api.propeller import InvokeMessage, TaskInput, to_task_spec, wasm_source
from .errors import ConflictError, InvocationError, NotFoundError, ShimError
from .fresh import drain, outcome, spawn_proplet
from .service import TaskService
from .store import TaskPhase, TaskRecord

INVOKE_RESULTS_TOPIC = "control/proplet/invoke_results"
RESULTS_LIMIT = 1 << 20
SLOTS = 2
# Settings of the shim that a task's runner must not see (it would publish to MQTT itself).
PRIVATE_ENV = ("PROPLET_", "EXTERNAL_WASM_RUNTIME", "WASINN_TASK", "WASINN_TERMINATION_LOG")


def not_latent(task_id: str) -> str:
    """The error Propeller's proplet gives (its manager then tries another proplet)."""
    return f"task {task_id} has not been precompiled; deploy it as a latent task first"


class Invoker:
    """Runs invocations of the latent tasks this proplet was started with."""

    def __init__(self, service: TaskService, models_dir: Path | None) -> None:
        self.service = service
        self.models_dir = models_dir
        self._slots = threading.Semaphore(SLOTS)

    def deployed(self, task_id: str) -> None:
        """Task `task_id` is latent: stored, waiting for invocations."""
        self.service.latent.deploy(task_id)

    def forget(self, task_id: str) -> bool:
        """Task `task_id` is latent no more (stopped); whether it was."""
        return self.service.latent.forget(task_id)

    def invoke(self, message: InvokeMessage, proplet_id: str) -> dict[str, Any]:
        """Run one invocation; the `invoke_results` message that answers it."""
        results, error = "", None
        try:
            results = self._run(message)
        except ShimError as exc:
            error = str(exc)
        return {
            "task_id": message.id,
            "invocation_id": message.invocation_id,
            "proplet_id": proplet_id,
            "results": results,
            "error": error,
        }

    def call(self, task_id: str, inputs: list[str] | None, env: dict[str, str] | None) -> str:
        """A REST invocation: what the run printed. NotFoundError for an unknown task,
        ConflictError when it is not latent, BadRequestError when the policy refuses the
        inputs or env, InvocationError when the run failed."""
        record = self.service.store.get(task_id)
        if record.id not in self.service.latent:
            if record.extra.get("latent"):  # as Propeller: no proplet holds it (404)
                raise NotFoundError(f"task {task_id} is latent but not deployed: start it first")
            raise ConflictError(not_latent(task_id))
        fields: dict[str, object] = {"env": {**record.env, **(env or {})}}
        if inputs is not None:
            fields["inputs"] = list(inputs)
        self.service.admit(record, TaskInput.model_validate(fields))
        return self._execute(record, inputs, env)

    def _run(self, message: InvokeMessage) -> str:
        try:
            record = self.service.store.get(message.id)
        except NotFoundError:
            self.forget(message.id)
            raise ShimError(not_latent(message.id)) from None
        if record.id not in self.service.latent:
            raise ShimError(not_latent(message.id))
        inputs = [str(i) for i in message.inputs] if message.inputs else None
        return self._execute(record, inputs, message.env)

    def _execute(
        self, record: TaskRecord, inputs: list[str] | None, env: dict[str, str] | None
    ) -> str:
        if not record.digest:
            raise ConflictError(f"task {record.id} has no module")
        task = record.to_task()
        if inputs:
            task.inputs = inputs
        task.env = {**(task.env or {}), **(env or {})}
        local = str(self.service.artifacts.path(record.digest))
        spec = to_task_spec(task, wasm_source(record.digest, None, local_path=local))
        spec.engine = "embedded"
        with self._slots:
            state, stdout, error = self._child(spec.model_dump_json(by_alias=True))
        if state is not TaskPhase.COMPLETED:
            raise InvocationError(error or "the invocation failed")
        return stdout

    def _child(self, task_json: str) -> tuple[TaskPhase, str, str]:
        """Run the task in a `wasinn proplet run` child (the local backend's fresh run)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)}
        env["WASINN_PARENT_PID"] = str(os.getpid())
        env[POLICY_ENV] = self.service.policy.to_json()
        if self.models_dir is not None:
            env["WASINN_MODELS_DIR"] = str(self.models_dir)
        with tempfile.TemporaryDirectory(prefix="wasinn-invoke-") as tmp:
            task_file, summary_file = Path(tmp) / "task.json", Path(tmp) / "summary.json"
            task_file.write_text(task_json)
            env |= {"WASINN_TASK_FILE": str(task_file), "WASINN_TERMINATION_LOG": str(summary_file)}
            child = spawn_proplet(env, tmp)
            stdout, over, stderr = drain(child, RESULTS_LIMIT)
            ended = outcome(summary_file, stdout, over, stderr, child.wait())
        return ended.phase, ended.results or "", ended.error
