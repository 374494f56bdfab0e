"""Workflows and jobs with real guests: dependents run after their dependencies, a failing
dependency skips a `success` dependent and runs a `failure` one; runs leave task metrics.
Also a latent task's invocation on a real worker."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from wasinn_operator.shim import ArtifactStore
from wasinn_operator.shim.local import LocalBackend
from wasinn_operator.shim.store import TaskRecord, TaskState

from .conftest import CHELSEA, Shim, ShimBackend, complain_wasm

pytestmark = pytest.mark.integration
SKIPPED = (5,)


def _local_only(backend: ShimBackend) -> None:
    if backend.name != "local":
        pytest.skip("Skipped (5) needs a WasiNNTask phase the kubernetes backend lacks yet")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_two_task_workflow_runs_in_order(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    _local_only(backend)
    shim = make_shim()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    task = {"file": classify_b64, "cli_args": ["-S", "nn"], "inputs": CHELSEA}
    created = shim.http.post(
        "/workflows",
        json={
            "tasks": [
                {"id": first, "name": "first", **task},
                {"id": second, "name": "second", "depends_on": [first], **task},
            ]
        },
    )
    assert created.status_code == 201, created.text
    assert shim.http.post(f"/tasks/{first}/start").status_code == 200
    done_first = shim.wait_state(first)
    done_second = shim.wait_state(second)  # started by the scheduler, not by us
    assert (done_first["state"], done_second["state"]) == (3, 3), done_second
    assert "tiger cat" in done_second["results"]
    assert _time(done_second["start_time"]) >= _time(done_first["finish_time"])
    # Each run left a sample of its CPU time and memory.
    metrics = shim.http.get(f"/tasks/{first}/metrics").json()
    assert metrics["total"] == 1
    assert metrics["metrics"][0]["metrics"]["memory_bytes"] > 0
    assert metrics["metrics"][0]["cpu_seconds"] > 0
    proplet = shim.http.get("/proplets").json()["proplets"][0]["id"]
    assert shim.http.get(f"/proplets/{proplet}/metrics").json()["total"] == 2


def test_a_failing_dependency_skips_the_next_task(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    _local_only(backend)
    shim = make_shim()
    failing = base64.b64encode(complain_wasm("no model", 3)).decode()
    first, on_success, on_failure = (str(uuid.uuid4()) for _ in range(3))
    classify = {"file": classify_b64, "cli_args": ["-S", "nn"], "inputs": CHELSEA}
    job = shim.http.post(
        "/jobs",
        json={
            "name": "fail-then-branch",
            "tasks": [
                {"id": first, "name": "first", "file": failing},
                {"id": on_success, "name": "next", "depends_on": [first], **classify},
                {
                    "id": on_failure,
                    "name": "cleanup",
                    "depends_on": [first],
                    "run_if": "failure",
                    **classify,
                },
            ],
        },
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["job_id"]
    started = shim.http.post(f"/jobs/{job_id}/start")
    assert started.json() == {"message": "job started", "job_id": job_id}
    assert shim.wait_state(first)["state"] == 4
    skipped = shim.wait_state(on_success, SKIPPED)
    assert skipped["start_time"] == "0001-01-01T00:00:00Z"  # never ran
    ran = shim.wait_state(on_failure)
    assert ran["state"] == 3 and "tiger cat" in ran["results"]
    summary = shim.http.get("/jobs").json()["jobs"][0]
    assert (summary["job_id"], summary["state"]) == (job_id, 4)


def test_invoke_runs_a_latent_task_with_new_inputs(
    tmp_path: Path, models_dir: Path, guest_path: Callable[[str], Path]
) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    backend = LocalBackend(tmp_path / "tasks.db", artifacts, models_dir, 1, "p1")
    try:
        digest = artifacts.put(guest_path("classify-c").read_bytes())
        record = TaskRecord(
            id=str(uuid.uuid4()), name="classify", digest=digest, cli_args=["-S", "nn"],
            inputs=["--model", "efficientnet-lite0", "/nowhere"], latent=True,
        )  # fmt: skip
        backend.add(record)
        outcome = backend.invoke(record.copy(inputs=CHELSEA))
        assert outcome.state == TaskState.COMPLETED, outcome.error
        assert "tiger cat" in (outcome.results or "")
        assert backend.get(record.id).state == TaskState.PENDING  # the task itself did not run
    finally:
        backend.close()
