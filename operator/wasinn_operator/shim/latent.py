"""The latent tasks deployed on this shim: stored, not run, each invocation a run of its own.

A latent task is deployed by a start (REST `POST /tasks/{id}/start`, or a manager's
`control/manager/start` with `latent`) and stays so until stopped or deleted, as on
Propeller's proplets; only a deployed task answers invocations. The set lives in memory, as
on a proplet: after a restart a task is deployed again by starting it.
"""

from __future__ import annotations

import threading


class LatentTasks:
    """Ids of the deployed latent tasks, safe to share between threads."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def deploy(self, task_id: str) -> None:
        """Task `task_id` now waits for invocations."""
        with self._lock:
            self._ids.add(task_id)

    def forget(self, task_id: str) -> bool:
        """Task `task_id` is deployed no more; whether it was."""
        with self._lock:
            if task_id in self._ids:
                self._ids.discard(task_id)
                return True
            return False

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids
