"""The local backend: tasks in SQLite, run by a bounded pool on this machine.

Each pool slot keeps a warm worker, a `wasinn proplet serve` child running one task after
another on one engine (the fetch, verify and run of `wasinn proplet run`, the runner a Pod
uses), with the embedded engine and the configured models directory at /models: the next task
on the same module and model finds them compiled and loaded. A child rather than a thread
because `stop` must end a guest at any instruction (a process can be killed, a thread cannot)
and a crash in native code must not take the shim down: `stop` kills the task's worker, a dead
worker fails its task, and the slot starts a new worker for its next task. A worker is recycled
after `worker_max_tasks` tasks or above `worker_max_rss` bytes, to bound memory. With
`fresh_process`, every task is a `wasinn proplet run` child of its own instead, as a Pod is.

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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from ..api import RunSummary
from ..api.policy import POLICY_ENV, TaskPolicy
from ..api.propeller import to_task_spec, wasm_source
from .artifacts import ArtifactStore
from .sqlite import TaskDB
from .store import PropletRecord, TaskRecord, TaskState, now
from .workers import Worker, WorkerDiedError

RESULTS_LIMIT = 1 << 20
STDERR_TAIL = 4096
INTERRUPTED = "interrupted: the shim stopped while the task was running"
HEARTBEAT_SECONDS = 10.0
# Settings of the shim's own environment that must not leak into a child proplet: it must not
# publish to MQTT itself (the shim's outbox does) nor pick another engine or task.
PRIVATE_ENV = ("PROPLET_", "EXTERNAL_WASM_RUNTIME", "WASINN_TASK", "WASINN_TERMINATION_LOG")
WORKER_MAX_TASKS = 100
WORKER_MAX_RSS = 2 << 30


@dataclass
class _Slot:
    """One pool thread's warm worker, started for the first task that needs it."""

    worker: Worker | None = None

    def retire(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


class LocalBackend:
    """A `TaskStore` over SQLite whose `start` queues the task for a worker thread."""

    def __init__(
        self,
        db_path: Path,
        artifacts: ArtifactStore,
        models_dir: Path | None,
        workers: int,
        proplet_id: str,
        *,
        fresh_process: bool = False,
        worker_max_tasks: int = WORKER_MAX_TASKS,
        worker_max_rss: int = WORKER_MAX_RSS,
        policy: TaskPolicy | None = None,
    ) -> None:
        self.db = TaskDB(db_path)
        self.policy = policy or TaskPolicy()  # the proplets apply it again to every task
        self.fresh_process = fresh_process
        self.worker_max_tasks = max(1, worker_max_tasks)
        self.worker_max_rss = worker_max_rss
        # The workers' cwd: empty, like a fresh child's (the proplet reads ./config.toml).
        self._workdir = tempfile.mkdtemp(prefix="wasinn-workers-")
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
        self._slots = [_Slot() for _ in range(max(1, workers))]
        self._threads = [
            threading.Thread(target=self._work, args=(slot,), name=f"wasinn-pool-{i}", daemon=True)
            for i, slot in enumerate(self._slots)
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
        for slot in self._slots:  # the pool threads retire their workers; this is for stragglers
            if slot.worker is not None:
                slot.worker.kill()
        self.db.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

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

    def _work(self, slot: _Slot) -> None:
        try:
            while (item := self._queue.get()) is not None:
                task_id, run = item
                if self._closing.is_set():
                    return
                record = self.db.claim(task_id, run)
                if record is None:
                    continue
                try:
                    state, results, error = self._run(record, slot)
                except Exception as exc:  # a bug or an OS failure must fail the task, not the pool
                    state, results, error = TaskState.FAILED, None, f"shim: {exc}"
                if not self._closing.is_set():
                    self.db.finish(task_id, run, state, results, error, publish=not record.daemon)
                    self._notify()
        finally:
            slot.retire()

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)}
        # A task must not outlive a shim that dies without ending it (SIGKILL, crash).
        env["WASINN_PARENT_PID"] = str(os.getpid())
        if self.models_dir is not None:
            env["WASINN_MODELS_DIR"] = str(self.models_dir)
        env[POLICY_ENV] = self.policy.to_json()
        return env

    def _stale(self, record: TaskRecord) -> bool:
        """Whether the run was stopped or superseded, or the shim is closing (under the lock)."""
        current = self.db.get(record.id)
        return self._closing.is_set() or current.run != record.run or not current.state.active

    def _run(self, record: TaskRecord, slot: _Slot) -> tuple[TaskState, str | None, str]:
        local = str(self.artifacts.path(record.digest)) if record.digest else None
        spec = to_task_spec(
            record.to_task(), wasm_source(record.digest, record.image_url, local_path=local)
        )
        spec.engine = "embedded"
        task_json = spec.model_dump_json(by_alias=True)
        if self.fresh_process:
            return self._run_fresh(record, task_json)
        if slot.worker is not None and not slot.worker.alive():
            slot.retire()  # it died while idle (OOM kill, signal): not this task's doing
        with self._lock:
            if self._stale(record):
                return TaskState.INTERRUPTED, None, "stopped"
            if slot.worker is None:
                slot.worker = Worker(self._child_env(), self._workdir)
            worker = slot.worker
            self._children[record.id] = worker.process
        try:
            summary = RunSummary.model_validate(worker.run(task_json))
        except (WorkerDiedError, ValueError) as exc:
            # A stopped task's worker died too: the slot starts a new one for its next task.
            slot.retire()
            return TaskState.FAILED, None, str(exc)
        finally:
            with self._lock:
                if self._children.get(record.id) is worker.process:
                    del self._children[record.id]
        rss = worker.rss()
        if worker.tasks_run >= self.worker_max_tasks or (rss or 0) > self.worker_max_rss:
            slot.retire()
        state = TaskState.COMPLETED if summary.state == "Completed" else TaskState.FAILED
        return state, summary.stdout, summary.error or ""

    def _run_fresh(self, record: TaskRecord, task_json: str) -> tuple[TaskState, str | None, str]:
        """The task in a `wasinn proplet run` child of its own."""
        with tempfile.TemporaryDirectory(prefix="wasinn-task-") as tmp:
            task_file, summary_file = Path(tmp) / "task.json", Path(tmp) / "summary.json"
            task_file.write_text(task_json)
            env = self._child_env()
            env |= {"WASINN_TASK_FILE": str(task_file), "WASINN_TERMINATION_LOG": str(summary_file)}
            command = [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"]
            with self._lock:
                if self._stale(record):
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
