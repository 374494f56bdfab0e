"""Jobs, workflows, cron and invocations on a real shim with real guests, on both backends.

Dependents run after their dependencies (started by the shim's scheduler, not the client), a
failing dependency skips a `success` dependent and runs a `failure` one (manager/service.go
StartJob, ComputeJobState); a task with a cron schedule is started when its next_run is due
(manager/service.go CreateTask + the cron scheduler); `POST /tasks/{id}/invoke` runs a latent
task (manager/api/endpoint.go invokeTaskEndpoint).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable

import pytest
import wasmtime

from wasinn_operator.api.times import GO_ZERO, parse_time

from .conftest import CHELSEA, Shim, ShimBackend, complain_wasm

pytestmark = pytest.mark.integration
SKIPPED = (5,)


def test_a_two_task_workflow_runs_in_order(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
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
    # Kubernetes records a container's start in whole seconds: compare at that resolution.
    first_end = parse_time(done_first["finish_time"]).replace(microsecond=0)
    assert parse_time(done_second["start_time"]) >= first_end
    if backend.name == "local":  # runs on the shim's own workers leave samples
        metrics = shim.http.get(f"/tasks/{first}/metrics").json()
        assert metrics["total"] == 1
        assert metrics["metrics"][0]["metrics"]["memory_bytes"] > 0
        proplet = shim.http.get("/proplets").json()["proplets"][0]["id"]
        assert shim.http.get(f"/proplets/{proplet}/metrics").json()["total"] == 2


def test_a_failing_dependency_skips_the_next_task(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    shim = make_shim()
    failing = base64.b64encode(complain_wasm("no model", 3)).decode()
    first, on_success, on_failure = (str(uuid.uuid4()) for _ in range(3))
    classify = {"file": classify_b64, "cli_args": ["-S", "nn"], "inputs": CHELSEA}
    job = shim.http.post(
        "/jobs",
        json={
            "name": "fail-then-branch",
            "execution_mode": "parallel",
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
    assert skipped["start_time"] == GO_ZERO  # never ran
    assert skipped["error"].startswith("skipped: run_if success")
    ran = shim.wait_state(on_failure)
    assert ran["state"] == 3 and "tiger cat" in ran["results"]
    summary = shim.http.get("/jobs").json()["jobs"][0]
    assert (summary["job_id"], summary["name"], summary["state"]) == (
        job_id,
        "fail-then-branch",
        4,
    )
    assert [t["id"] for t in shim.http.get(f"/jobs/{job_id}").json()["tasks"]] == [
        first,
        on_success,
        on_failure,
    ]


def test_a_cron_task_runs_when_due_and_gets_its_next_run(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    shim = make_shim()
    classify = {"file": classify_b64, "cli_args": ["-S", "nn"], "inputs": CHELSEA}
    # Every minute: the first run is due at the next minute boundary (cron's resolution).
    every = shim.http.post(
        "/tasks", json={"name": "every", "schedule": "* * * * *", "is_recurring": True, **classify}
    ).json()
    once = shim.http.post("/tasks", json={"name": "once", "schedule": "* * * * *", **classify})
    once_id = once.json()["id"]
    due = parse_time(every["next_run"])
    assert every["state"] == 0
    done = shim.wait_state(every["id"], timeout=240)  # no start: the scheduler starts it
    assert done["state"] == 3 and "tiger cat" in done["results"], done
    assert parse_time(done["start_time"]) >= due
    assert parse_time(done["next_run"]) > due  # recurring: the following minute
    ran_once = shim.wait_state(once_id, timeout=240)
    assert ran_once["state"] == 3
    assert ran_once["next_run"] == GO_ZERO  # not recurring: no further run
    assert "schedule" not in ran_once  # and its schedule cleared, as Propeller does


def test_invoke_runs_a_latent_task_with_new_inputs(
    backend: ShimBackend, make_shim: Callable[..., Shim]
) -> None:
    shim = make_shim()
    module = wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " (i32.add (local.get 0) (local.get 1))))"
    )
    file = base64.b64encode(module).decode()
    task_id = shim.create("add", file=file, inputs=["1", "2"], latent=True)
    # As on Propeller, a latent task answers invocations once a start deployed it (404 before).
    early = shim.http.post(f"/tasks/{task_id}/invoke", json={"inputs": [2, "40"]})
    assert early.status_code == 404 and "start it first" in early.json()["error"]
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    if backend.name == "local":  # Running while deployed; on kubernetes the operator owns status
        assert shim.task(task_id)["state"] == 2
    answer = shim.http.post(f"/tasks/{task_id}/invoke", json={"inputs": [2, "40"]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"invoked": True, "results": "42\n"}
    own = shim.http.post(f"/tasks/{task_id}/invoke")  # no body: the task's own inputs
    assert own.json() == {"invoked": True, "results": "3\n"}
    assert "results" not in shim.task(task_id)  # invocations do not run the task itself
    assert shim.http.post(f"/tasks/{task_id}/stop").status_code == 200
    after = shim.http.post(f"/tasks/{task_id}/invoke")
    assert after.status_code == 404, after.text
    plain = shim.create("add", file=file, inputs=["1", "2"])
    refused = shim.http.post(f"/tasks/{plain}/invoke")
    assert refused.status_code == 409
    assert "has not been precompiled" in refused.json()["error"]


def test_depends_on_a_task_that_does_not_exist_is_400_and_stores_nothing(
    backend: ShimBackend, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    """Propeller's CreateTask answers 500 (`dependency validation failed`); the shim a 400
    naming the missing task, on POST and PUT /tasks, /jobs and /workflows alike."""
    shim = make_shim()
    workflow, missing = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"name": "b", "workflow_id": workflow, "depends_on": [missing], "file": classify_b64}
    refused = shim.http.post("/tasks", json=body)
    assert refused.status_code == 400
    assert refused.json() == {"error": f"depends_on: task {missing} does not exist"}
    root = shim.create("a", workflow_id=workflow)
    changed = shim.http.put(f"/tasks/{root}", json={"depends_on": [missing]})
    assert changed.status_code == 400
    assert changed.json() == {"error": f"depends_on: task {missing} does not exist"}
    for route in ("/jobs", "/workflows"):
        group = {"tasks": [{"name": "a", "depends_on": [missing]}]}
        answer = shim.http.post(route, json=group)
        assert answer.status_code == 400
        assert f"depends_on: task {missing} does not exist" in answer.json()["error"]
    tasks = shim.http.get("/tasks").json()
    assert [t["id"] for t in tasks["tasks"]] == [root]
    assert "depends_on" not in tasks["tasks"][0]
    child = shim.http.post("/tasks", json={**body, "depends_on": [root]})
    assert child.status_code == 201, child.text
