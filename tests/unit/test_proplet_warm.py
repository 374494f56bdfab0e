"""The warm worker's choice of tasks: only attempts assigned to its own Pod, each once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wasinn_operator.api.warm import REPORT_ANNOTATION, WarmReport
from wasinn_operator.proplet.runner import PropletConfig
from wasinn_operator.proplet.warm import Identity, WarmWorker

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
