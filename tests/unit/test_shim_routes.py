"""Contract tests of the routes Propeller's manager has beyond tasks CRUD: jobs, workflows,
proplet details, task metrics and invoke, on the FastAPI app with a real local backend.

Each asserts Propeller's status code and fields as its handlers answer them; the Propeller
file a test follows is named in its docstring (manager/api/... at commit 102e676). Runs are
not started here (no worker processes): tests/integration/test_shim_jobs.py runs real guests.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from wasinn_operator.api.times import parse_time
from wasinn_operator.shim import ArtifactStore, TaskService
from wasinn_operator.shim.app import create_app
from wasinn_operator.shim.jobs import JobService, _job_state
from wasinn_operator.shim.local import LocalBackend
from wasinn_operator.shim.schedule import Scheduler
from wasinn_operator.shim.store import Outcome, TaskPhase
from wasinn_operator.shim.taskmetrics import TaskMetricsStore

pytestmark = pytest.mark.unit
OWN = "6f0c1a3e-0000-4000-8000-0000000000aa"
EXT = "6f0c1a3e-0000-4000-8000-0000000000bb"
WASM_B64 = base64.b64encode(b"\0asm\1\0\0\0").decode()  # an empty module


class World:
    def __init__(self, tmp_path: Path) -> None:
        artifacts = ArtifactStore(tmp_path / "artifacts")
        self.backend = LocalBackend(tmp_path / "tasks.db", artifacts, None, 1, OWN)
        self.service = TaskService(self.backend, artifacts, OWN)
        # Groups live on the tasks: this JobService sees what the app's does.
        self.jobs = JobService(self.service)
        self.metrics = TaskMetricsStore()
        app = create_app(self.service, task_metrics=self.metrics)
        # No `with`: the lifespan (and its ticker) stays off; tests call advance() themselves.
        self.http = TestClient(app)

    def job(self, *tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
        response = self.http.post("/jobs", json={"name": "j", "tasks": list(tasks), **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def state(self, task_id: str) -> TaskPhase:
        return TaskPhase.of_state(self.http.get(f"/tasks/{task_id}").json()["state"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    found = World(tmp_path)
    yield found
    found.backend.close()


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


# ---- jobs (manager/api/endpoint.go createJobEndpoint, responses.go jobResponse) ----


def test_create_job_answers_201_with_job_id_tasks_and_location(world: World) -> None:
    a, b = ids(2)
    response = world.http.post(
        "/jobs",
        json={
            "name": "pipeline",
            "execution_mode": "parallel",
            "tasks": [
                {"id": a, "name": "first"},
                {"id": b, "name": "second", "depends_on": [a], "run_if": "failure"},
            ],
        },
    )
    assert response.status_code == 201
    body = response.json()
    job_id = body["job_id"]
    uuid.UUID(job_id)
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert [t["id"] for t in body["tasks"]] == [a, b]
    assert [t["state"] for t in body["tasks"]] == [0, 0]
    assert all(t["job_id"] == job_id for t in body["tasks"])
    assert "depends_on" not in body["tasks"][0]  # Go omitempty
    assert body["tasks"][1]["depends_on"] == [a]
    assert body["tasks"][1]["run_if"] == "failure"
    assert all("file" not in t for t in body["tasks"])
    # The tasks are ordinary tasks too.
    assert world.http.get(f"/tasks/{b}").json()["name"] == "second"


@pytest.mark.parametrize(
    ("tasks", "field"),
    [
        ([], "tasks"),
        ([{"name": ""}], "tasks.0.name"),
        ([{"name": "a", "run_if": "always"}], "tasks.0.run_if"),
        ([{"name": "a", "depends_on": [str(uuid.UUID(int=1))]}], "tasks.0.depends_on"),
        ([{"name": "a", "id": "not-a-uuid"}], "tasks.0.id"),
    ],
)
def test_invalid_job_is_400_naming_the_field_and_stores_nothing(
    world: World, tasks: list[dict[str, Any]], field: str
) -> None:
    """requests.go jobReq.validate, service.go CreateJob (dag.ValidateDependenciesExist)."""
    response = world.http.post("/jobs", json={"name": "j", "tasks": tasks})
    assert response.status_code == 400
    assert response.json()["error"].startswith(field)
    assert world.http.get("/tasks").json()["total"] == 0
    assert world.http.get("/jobs").json()["total"] == 0


def test_a_dependency_cycle_is_400(world: World) -> None:
    """service.go CreateJob: dag.ValidateDAG."""
    a, b = ids(2)
    response = world.http.post(
        "/jobs",
        json={
            "tasks": [
                {"id": a, "name": "a", "depends_on": [b]},
                {"id": b, "name": "b", "depends_on": [a]},
            ]
        },
    )
    assert response.status_code == 400
    assert "cycle" in response.json()["error"]


@pytest.mark.parametrize("route", ["/jobs", "/workflows"])
def test_a_group_task_depending_on_a_task_outside_the_request_is_400(
    world: World, route: str
) -> None:
    """service.go CreateJob / CreateWorkflow: dag.ValidateDependenciesExist over the request's
    tasks (Propeller answers 500 `dependency validation failed`)."""
    (a,) = ids(1)
    stored = world.http.post("/tasks", json={"name": "elsewhere"}).json()["id"]
    for dep in (str(uuid.uuid4()), stored):  # unknown, and a task not in the request
        response = world.http.post(
            route, json={"tasks": [{"id": a, "name": "a", "depends_on": [dep]}]}
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": f"tasks.0.depends_on: task {dep} does not exist in this request"
        }
    assert world.http.get("/tasks").json()["total"] == 1


# ---- depends_on of a task on its own (manager/service.go CreateTask) ----


def _artifacts(world: World) -> set[str]:
    return {p.name for p in world.service.artifacts.directory.rglob("*") if p.is_file()}


def test_a_task_depending_on_a_missing_task_is_400_and_stores_nothing(world: World) -> None:
    """service.go CreateTask: dag.ValidateDependenciesExist over the workflow's tasks and the
    new one (Propeller answers 500 `dependency validation failed: dependency task not found`)."""
    workflow, missing = ids(2)
    before = _artifacts(world)
    for dep in (missing, "not-a-uuid"):
        response = world.http.post(
            "/tasks",
            json={"name": "b", "workflow_id": workflow, "depends_on": [dep], "file": WASM_B64},
        )
        assert response.status_code == 400
        assert response.json() == {"error": f"depends_on: task {dep} does not exist"}
    assert world.http.get("/tasks").json()["total"] == 0
    assert _artifacts(world) == before  # the module it carried was not kept


def test_a_task_may_depend_on_tasks_of_its_own_workflow_only(world: World) -> None:
    workflow, other = ids(2)
    root = world.http.post("/tasks", json={"name": "a", "workflow_id": workflow}).json()["id"]
    foreign = world.http.post("/tasks", json={"name": "x", "workflow_id": other}).json()["id"]
    created = world.http.post(
        "/tasks", json={"name": "b", "workflow_id": workflow, "depends_on": [root]}
    )
    assert created.status_code == 201, created.text
    assert created.json()["depends_on"] == [root]
    refused = world.http.post(
        "/tasks", json={"name": "c", "workflow_id": workflow, "depends_on": [foreign]}
    )
    assert refused.status_code == 400
    assert refused.json() == {"error": f"depends_on: task {foreign} is not in workflow {workflow}"}
    assert world.http.get("/tasks").json()["total"] == 3


def test_an_update_is_checked_for_missing_dependencies_and_cycles(world: World) -> None:
    workflow, missing = ids(2)
    root = world.http.post("/tasks", json={"name": "a", "workflow_id": workflow}).json()["id"]
    child = world.http.post(
        "/tasks", json={"name": "b", "workflow_id": workflow, "depends_on": [root]}
    ).json()["id"]
    refused = world.http.put(f"/tasks/{child}", json={"depends_on": [root, missing]})
    assert refused.status_code == 400
    assert refused.json() == {"error": f"depends_on: task {missing} does not exist"}
    cycle = world.http.put(f"/tasks/{root}", json={"name": "a2", "depends_on": [child]})
    assert cycle.status_code == 400
    assert cycle.json() == {"error": f"depends_on: a cycle through task {root}"}
    itself = world.http.put(f"/tasks/{root}", json={"depends_on": [root]})
    assert itself.json() == {"error": f"depends_on: task {root} cannot depend on itself"}
    # Nothing of a refused update is kept.
    assert world.http.get(f"/tasks/{child}").json()["depends_on"] == [root]
    assert world.http.get(f"/tasks/{root}").json()["name"] == "a"
    assert "depends_on" not in world.http.get(f"/tasks/{root}").json()
    # An update that leaves the dependencies alone is not checked again (one was deleted).
    assert world.http.delete(f"/tasks/{root}").status_code == 204
    renamed = world.http.put(f"/tasks/{child}", json={"name": "renamed"})
    assert renamed.status_code == 200, renamed.text


def test_a_refused_task_rolls_the_whole_job_back(world: World) -> None:
    """service.go CreateJob deletes the tasks it created when one fails."""
    response = world.http.post(
        "/jobs",
        json={"tasks": [{"name": "ok"}, {"name": "bad", "cli_args": ["--dir", "/"]}]},
    )
    assert response.status_code == 400
    assert "host directories" in response.json()["error"]
    assert world.http.get("/tasks").json()["total"] == 0


def test_job_body_must_be_json(world: World) -> None:
    response = world.http.post("/jobs", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 400  # transport.go: ErrUnsupportedContentType is a 400
    assert "error" in response.json()
    bad_mode = world.http.post("/jobs", json={"tasks": [{"name": "a"}], "execution_mode": "x"})
    assert bad_mode.status_code == 400
    assert bad_mode.json()["error"].startswith("execution_mode")


def test_get_list_start_and_stop_a_job(world: World) -> None:
    """endpoint.go getJobEndpoint, listJobsEndpoint, startJobEndpoint, stopJobEndpoint."""
    a, b = ids(2)
    created = world.job({"id": a, "name": "a"}, {"id": b, "name": "b", "depends_on": [a]})
    job_id = created["job_id"]
    got = world.http.get(f"/jobs/{job_id}")
    assert got.status_code == 200
    assert got.json()["job_id"] == job_id
    assert [t["id"] for t in got.json()["tasks"]] == [a, b]

    page = world.http.get("/jobs").json()
    assert set(page) == {"offset", "limit", "total", "jobs"}
    assert (page["offset"], page["limit"], page["total"]) == (0, 100, 1)
    summary = page["jobs"][0]
    assert summary["job_id"] == job_id and summary["name"] == "j"
    assert summary["state"] == 0
    assert summary["start_time"] == "0001-01-01T00:00:00Z"
    assert world.http.get("/jobs", params={"status": "pending"}).json()["total"] == 1
    assert world.http.get("/jobs", params={"status": "running"}).json()["total"] == 0
    unknown = world.http.get("/jobs", params={"status": "bogus"})
    assert unknown.status_code == 400 and unknown.json()["error"].startswith("status")

    # A job whose root cannot start (no module) does not half run: 409, nothing scheduled.
    refused = world.http.post(f"/jobs/{job_id}/start")
    assert refused.status_code == 409
    assert "no wasm module" in refused.json()["error"]
    assert world.state(a) is TaskPhase.PENDING

    stopped = world.http.post(f"/jobs/{job_id}/stop")
    assert (stopped.status_code, stopped.json()) == (
        200,
        {"message": "job stopped", "job_id": job_id},
    )


def test_unknown_job_is_404(world: World) -> None:
    missing = str(uuid.uuid4())
    for method, path in (("GET", ""), ("POST", "/start"), ("POST", "/stop")):
        response = world.http.request(method, f"/jobs/{missing}{path}")
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": f"job {missing} not found"}


def test_workflow_answers_201_with_tasks(world: World) -> None:
    """endpoint.go createWorkflowEndpoint, responses.go workflowResponse (201, `tasks`)."""
    a, b = ids(2)
    response = world.http.post(
        "/workflows",
        json={"tasks": [{"id": a, "name": "a"}, {"id": b, "name": "b", "depends_on": [a]}]},
    )
    assert response.status_code == 201
    tasks = response.json()["tasks"]
    assert set(response.json()) == {"tasks"}
    assert tasks[0]["workflow_id"] == tasks[1]["workflow_id"]
    assert "job_id" not in tasks[0]
    # A workflow is not a job.
    assert world.http.get(f"/jobs/{tasks[0]['workflow_id']}").status_code == 404
    assert world.http.post("/workflows", json={"tasks": []}).status_code == 400


def test_a_failed_dependency_skips_a_success_dependent_and_its_own(world: World) -> None:
    """Dependents decide once every dependency finished: run_if success needs all Completed,
    so a Failed dependency ends the dependent Skipped (5), and its dependents in turn."""
    a, b, c = ids(3)
    world.job(
        {"id": a, "name": "a"},
        {"id": b, "name": "b", "depends_on": [a]},
        {"id": c, "name": "c", "depends_on": [b], "run_if": "success"},
    )
    world.jobs.advance()
    assert (world.state(b), world.state(c)) == (TaskPhase.PENDING,) * 2  # a has not finished
    world.service.fail(a, "exit status 1")
    world.jobs.advance()
    assert world.state(b) is TaskPhase.SKIPPED
    assert world.http.get(f"/tasks/{b}").json()["state"] == 5
    assert world.http.get(f"/tasks/{b}").json()["error"].startswith("skipped: run_if success")
    world.jobs.advance()
    assert world.state(c) is TaskPhase.SKIPPED
    assert world.http.get("/jobs").json()["jobs"][0]["state"] == 4  # Failed


def test_a_completed_dependency_skips_a_failure_dependent(world: World) -> None:
    a, b = ids(2)
    world.job(
        {"id": a, "name": "a"}, {"id": b, "name": "b", "depends_on": [a], "run_if": "failure"}
    )
    record = world.backend.db.start(a, OWN)
    world.backend.db.claim(a, record.run)
    world.backend.db.finish(a, record.run, Outcome(TaskPhase.COMPLETED, "ok"), publish=False)
    world.jobs.advance()
    assert world.state(b) is TaskPhase.SKIPPED


def test_a_deleted_task_leaves_its_job(world: World) -> None:
    a, b = ids(2)
    job_id = world.job({"id": a, "name": "a"}, {"id": b, "name": "b", "depends_on": [a]})["job_id"]
    assert world.http.delete(f"/tasks/{a}").status_code == 204
    world.jobs.advance()  # b's dependency is gone: it waits, the tick does not fail
    assert [t["id"] for t in world.http.get(f"/jobs/{job_id}").json()["tasks"]] == [b]
    assert world.state(b) is TaskPhase.PENDING


def test_job_state_follows_propeller() -> None:
    """service.go ComputeJobState."""
    s = TaskPhase
    assert _job_state([]) == s.PENDING
    assert _job_state([s.COMPLETED, s.INTERRUPTED]) == s.FAILED
    assert _job_state([s.COMPLETED, s.RUNNING]) == s.RUNNING
    assert _job_state([s.SCHEDULED, s.PENDING]) == s.RUNNING
    assert _job_state([s.COMPLETED, s.SKIPPED]) == s.COMPLETED
    assert _job_state([s.COMPLETED, s.PENDING]) == s.PENDING


# ---- proplets (endpoint.go getPropletAliveHistoryEndpoint, ..., responses.go) ----


def test_alive_history_page(world: World) -> None:
    response = world.http.get(f"/proplets/{OWN}/alive-history")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"offset", "limit", "total", "history"}
    assert body["total"] == len(body["history"]) >= 1
    assert body["history"][0].endswith("Z")
    assert world.http.get(f"/proplets/{EXT}/alive-history").status_code == 404


def test_proplet_metrics_page_is_empty_not_404(world: World) -> None:
    """service.go GetPropletMetrics lists the repository's samples: none is an empty page."""
    for proplet in (OWN, EXT):
        response = world.http.get(f"/proplets/{proplet}/metrics", params={"limit": 5})
        assert response.status_code == 200
        assert response.json() == {"offset": 0, "limit": 5, "total": 0, "metrics": []}


