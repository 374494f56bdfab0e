"""`wasinn proplet serve`: a long-lived proplet that runs one task after another on one engine.

The local shim keeps one per pool slot, as Propeller's proplet is one long-lived process: the
compiled modules and OpenVINO graphs of earlier tasks stay in memory, so the next task on the
same module and model skips the interpreter start, the imports and the cache loads.

Protocol, JSON lines on two dedicated pipes whose fds are in `WASINN_WORKER_FDS=IN,OUT` (the
process's own stdout and stderr carry only its logs, never a guest's output):

- worker -> shim, once started: `{"ready": PID}`
- shim -> worker, one per line: a task, the document `wasinn proplet run` takes in WASINN_TASK
- worker -> shim, per task: `{"summary": RunSummary}` (camelCase, the guest's stdout up to
  1 MiB), the same fetch, verify and run as `wasinn proplet run`; nothing is reported to MQTT
  or a termination log (the shim does that). With `"retire": true` the worker exits after
  this answer: an inference that outlived its task's deadline still runs in it
  (`runtime.lingering`), and the next task should not share its cores.

End of input ends the worker; so does the death of the process that started it
(`WASINN_PARENT_PID`), even mid-task. A task's env reaches its guest only, never this process.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import IO

from pydantic import ValidationError

from ..api import RunSummary, TaskSpec
from ..api.errors import describe_errors
from ..api.summary import EXIT_TASK_ERROR, FailureReason
from ..mqtt import MQTTError
from ..runtime import Runtime, lingering
from .engines import Outputs
from .runner import PropletConfig, join_watching_parent, new_runtime, run_task

FDS_ENV = "WASINN_WORKER_FDS"


def _discard(_data: bytes) -> None:
    """The guest's output is captured in the summary; nothing streams anywhere else."""


def handle(line: bytes, config: PropletConfig, runtime: Runtime, parent: int = 0) -> RunSummary:
    """Run the task in one request line on `runtime`; every failure is a Failed summary."""
    try:
        task = TaskSpec.model_validate_json(line)
    except ValidationError as exc:
        error = f"invalid task: {describe_errors(exc, 'task')}"
        return RunSummary(
            state="Failed", exitCode=EXIT_TASK_ERROR, error=error, reason=FailureReason.INVALID_TASK
        )
    done: list[RunSummary] = []
    outputs = Outputs(stdout=_discard, stderr=_discard)
    # In a thread, so that the main thread notices a vanished parent even while wasm runs.
    thread = threading.Thread(
        target=lambda: done.append(run_task(task, config, outputs, runtime)), name="task"
    )
    thread.start()
    join_watching_parent(thread, parent)
    if not done:  # run_task raised: a bug, reported as the task's failure
        return RunSummary(
            state="Failed",
            exitCode=EXIT_TASK_ERROR,
            error="the worker failed",
            reason=FailureReason.ENGINE_ERROR,
            taskId=task.id,
        )
    return done[0]


def send(stream: IO[bytes], message: Mapping[str, object]) -> None:
    """One protocol message as a JSON line."""
    stream.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Serve tasks from the protocol pipes until end of input."""
    env = os.environ if environ is None else environ
    try:
        fd_in, fd_out = (int(fd) for fd in env.get(FDS_ENV, "").split(","))
    except ValueError:
        os.write(2, f"wasinn proplet serve: set {FDS_ENV}=IN,OUT (pipe fds)\n".encode())
        return 2
    try:
        config = PropletConfig.from_env(env)
    except (MQTTError, ValueError) as exc:
        os.write(2, f"wasinn proplet serve: {exc}\n".encode())
        return 2
    runtime = new_runtime(config)
    with os.fdopen(fd_in, "rb") as tasks, os.fdopen(fd_out, "wb") as results:
        send(results, {"ready": os.getpid()})
        for line in tasks:
            if line.strip():
                summary = handle(line, config, runtime, config.parent_pid)
                retire = lingering.count() > 0
                send(results, {"summary": summary.model_dump(by_alias=True), "retire": retire})
                if retire:
                    break
    return 0
