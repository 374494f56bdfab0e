"""The warm worker's choice of tasks (only attempts assigned to its own Pod, each once), and
how it leaves when an inference outlived its attempt."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from wasinn_operator.api.warm import REPORT_ANNOTATION, WarmReport
from wasinn_operator.proplet import warm
from wasinn_operator.proplet.runner import PropletConfig
from wasinn_operator.proplet.warm import Identity, WarmWorker
from wasinn_operator.runtime import lingering

from ..conftest import free_port

pytestmark = pytest.mark.unit


def worker() -> WarmWorker:
    config = PropletConfig.from_env({"WASINN_CACHE_DIR": "/nonexistent", "WASINN_MODELS_DIR": "/x"})
    assert config.cache_dir == Path("/nonexistent")
    return WarmWorker(Identity("w-a", "uid-a"), config, runtime=None, report=lambda *_: None)  # type: ignore[arg-type]


def task(
    uid: str = "uid-a", attempt: int = 1, phase: str = "Scheduled", **kw: Any
) -> dict[str, Any]:
    notes = {REPORT_ANNOTATION: kw["report"].to_annotation()} if "report" in kw else {}
    return {
        "metadata": {"name": "t", "namespace": "ml", "uid": "t-1", "annotations": notes},
        "spec": {"wasm": {"url": "http://a"}, "suspend": kw.get("suspend", False)},
        "status": {
            "phase": phase,
            "attempts": attempt,
            "worker": {"pod": "w-a", "uid": uid, "pool": "default"},
        },
    }


def test_an_attempt_assigned_to_this_pod_is_queued_once() -> None:
    w = worker()
    assert w.offer(task())
    assert not w.offer(task())  # the same attempt, seen again (every watch event)
    assert w.offer(task(attempt=2))  # a retry of it is new
    assert w.todo.qsize() == 2


@pytest.mark.parametrize(
    "body",
    [
        task(uid="uid-b"),  # another worker's
        task(phase="Pending"),  # waiting for a retry
        task(phase="Completed"),
        task(suspend=True),
        task(report=WarmReport(attempt=1, worker="uid-a", startTime="2026-01-01T00:00:00Z")),
    ],
)
def test_other_attempts_are_left_alone(body: dict[str, Any]) -> None:
    w = worker()
    assert not w.offer(body)
    assert w.todo.empty()


def test_a_worker_leaves_once_an_inference_outlives_its_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the attempt that left an inference running, the worker is not ready any more, runs
    the attempts already assigned to it, and retires (its container restarts) once none came
    for a while."""
    ran: list[int] = []
    retired: list[list[int]] = []
    lingering_runs = [0]
    w = worker()
    w.retire = lambda: retired.append(list(ran))
    monkeypatch.setattr(lingering, "count", lambda: lingering_runs[0])
    monkeypatch.setattr(warm, "RETIRE_QUIET_SECONDS", 0.05)

    def run_one(body: dict[str, Any]) -> None:
        ran.append(body["status"]["attempts"])
        if body["status"]["attempts"] == 2:
            lingering_runs[0] = 1  # this one's inference would not stop

    monkeypatch.setattr(w, "run_one", run_one)
    for attempt in (1, 2, 3):
        assert w.offer(task(attempt=attempt))
    w.work()
    assert retired == [[1, 2, 3]] and w.leaving.is_set()


def test_health_says_not_ready_while_leaving() -> None:
    ready, leaving = threading.Event(), threading.Event()
    port = free_port()
    warm.serve_health(port, ready, leaving)
    url = f"http://127.0.0.1:{port}/healthz"

    def status() -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status() == 503  # the tasks are not listed yet
    ready.set()
    assert status() == 200
    leaving.set()
    assert status() == 503
