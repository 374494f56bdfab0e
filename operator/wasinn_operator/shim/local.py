"""The local backend: tasks in SQLite, run by a bounded pool on this machine.

Each run is a `wasinn proplet run` child process, the same runner a Pod uses, with the embedded
engine and the configured models directory at /models. A child rather than a thread because
`stop` must end a guest at any instruction (a process can be killed, a thread cannot) and a
crash in native code must not take the shim down.

Restart semantics: tasks and results live in the database. On start-up, a task that was
Running when the shim went away is marked Failed with the error `interrupted: ...` (its result
is published); a task still Scheduled (queued, never started) is queued again.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import IO

from ..api import RunSummary
from ..api.propeller import to_task_spec, wasm_source
from .artifacts import ArtifactStore
from .sqlite import TaskDB
from .store import PropletRecord, TaskRecord, TaskState, now

RESULTS_LIMIT = 1 << 20
STDERR_TAIL = 4096
INTERRUPTED = "interrupted: the shim stopped while the task was running"
HEARTBEAT_SECONDS = 10.0
# Settings of the shim's own environment that must not leak into a child proplet: it must not
# publish to MQTT itself (the shim's outbox does) nor pick another engine or task.
PRIVATE_ENV = ("PROPLET_", "EXTERNAL_WASM_RUNTIME", "WASINN_TASK", "WASINN_TERMINATION_LOG")


class LocalBackend:
    """A `TaskStore` over SQLite whose `start` queues the task for a worker thread."""

    def __init__(
        self,
        db_path: Path,
        artifacts: ArtifactStore,
        models_dir: Path | None,
        workers: int,
        proplet_id: str,
    ) -> None:
        self.db = TaskDB(db_path)
        self.artifacts = artifacts
        self.models_dir = models_dir
        self.proplet_id = proplet_id
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._finished = threading.Condition()
        self._closing = threading.Event()
        self._heartbeats: collections.deque[datetime] = collections.deque([now()], maxlen=10)
        self._recover()
        self._threads = [
            threading.Thread(target=self._work, name=f"wasinn-worker-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._threads.append(threading.Thread(target=self._beat, name="wasinn-beat", daemon=True))
        for thread in self._threads:
            thread.start()

    def _recover(self) -> None:
        for record in self.db.in_state(TaskState.RUNNING):
            self.db.finish(record.id, record.run, TaskState.FAILED, None, INTERRUPTED, True)
        for record in self.db.in_state(TaskState.SCHEDULED):
            self._queue.put((record.id, record.run))

    # The TaskStore protocol.
    def add(self, record: TaskRecord) -> None:
        self.db.add(record)

    def get(self, task_id: str) -> TaskRecord:
        return self.db.get(task_id)

    def page(self, offset: int, limit: int) -> tuple[list[TaskRecord], int]:
        return self.db.page(offset, limit)

    def save(self, record: TaskRecord) -> None:
        self.db.save(record)

    def remove(self, task_id: str) -> TaskRecord:
        record = self.db.delete(task_id)
        self._kill(task_id)
        return record

    def start(self, task_id: str, proplet_id: str = "") -> TaskRecord:
        record = self.db.start(task_id, proplet_id or self.proplet_id)
        self._queue.put((record.id, record.run))
        return record

    def stop(self, task_id: str) -> TaskRecord:
        record = self.db.stop(task_id)
        self._kill(task_id)
        return record

    def fail(self, task_id: str, error: str) -> TaskRecord:
        record = self.db.fail(task_id, error, self.proplet_id)
        self._notify()
        return record

    def unpublished(self) -> list[TaskRecord]:
        return self.db.unpublished()

    def mark_published(self, task_id: str, run: int) -> None:
        self.db.mark_published(task_id, run)

    def wait_for_results(self, timeout: float) -> None:
        with self._finished:
            self._finished.wait(timeout)

    def digests(self) -> set[str]:
        return self.db.digests()

    def counts(self) -> dict[TaskState, int]:
        return self.db.counts()

    def proplets(self) -> list[PropletRecord]:
        with self._lock:
            running = len(self._children)
        history = list(self._heartbeats)
        alive = not self._closing.is_set() and (now() - history[-1]).total_seconds() <= 10.5
        name = f"local ({len(self._threads) - 1} workers)"
        return [PropletRecord(self.proplet_id, name, running, alive, history)]

    def close(self) -> None:
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            ids = list(self._children)
        for task_id in ids:
            self._kill(task_id)
        for thread in self._threads:
            thread.join(timeout=10)
        self.db.close()

    # The pool.
    def _notify(self) -> None:
        with self._finished:
            self._finished.notify_all()

    def _beat(self) -> None:
        while not self._closing.wait(HEARTBEAT_SECONDS):
            self._heartbeats.append(now())

    def _kill(self, task_id: str) -> None:
        with self._lock:
            child = self._children.get(task_id)
        if child is not None and child.poll() is None:
            # The child leads its own process group (start_new_session): end all of it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            task_id, run = item
            if self._closing.is_set():
                return
            record = self.db.claim(task_id, run)
            if record is None:
                continue
            try:
                state, results, error = self._run(record)
            except Exception as exc:  # a bug or an OS failure must fail the task, not the worker
                state, results, error = TaskState.FAILED, None, f"shim: {exc}"
            if not self._closing.is_set():
                self.db.finish(task_id, run, state, results, error, publish=not record.daemon)
                self._notify()

    def _run(self, record: TaskRecord) -> tuple[TaskState, str | None, str]:
        local = str(self.artifacts.path(record.digest)) if record.digest else None
        spec = to_task_spec(
            record.to_task(), wasm_source(record.digest, record.image_url, local_path=local)
        )
        spec.engine = "embedded"
        with tempfile.TemporaryDirectory(prefix="wasinn-task-") as tmp:
            task_file, summary_file = Path(tmp) / "task.json", Path(tmp) / "summary.json"
            task_file.write_text(spec.model_dump_json(by_alias=True))
            env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)}
            env |= {
                "WASINN_TASK_FILE": str(task_file),
                "WASINN_TERMINATION_LOG": str(summary_file),
                # A task must not outlive a shim that dies without ending it (SIGKILL, crash).
                "WASINN_PARENT_PID": str(os.getpid()),
            }
            if self.models_dir is not None:
                env["WASINN_MODELS_DIR"] = str(self.models_dir)
            command = [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"]
            with self._lock:
                current = self.db.get(record.id)
                if self._closing.is_set() or current.run != record.run or not current.state.active:
                    return TaskState.INTERRUPTED, None, "stopped"
                child = subprocess.Popen(
                    command,
                    env=env,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                self._children[record.id] = child
            try:
                stdout, stderr = _drain(child, RESULTS_LIMIT)
                code = child.wait()
            finally:
                with self._lock:
                    if self._children.get(record.id) is child:
                        del self._children[record.id]
            return _outcome(summary_file, stdout, stderr, code)


def _outcome(
    summary_file: Path, stdout: bytes, stderr: bytes, code: int
) -> tuple[TaskState, str | None, str]:
    """State, results (the guest's stdout) and error of a finished child."""
    results = stdout.decode("utf-8", errors="replace")
    try:
        summary = RunSummary.model_validate(json.loads(summary_file.read_text()))
    except (OSError, ValueError):
        tail = stderr[-STDERR_TAIL:].decode("utf-8", errors="replace").strip()
        error = f"the runner ended with code {code} without a summary" + (
            f": {tail}" if tail else ""
        )
        return TaskState.FAILED, results or None, error
    state = TaskState.COMPLETED if summary.state == "Completed" else TaskState.FAILED
    return state, results, summary.error or ""


def _drain(child: subprocess.Popen[bytes], limit: int) -> tuple[bytes, bytes]:
    """Read both pipes to the end, keeping at most `limit` bytes of stdout (and stderr's tail)."""
    assert child.stdout is not None and child.stderr is not None
    kept: dict[str, bytes] = {}

    def read(name: str, stream: IO[bytes], head: bool) -> None:
        data = b""
        while chunk := stream.read(1 << 16):
            if not head:
                data = (data + chunk)[-STDERR_TAIL:]
            elif len(data) < limit:
                data = (data + chunk)[:limit]
        kept[name] = data

    err = threading.Thread(target=read, args=("err", child.stderr, False), daemon=True)
    err.start()
    read("out", child.stdout, True)
    err.join()
    return kept["out"], kept.get("err", b"")
