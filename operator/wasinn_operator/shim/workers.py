"""The local backend's warm workers: `wasinn proplet serve` children, one per pool slot.

The protocol is described in `wasinn_operator/proplet/worker.py`. This side imports nothing
of the runtime, so that the shim itself stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from .fresh import STDERR_TAIL

FDS_ENV = "WASINN_WORKER_FDS"  # as in proplet/worker.py (not imported: that loads the runtime)
COMMAND = [sys.executable, "-m", "wasinn_operator.cli", "proplet", "serve"]


class WorkerDiedError(Exception):
    """The worker ended (crash, OOM kill, signal, stop) before answering; the message says how."""


class Worker:
    """One `wasinn proplet serve` child with its two protocol pipes.

    Used by one pool thread at a time; `kill` may come from any thread.
    """

    def __init__(self, env: Mapping[str, str], cwd: str, command: list[str] | None = None) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                command or COMMAND,
                env={**env, FDS_ENV: f"{task_r},{result_w}"},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(task_r, result_w),
                # Its own process group, so that a kill also ends what it started.
                start_new_session=True,
            )
        except BaseException:
            os.close(task_w)
            os.close(result_r)
            raise
        finally:
            os.close(task_r)
            os.close(result_w)
        self.pid = self.process.pid
        self.tasks_run = 0
        self.retiring = False
        self._tasks = os.fdopen(task_w, "wb")
        self._results = os.fdopen(result_r, "rb")
        self._ready = False
        self._tail = b""
        self._drainer = threading.Thread(target=self._drain, name=f"worker-{self.pid}", daemon=True)
        self._drainer.start()

    def ready(self) -> None:
        """Wait until the worker has started (imports done, engine made); raises WorkerDiedError."""
        if not self._ready:
            try:
                self._read()  # {"ready": PID}
            except (OSError, ValueError):
                raise WorkerDiedError(self.death()) from None
            self._ready = True

    def run(self, task_json: str) -> dict[str, Any]:
        """The RunSummary (camelCase JSON) of one task; raises WorkerDiedError."""
        self.ready()
        try:
            self._tasks.write(task_json.encode() + b"\n")
            self._tasks.flush()
            answer = self._read()
        except (OSError, ValueError):  # a closed pipe: the worker is gone
            raise WorkerDiedError(self.death()) from None
        self.tasks_run += 1
        self.retiring = answer.get("retire") is True  # it exits: no next task
        summary = answer.get("summary")
        if not isinstance(summary, dict):
            raise WorkerDiedError(f"the proplet worker answered {answer!r}")
        return summary

    def _read(self) -> dict[str, Any]:
        line = self._results.readline()
        if not line:
            raise WorkerDiedError(self.death())
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError(f"not a message: {line[:200]!r}")
        return answer

    def death(self) -> str:
        """How the worker ended, with the tail of its stderr (after waiting for its end)."""
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:  # it closed the pipe but lives on: end it
            self.kill()
            code = self.process.wait()
        self._drainer.join(5)
        how = f"exit code {code}"
        if code < 0:
            with contextlib.suppress(ValueError):
                how = f"signal {-code}, {signal.Signals(-code).name}"
        tail = self._tail.decode("utf-8", errors="replace").strip()
        return f"the proplet worker died ({how})" + (f": {tail}" if tail else "")

    def rss(self) -> int | None:
        """Resident memory in bytes (Linux), None when unknown."""
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the worker used so far (Linux), None when unknown."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                # The fields after the command name (which may hold spaces) follow its ')'.
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's process group (no-op once it has been waited for)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def close(self, grace: float = 5.0) -> None:
        """End the worker: end of input, then SIGKILL if it has not exited within `grace`."""
        with contextlib.suppress(OSError):
            self._tasks.close()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self._results.close()
        self._drainer.join(5)

    def _drain(self) -> None:
        # Keeps stderr flowing (a full pipe would block the worker) and its tail for errors.
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read1(1 << 16):  # type: ignore[attr-defined]
            self._tail = (self._tail + chunk)[-STDERR_TAIL:]
        self.process.stderr.close()


class IdleWorkers:
    """Warm workers waiting for a task, most recently used on top (its caches are the warmest);
    at most `keep` are kept: a worker given back beyond that is closed."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._stack: list[Worker] = []
        self._lock = threading.Lock()

    def take(self) -> Worker | None:
        """The warmest live idle worker, or None (a worker that died while idle is dropped)."""
        while True:
            with self._lock:
                if not self._stack:
                    return None
                worker = self._stack.pop()
            if worker.alive():
                return worker
            worker.close()

    def give(self, worker: Worker) -> None:
        """Put a worker back after its task."""
        with self._lock:
            self._stack.append(worker)
            extra = self._stack[: -self.keep]
            del self._stack[: -self.keep]
        for old in extra:
            old.close()

    def count(self) -> int:
        """Idle workers now."""
        with self._lock:
            return len(self._stack)

    def close(self) -> None:
        """Close every idle worker."""
        with self._lock:
            workers, self._stack = self._stack, []
        for worker in workers:
            worker.close()
