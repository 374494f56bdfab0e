"""The local backend: tasks in SQLite, run by a pool on this machine.

Tasks run on warm workers, `wasinn proplet serve` children that run one task after another on
one engine (the fetch, verify and run of `wasinn proplet run`, the runner a Pod uses), with the
embedded engine and the configured models directory at /models: the next task on the same
module and model finds them compiled and loaded. Idle workers wait on a stack (the warmest is
reused first; at most `workers` stay). A child rather than a thread because `stop` must end a
guest at any instruction (a process can be killed, a thread cannot) and a crash in native code
must not take the shim down: `stop` kills the task's worker, a dead worker fails its task, and
the next task starts a new worker. A worker is recycled after `worker_max_tasks` tasks or above
`worker_max_rss` bytes, to bound memory. With `fresh_process`, every task is a `wasinn proplet
run` child of its own instead, as a Pod is. The pool (`pool.py`) runs `workers` tasks at once,
higher `priority` first, and lets a task that runs past `long_after` seconds give its slot to
the next one.

Faults: a database that fails (full disk, I/O error) fails no thread. A task the pool cannot
claim stays Scheduled and is tried again; a run whose result cannot be written is recorded
Failed with an error saying so, and when even that cannot be written its end is kept and
written once the database works again. `checks()` reports both to /health.

Restart semantics: tasks and results live in the database. On start-up, a task that was
Running when the shim went away is marked Failed with the error `interrupted: ...` (its result
is published); a task still Scheduled (queued, never started) is queued again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..api import RunSummary
from ..api.lifecycle import STOPPED_ERROR
from ..api.policy import POLICY_ENV, TaskPolicy
from ..api.propeller import to_task_spec, wasm_source
from ..api.summary import OUTPUT_LIMIT
from . import taskfields
from .announce import proplet_metadata
from .artifacts import ArtifactStore
from .errors import UnavailableError
from .fresh import drain, outcome, spawn_proplet
from .pool import Pool
from .sqlite import TaskDB
from .store import DispatchedRun, EndListeners, Outcome, PropletRecord, TaskPhase, TaskRecord, now
from .workers import IdleWorkers, Worker, WorkerDiedError

INTERRUPTED = "interrupted: the shim stopped while the task was running"
HEARTBEAT_SECONDS = 10.0
RETRY_SECONDS = 1.0  # how often tasks and results the database refused are tried again
LONG_AFTER = 5.0
log = logging.getLogger("wasinn.shim.local")
# Settings of the shim's own environment that must not leak into a child proplet: it must not
# publish to MQTT itself (the shim's outbox does) nor pick another engine or task.
PRIVATE_ENV = ("PROPLET_", "EXTERNAL_WASM_RUNTIME", "WASINN_TASK", "WASINN_TERMINATION_LOG")
WORKER_MAX_TASKS = 100
WORKER_MAX_RSS = 2 << 30
# (task_id, proplet_id, cpu_seconds, rss_bytes, wall_seconds) of a run on a warm worker.
RunMetrics = Callable[[str, str, float, int, float], None]


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
        long_workers: int | None = None,
        long_after: float = LONG_AFTER,
        fresh_process: bool = False,
        worker_max_tasks: int = WORKER_MAX_TASKS,
        worker_max_rss: int = WORKER_MAX_RSS,
        policy: TaskPolicy | None = None,
        run_metrics: RunMetrics | None = None,
    ) -> None:
        """`run_metrics` hears of every run on a warm worker (`taskmetrics.py`)."""
        self.db = TaskDB(db_path)
        self.run_metrics = run_metrics
        self.policy = policy or TaskPolicy()  # the proplets apply it again to every task
        self.fresh_process = fresh_process
        self.worker_max_tasks = max(1, worker_max_tasks)
        self.worker_max_rss = worker_max_rss
        # The workers' cwd: empty, like a fresh child's (the proplet reads ./config.toml).
        self._workdir = tempfile.mkdtemp(prefix="wasinn-workers-")
        self.artifacts = artifacts
        self.models_dir = models_dir
        self.proplet_id = proplet_id
        self._metadata = proplet_metadata()  # what GET /proplets shows, as the MQTT announce
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._finished = threading.Condition()
        self._ends = EndListeners()
        self._closing = threading.Event()
        self._heartbeats: collections.deque[datetime] = collections.deque([now()], maxlen=10)
        self._unrecorded: dict[tuple[str, int], tuple[Outcome, bool]] = {}
        self._unclaimed: list[tuple[str, int]] = []
        self._idle = IdleWorkers(workers)
        self._pool: Pool[tuple[str, int]] = Pool(
            self._handle,
            workers,
            workers if long_workers is None else long_workers,
            long_after,
        )
        self._recover()
        self._keeper = threading.Thread(target=self._keep, name="wasinn-keeper", daemon=True)
        self._keeper.start()

    def _recover(self) -> None:
        for record in self.db.in_phase(TaskPhase.RUNNING):
            self._record(record.id, record.run, Outcome(TaskPhase.FAILED, error=INTERRUPTED), True)
        for record in self.db.in_phase(TaskPhase.SCHEDULED):
            self._pool.put((record.id, record.run), taskfields.priority(record.extra))

    # The TaskStore protocol.
    def add(self, record: TaskRecord) -> None:
        self.db.add(record)

    def get(self, task_id: str) -> TaskRecord:
        return self.db.get(task_id)

    def page(
        self, offset: int, limit: int, metadata: dict[str, Any] | None = None
    ) -> tuple[list[TaskRecord], int]:
        return self.db.page(offset, limit, metadata)

    def save(self, record: TaskRecord) -> None:
        self.db.save(record)

    def remove(self, task_id: str) -> TaskRecord:
        record = self.db.delete(task_id)
        self._kill(task_id)
        self._ends(task_id)
        return record

    def start(self, task_id: str, proplet_id: str = "") -> TaskRecord:
        record = self.db.start(task_id, proplet_id or self.proplet_id)
        self._pool.put((record.id, record.run), taskfields.priority(record.extra))
        return record

    def dispatch(self, task_id: str, proplet_id: str, proplets: tuple[str, ...] = ()) -> TaskRecord:
        return self.db.dispatch(task_id, proplet_id)

    def dispatched(self) -> list[DispatchedRun]:
        return []  # recovery ends them interrupted (see the module's docstring)

    def report(self, task_id: str, run: int, outcome: Outcome, proplet: str = "") -> bool:
        # The proplet published its result itself, on the channel the outbox would use.
        recorded = self.db.finish(task_id, run, outcome, publish=False)
        self._notify(task_id)
        return recorded

    def stop(self, task_id: str) -> TaskRecord:
        record = self.db.stop(task_id)
        self._kill(task_id)
        self._notify(task_id)
        return record

    def fail(self, task_id: str, error: str) -> TaskRecord:
        record = self.db.fail(task_id, error, self.proplet_id)
        self._notify(task_id)
        return record

    def skip(self, task_id: str, reason: str) -> TaskRecord:
        return self.db.skip(task_id, reason)

    def unpublished(self) -> list[TaskRecord]:
        return self.db.unpublished()

    def mark_published(self, task_id: str, run: int) -> None:
        self.db.mark_published(task_id, run)

    def wait_for_results(self, timeout: float) -> None:
        with self._finished:
            self._finished.wait(timeout)

    def watch_ends(self, listener: Callable[[str], None]) -> None:
        self._ends.add(listener)

    def digests(self) -> set[str]:
        return self.db.digests()

    def counts(self) -> dict[TaskPhase, int]:
        return self.db.counts()

    def proplets(self) -> list[PropletRecord]:
        history = list(self._heartbeats)
        alive = not self._closing.is_set() and (now() - history[-1]).total_seconds() <= 10.5
        name = f"local ({self._pool.slots} workers)"
        running = self._pool.running()
        return [PropletRecord(self.proplet_id, name, running, alive, history, self._metadata)]

    def checks(self) -> dict[str, str | None]:
        database = self.db.probe()
        with self._lock:
            waiting = len(self._unrecorded) + len(self._unclaimed)
        if waiting:
            database = f"{database or 'the task database failed'}; {waiting} task(s) wait for it"
        workers = self._pool.problem()
        if not self._keeper.is_alive() and not self._closing.is_set():
            workers = "the pool's keeper thread died"
        return {"database": database, "workers": workers}

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            ids = list(self._children)
        for task_id in ids:
            self._kill(task_id)
        self._pool.close()
        self._idle.close()
        self._keeper.join(timeout=5)
        self.db.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    # The pool.
    def _notify(self, task_id: str) -> None:
        with self._finished:
            self._finished.notify_all()
        self._ends(task_id)

    def _keep(self) -> None:
        """Heartbeats, and the tasks and results the database refused, tried again."""
        beat = 0.0
        while not self._closing.wait(RETRY_SECONDS):
            beat += RETRY_SECONDS
            if beat >= HEARTBEAT_SECONDS:
                beat = 0.0
                self._heartbeats.append(now())
            with self._lock:
                unrecorded, self._unrecorded = self._unrecorded, {}
                unclaimed, self._unclaimed = self._unclaimed, []
            for (task_id, run), (result, publish) in unrecorded.items():
                self._record(task_id, run, result, publish, again=True)
            for item in unclaimed:
                self._pool.put(item)

    def _kill(self, task_id: str) -> None:
        with self._lock:
            child = self._children.get(task_id)
        if child is not None and child.poll() is None:
            # The child leads its own process group (start_new_session): end all of it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

    def _handle(self, item: tuple[str, int]) -> None:
        """Run one queued task (a pool job)."""
        task_id, run = item
        if self._closing.is_set():
            return
        try:
            record = self.db.claim(task_id, run)
        except UnavailableError:
            with self._lock:  # still Scheduled in the database: queued again once it works
                self._unclaimed.append(item)
            return
        if record is None:
            return
        try:
            result = self._run(record)
        except Exception as exc:  # a bug or an OS failure fails the task, not the pool
            log.exception("running task %s failed", task_id)
            result = Outcome(TaskPhase.FAILED, error=f"shim: {type(exc).__name__}: {exc}")
        if not self._closing.is_set():
            self._record(task_id, run, result, publish=not record.daemon)

    def _record(
        self, task_id: str, run: int, result: Outcome, publish: bool, again: bool = False
    ) -> None:
        """Write a run's end; when the database refuses it, a smaller Failed record saying so;
        when that fails too, keep the end for `_keep` to write later (few are ever kept: a
        database that refuses this small write refuses the claims of new runs too)."""
        try:
            self.db.finish(task_id, run, result, publish)
        except UnavailableError as exc:
            error = f"the result could not be stored: {exc}"
            if result.error:
                error += f" (the run's error: {result.error})"
            try:
                self.db.finish(task_id, run, Outcome(TaskPhase.FAILED, error=error), publish)
            except UnavailableError:
                if not again:
                    log.warning("task %s: its end waits for the database: %s", task_id, exc)
                with self._lock:
                    self._unrecorded[(task_id, run)] = (result, publish)
        self._notify(task_id)

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
        return self._closing.is_set() or current.run != record.run or not current.phase.active

    def _run(self, record: TaskRecord) -> Outcome:
        local = str(self.artifacts.path(record.digest)) if record.digest else None
        spec = to_task_spec(
            record.to_task(), wasm_source(record.digest, record.image_url, local_path=local)
        )
        spec.engine = "embedded"
        task_json = spec.model_dump_json(by_alias=True)
        if self.fresh_process:
            return self._run_fresh(record, task_json)
        with self._lock:
            if self._stale(record):
                return Outcome(TaskPhase.FAILED, error=STOPPED_ERROR)
            worker = self._idle.take() or Worker(self._child_env(), self._workdir)
            self._children[record.id] = worker.process
        cpu_before, started = worker.cpu_seconds(), time.monotonic()
        try:
            summary = RunSummary.model_validate(worker.run(task_json))
        except (WorkerDiedError, ValueError) as exc:
            # A stopped task's worker died too: the next task starts a new one.
            worker.close()
            return Outcome(TaskPhase.FAILED, error=str(exc))
        finally:
            with self._lock:
                if self._children.get(record.id) is worker.process:
                    del self._children[record.id]
        rss = worker.rss()
        cpu_after = worker.cpu_seconds()
        if self.run_metrics is not None and cpu_before is not None and cpu_after is not None:
            wall = time.monotonic() - started
            self.run_metrics(record.id, self.proplet_id, cpu_after - cpu_before, rss or 0, wall)
        if (
            worker.retiring
            or worker.tasks_run >= self.worker_max_tasks
            or (rss or 0) > self.worker_max_rss
        ):
            worker.close()
        else:
            self._idle.give(worker)
        state = TaskPhase.COMPLETED if summary.state == "Completed" else TaskPhase.FAILED
        return Outcome(state, summary.stdout, summary.error or "", summary.stdout_truncated)

    def _run_fresh(self, record: TaskRecord, task_json: str) -> Outcome:
        """The task in a `wasinn proplet run` child of its own."""
        with tempfile.TemporaryDirectory(prefix="wasinn-task-") as tmp:
            task_file, summary_file = Path(tmp) / "task.json", Path(tmp) / "summary.json"
            task_file.write_text(task_json)
            env = self._child_env()
            env |= {"WASINN_TASK_FILE": str(task_file), "WASINN_TERMINATION_LOG": str(summary_file)}
            with self._lock:
                if self._stale(record):
                    return Outcome(TaskPhase.FAILED, error=STOPPED_ERROR)
                child = spawn_proplet(env, tmp)
                self._children[record.id] = child
            try:
                stdout, over, stderr = drain(child, OUTPUT_LIMIT)
                code = child.wait()
            finally:
                with self._lock:
                    if self._children.get(record.id) is child:
                        del self._children[record.id]
            return outcome(summary_file, stdout, over, stderr, code)