def test_proplet_sdf_document(world: World) -> None:
    """pkg/sdf/proplet.go PropletDocument."""
    response = world.http.get(f"/proplets/{OWN}/sdf")
    assert response.status_code == 200
    doc = response.json()
    assert doc["info"]["title"].endswith(f"({OWN})")
    assert doc["info"]["version"] == "1.0"
    thing = doc["sdfThing"]["Proplet"]
    assert {"id", "name", "alive", "task_count"} <= set(thing["sdfProperty"])
    assert set(thing["sdfAction"]) == {"start_task", "stop_task"}
    assert set(thing["sdfEvent"]) == {"heartbeat", "task_result"}
    # The required fields of what the proplet is sent, as proplet.go declares them.
    assert thing["sdfData"]["TaskDispatch"]["required"] == ["id", "name"]
    assert thing["sdfData"]["TaskStop"]["required"] == ["id"]
    # Go writes its float64 minimum 0 as `0`: an integer literal on the wire, as here.
    assert type(thing["sdfProperty"]["task_count"]["minimum"]) is int
    assert world.http.get(f"/proplets/{EXT}/sdf").status_code == 404
    # requests.go entityReq: an unknown id that is not a UUID is a 400.
    for method, path in (("GET", "/proplets/nope/sdf"), ("DELETE", "/proplets/nope")):
        assert world.http.request(method, path).status_code == 400, path


