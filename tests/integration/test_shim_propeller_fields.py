"""Contract tests: task fields and request checks as Propeller's manager answers them.

Each test names the Propeller source it follows (absmach/propeller at 102e676). Differences
we make on purpose are in docs/propeller-compatibility.md, "REST fields".
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import wasmtime

from wasinn_operator.shim.taskfields import redact

from .conftest import ROOT, Shim, ShimBackend

pytestmark = pytest.mark.integration
ZERO = "0001-01-01T00:00:00Z"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
PROFILE_ZERO = {
    "enabled": False,
    "interval": 0,
    "collect_cpu": False,
    "collect_memory": False,
    "collect_disk_io": False,
    "collect_threads": False,
    "collect_file_descriptors": False,
    "export_to_mqtt": False,
    "retain_history": False,
    "history_size": 0,
}


@pytest.fixture
def shim(make_shim: Callable[..., Shim]) -> Shim:
    return make_shim()


@pytest.fixture(scope="module")
def trap_wasm() -> bytes:
    return bytes(
        wasmtime.wat2wasm((ROOT / "tests" / "runtime" / "guests" / "trap.wat").read_text())
    )


def post(shim: Shim, body: dict[str, Any]) -> Any:
    return shim.http.post("/tasks", json=body)


def test_inputs_are_strings_with_the_numbers_text(shim: Shim) -> None:
    # pkg/task/task.go FlexStrings: a number is kept as json.Number's text, so the Go SDK's
    # []string decodes every task (1.50 stays "1.50", a uint64 keeps all its digits).
    body = b'{"name": "n", "inputs": [7, 1.50, 18446744073709551615, "x", -2, 1e3]}'
    created = shim.http.post("/tasks", content=body, headers={"Content-Type": "application/json"})
    assert created.status_code == 201, created.text
    want = ["7", "1.50", "18446744073709551615", "x", "-2", "1e3"]
    assert created.json()["inputs"] == want
    task_id = created.json()["id"]
    assert shim.task(task_id)["inputs"] == want
    [listed] = [t for t in shim.tasks() if t["id"] == task_id]
    assert listed["inputs"] == want


def test_create_defaults_and_every_field_echoed(shim: Shim) -> None:
    # manager/service.go CreateTask: kind "standard", priority 0 -> 50, next_run from the
    # schedule in the timezone (UTC by default); pkg/task/task.go: omitempty fields.
    plain = post(shim, {"name": "plain"}).json()
    assert (plain["kind"], plain["priority"], plain["encrypted"]) == ("standard", 50, False)
    assert plain["next_run"] == ZERO and plain["updated_at"] == ZERO
    for absent in ("schedule", "metadata", "latent", "broadcast", "depends_on", "proplet_id"):
        assert absent not in plain
    # A dependency must be a task of the same workflow (CreateTask's dependency validation).
    parent = post(shim, {"name": "parent", "workflow_id": "wf-1"}).json()["id"]
    full = {
        "name": "full",
        "kind": "federated",
        "priority": 80,
        "schedule": "*/5 * * * *",
        "timezone": "Europe/Paris",
        "is_recurring": True,
        "metadata": {"team": "vision", "tier": 2},
        "latent": True,
        "mode": "infer",
        "daemon": True,
        "kbs_resource_path": "default/key/1",
        "workflow_id": "wf-1",
        "depends_on": [parent],
        "run_if": "success",
        "job_id": "job-1",
        "monitoring_profile": {"enabled": True, "interval": 10},
    }
    created = post(shim, full)
    assert created.status_code == 201, created.text
    # pkg/proplet/metrics.go MonitoringProfile: the struct's ten fields are answered.
    full["monitoring_profile"] = PROFILE_ZERO | {"enabled": True, "interval": 10}
    for seen in (created.json(), shim.task(created.json()["id"])):
        for key, value in full.items():
            assert seen[key] == value, key
        next_run = datetime.fromisoformat(seen["next_run"].replace("Z", "+00:00"))
        assert next_run > datetime.now(UTC) and next_run.minute % 5 == 0


def test_field_checks(shim: Shim) -> None:
    # manager/api/requests.go taskReq.validate: each is a 400 {"error": ...}.
    cases = [
        ({"name": "p", "priority": 101}, "priority"),
        ({"name": "p", "priority": -1}, "priority"),
        ({"name": "b", "broadcast": True, "proplet_id": UNKNOWN}, "mutually exclusive"),
        ({"name": "s", "schedule": "61 * * * *"}, "cron"),
        ({"name": "s", "schedule": "@daily"}, "cron"),
        ({"name": "r", "run_if": "always"}, "run_if"),
        ({"name": "d", "depends_on": ["x"]}, "workflow_id"),
    ]
    for body, word in cases:
        answer = post(shim, body)
        assert answer.status_code == 400, (body, answer.text)
        assert word in answer.json()["error"], answer.text
    assert shim.tasks() == []


def test_update_semantics(shim: Shim) -> None:
    # manager/service.go UpdateTask: an empty name and priority 0 keep what is stored;
    # updated_at changes on update only.
    task = post(shim, {"name": "keep", "priority": 70, "metadata": {"a": "1"}}).json()
    assert task["updated_at"] == ZERO
    updated = shim.http.put(f"/tasks/{task['id']}", json={"name": "", "priority": 0})
    assert updated.status_code == 200, updated.text
    seen = updated.json()
    assert (seen["name"], seen["priority"], seen["metadata"]) == ("keep", 70, {"a": "1"})
    assert seen["updated_at"] != ZERO and seen["created_at"] == task["created_at"]
    again = shim.http.put(f"/tasks/{task['id']}", json={"priority": 101})
    assert again.status_code == 400
    scheduled = shim.http.put(f"/tasks/{task['id']}", json={"schedule": "0 3 * * *"}).json()
    assert scheduled["timezone"] == "UTC"
    assert datetime.fromisoformat(scheduled["next_run"].replace("Z", "+00:00")).hour == 3


def test_metadata_filter_and_newest_first(shim: Shim) -> None:
    # pkg/api/api.go ReadMetadataQuery + the task repositories: a JSON object, every key equal
    # (values compared as Go prints them); sqlite/postgres: ORDER BY created_at DESC.
    a = post(shim, {"name": "a", "metadata": {"team": "x", "n": 3}}).json()["id"]
    b = post(shim, {"name": "b", "metadata": {"team": "x"}}).json()["id"]
    post(shim, {"name": "c", "metadata": {"team": "y"}})
    post(shim, {"name": "d"})

    def listed(query: str) -> list[str]:
        answer = shim.http.get("/tasks", params={"metadata": query})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["total"] == len(page["tasks"])
        return [t["id"] for t in page["tasks"]]

    assert listed('{"team": "x"}') == [b, a]
    assert listed('{"team": "x", "n": "3"}') == [a]
    assert listed('{"team": "z"}') == []
    assert [t["name"] for t in shim.tasks()] == ["d", "c", "b", "a"]
    for bad in ("{", "[1]"):
        assert shim.http.get("/tasks", params={"metadata": bad}).status_code == 400
    twice = shim.http.get("/tasks", params=[("metadata", "{}"), ("metadata", "{}")])
    assert twice.status_code == 400


def test_ids_limits_and_proplet_status(shim: Shim, backend: ShimBackend, classify_b64: str) -> None:
    # manager/api/requests.go: entityReq ids are UUIDs, listTasksReq limit 1..100,
    # listEntityReq proplet status active|inactive; pkg/proplet/proplet.go PropletView.
    for verb, path in (("GET", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/stop"),
                       ("GET", "/results")):  # fmt: skip
        answer = shim.http.request(verb, f"/tasks/not-a-uuid{path}")
        assert answer.status_code == 400, (verb, path, answer.text)
        assert "not a UUID" in answer.json()["error"]
    for limit in (0, 101):
        assert shim.http.get("/tasks", params={"limit": limit}).status_code == 400
    assert shim.http.get("/tasks", params={"limit": 100}).status_code == 200
    assert shim.http.get("/proplets", params={"status": "mystery"}).status_code == 400
    [proplet] = shim.http.get("/proplets", params={"status": "active"}).json()["proplets"]
    assert proplet["alive"] is True and proplet["last_alive_at"]
    assert "alive_history" not in proplet
    # pkg/proplet/proplet.go PropletMetadata: what a proplet announces on
    # control/proplet/create (local: this machine; kubernetes: what the node's kubelet reports).
    metadata = proplet["metadata"]
    want = "kubernetes" if backend.name == "kubernetes" else "binary"
    assert metadata["environment"] == want and metadata["hostname"] and metadata["wasm_runtime"]
    assert shim.http.get(f"/proplets/{proplet['id']}").json()["metadata"] == metadata
    # manager/api/requests.go entityReq.validate: a proplet id that is not a UUID is a 400, an
    # unknown UUID a 404.
    bad = shim.http.get("/proplets/not-a-uuid")
    assert bad.status_code == 400 and "not a UUID" in bad.json()["error"], bad.text
    assert shim.http.get(f"/proplets/{UNKNOWN}").status_code == 404
    assert shim.http.get("/proplets", params={"status": "inactive"}).json()["proplets"] == []
    # The module is never echoed whole (manager/api/redact.go), on any answer.
    task = post(shim, {"name": "f", "file": classify_b64}).json()
    assert task["file"] == redact(classify_b64) and "<REDACTED>" in task["file"]
    tiny = base64.b64encode(b"\0asm\1\0\0\0").decode()
    assert post(shim, {"name": "t", "file": tiny}).json()["file"] == tiny  # short: whole


def test_monitoring_profile_as_propellers_struct(shim: Shim) -> None:
    # pkg/proplet/metrics.go MonitoringProfile, decoded by manager/api/transport.go
    # decodeTaskReq: every field answered (zero when absent or null), other keys dropped, a
    # wrong type is a 400 (Go's json decoder refuses it); `{}` is a profile of zeros.
    given = {"enabled": True, "interval": 5000000000, "history_size": None, "extra": "x"}
    task = post(shim, {"name": "m", "monitoring_profile": given}).json()
    want = PROFILE_ZERO | {"enabled": True, "interval": 5000000000}
    assert task["monitoring_profile"] == want
    assert shim.task(task["id"])["monitoring_profile"] == want
    assert post(shim, {"name": "z", "monitoring_profile": {}}).json()["monitoring_profile"] == (
        PROFILE_ZERO
    )
    assert "monitoring_profile" not in post(shim, {"name": "n", "monitoring_profile": None}).json()
    for bad in ({"interval": 1.5}, {"interval": "5s"}, {"enabled": 1}, {"history_size": True}):
        answer = post(shim, {"name": "b", "monitoring_profile": bad})
        assert answer.status_code == 400, (bad, answer.text)
        assert f"monitoring_profile.{next(iter(bad))}" in answer.json()["error"]


def test_failed_run_answers_empty_results_and_stop_leaves_it(shim: Shim, trap_wasm: bytes) -> None:
    # pkg/task/task.go `Results any` (omitempty drops only nil): Propeller's manager stores the
    # proplet's "" of a failed run and answers `"results": ""` on the task.
    task_id = shim.create("_start")
    upload = shim.http.put(f"/tasks/{task_id}/upload", files={"file": ("t.wasm", trap_wasm)})
    assert upload.status_code == 200, upload.text
    assert "results" not in upload.json()  # never ran: nil, left out
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    failed = shim.wait_state(task_id, (4,))
    assert failed["results"] == "" and "unreachable" in failed["error"]
    assert shim.http.get(f"/tasks/{task_id}/results").json() == {"results": ""}
    # manager/service.go StopTask: a finished run's task→proplet record is still there, so a
    # stop answers 200 (the proplet has nothing to stop) and the task stays as it ended.
    stopped = shim.http.post(f"/tasks/{task_id}/stop")
    assert stopped.status_code == 200 and stopped.json() == {"stopped": True}, stopped.text
    assert shim.task(task_id)["state"] == 4 and shim.task(task_id)["error"] == failed["error"]