def test_delete_proplet(world: World) -> None:
    """service.go DeleteProplet: 404 unknown, 409 while it has tasks, else 204."""
    registry = world.service.registry
    registry.register(EXT, "edge", "ns", {"os": "linux"})
    assert world.http.get(f"/proplets/{EXT}").json()["alive"] is True
    registry.set_task_count(EXT, 2)
    busy = world.http.delete(f"/proplets/{EXT}")
    assert busy.status_code == 409 and "2 active tasks" in busy.json()["error"]
    registry.set_task_count(EXT, 0)
    deleted = world.http.delete(f"/proplets/{EXT}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert world.http.get(f"/proplets/{EXT}").status_code == 404
    assert world.http.delete(f"/proplets/{EXT}").status_code == 404
    own = world.http.delete(f"/proplets/{OWN}")
    assert own.status_code == 409 and "own backend" in own.json()["error"]


# ---- task metrics and invoke (endpoint.go getTaskMetricsEndpoint, invokeTaskEndpoint) ----


def test_task_metrics_page(world: World) -> None:
    task_id = world.http.post("/tasks", json={"name": "t"}).json()["id"]
    empty = world.http.get(f"/tasks/{task_id}/metrics")
    assert empty.status_code == 200
    assert empty.json() == {"offset": 0, "limit": 100, "total": 0, "metrics": []}
    world.metrics.record_run(task_id, OWN, cpu_seconds=0.5, rss_bytes=1 << 20, wall_seconds=1.0)
    body = world.http.get(f"/tasks/{task_id}/metrics").json()
    assert body["total"] == 1
    sample = body["metrics"][0]
    assert (sample["task_id"], sample["proplet_id"]) == (task_id, OWN)
    assert sample["metrics"]["cpu_percent"] == 50.0
    assert sample["metrics"]["memory_bytes"] == 1 << 20
    assert sample["timestamp"].endswith("Z")
    assert world.http.get(f"/tasks/{task_id}/metrics", params={"limit": 1001}).status_code == 400


def test_invoke_refuses_a_task_that_is_not_latent(world: World) -> None:
    task_id = world.http.post("/tasks", json={"name": "t"}).json()["id"]
    response = world.http.post(f"/tasks/{task_id}/invoke", json={"inputs": [1, "2"]})
    assert response.status_code == 409
    assert "has not been precompiled" in response.json()["error"]
    assert world.http.post(f"/tasks/{uuid.uuid4()}/invoke").status_code == 404
    assert world.http.post("/tasks/not-a-uuid/invoke").status_code == 400  # requests.go
    bad = world.http.post(f"/tasks/{task_id}/invoke", json={"inputs": {"a": 1}})
    assert bad.status_code == 400 and bad.json()["error"].startswith("inputs")


def test_every_propeller_route_is_answered(world: World) -> None:
    """manager/api/transport.go: no route of Propeller's is a 404 for want of a route."""
    some = str(uuid.uuid4())
    routes = [
        ("GET", f"/tasks/{some}/metrics"), ("POST", f"/tasks/{some}/invoke"),
        ("GET", f"/proplets/{some}/alive-history"), ("GET", f"/proplets/{some}/metrics"),
        ("GET", f"/proplets/{some}/sdf"), ("DELETE", f"/proplets/{some}"),
        ("GET", "/jobs"), ("POST", "/jobs"), ("GET", f"/jobs/{some}"),
        ("POST", f"/jobs/{some}/start"), ("POST", f"/jobs/{some}/stop"), ("POST", "/workflows"),
    ]  # fmt: skip
    for method, path in routes:
        response = world.http.request(method, path, json={})
        assert not response.json().get("error", "").startswith("no route"), (method, path)


# ---- cron (manager/service.go CreateTask: NextRun; pkg/cron; the scheduler's tick) ----


def _scheduled(world: World, **fields: Any) -> tuple[str, datetime]:
    body = {"name": "cron", "schedule": "*/5 * * * *", **fields}
    task = world.http.post("/tasks", json=body).json()
    return task["id"], parse_time(task["next_run"])


def test_a_due_recurring_task_is_started_and_gets_its_next_run(world: World) -> None:
    task_id, due = _scheduled(world, is_recurring=True)
    scheduler = Scheduler(world.service, world.jobs)
    scheduler.tick(due - timedelta(seconds=1))  # not due yet: nothing happens
    assert world.state(task_id) is TaskPhase.PENDING
    scheduler.tick(due)
    task = world.http.get(f"/tasks/{task_id}").json()
    # It has no module: the run could not start and says why (a run with one is started:
    # tests/integration/test_shim_jobs.py).
    assert task["state"] == 4 and task["error"].startswith("scheduled run: ")
    assert "no wasm module" in task["error"]
    assert parse_time(task["next_run"]) == due + timedelta(minutes=5)
    scheduler.tick(due + timedelta(seconds=30))  # the same run is not started twice
    assert world.http.get(f"/tasks/{task_id}").json()["next_run"] == task["next_run"]


def test_a_due_one_off_task_runs_once(world: World) -> None:
    task_id, due = _scheduled(world)
    Scheduler(world.service, world.jobs).tick(due + timedelta(minutes=1))
    task = world.http.get(f"/tasks/{task_id}").json()
    assert task["state"] == 4
    assert task["next_run"] == "0001-01-01T00:00:00Z"
    assert "schedule" not in task  # cleared, as Propeller's scheduler does after the run
