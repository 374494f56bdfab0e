"""The seed guide's walkthrough against `wasinn shim`, verbatim in spirit: curl-style requests."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from wasinn_operator.shim.taskfields import redact

from ..conftest import Broker, Subscriber
from .conftest import CHELSEA, SHIM_ID, TOPIC_PREFIX, Shim, ShimBackend, mqtt_env

pytestmark = pytest.mark.integration


def test_seed_walkthrough(
    backend: ShimBackend, make_shim: Callable[..., Shim], broker: Broker, classify_b64: str
) -> None:
    shim = make_shim(**mqtt_env(broker))
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    try:
        # ID=$(curl -s -X POST .../tasks -H 'Content-Type: application/json' -d '{"name": ...}'
        #      | jq -r '.task.id')
        created = shim.http.post("/tasks", json={"name": "classify-chelsea"})
        assert created.status_code == 201
        body = created.json()
        task_id = body["task"]["id"]
        assert body["id"] == task_id  # Propeller's flat `.id` works too
        assert created.headers["location"] == f"/tasks/{task_id}"
        assert body["state"] == 0
        assert body["created_at"].endswith("Z")
        assert body["start_time"] == "0001-01-01T00:00:00Z"
        # curl -X PUT .../tasks/$ID -d '{"name", "file", "cli_args", "env", "daemon"}'
        updated = shim.http.put(
            f"/tasks/{task_id}",
            json={
                "name": "classify-chelsea",
                "file": classify_b64,
                "cli_args": ["--wasi-modules=experimental-wasi-nn"],
                "inputs": CHELSEA,
                "env": {"MODEL_NAME": "efficientnet-lite0"},
                "daemon": False,
            },
        )
        assert updated.status_code == 200, updated.text
        task = updated.json()
        assert task["cli_args"] == ["--wasi-modules=experimental-wasi-nn"]
        assert task["env"] == {"MODEL_NAME": "efficientnet-lite0"}
        assert task["inputs"] == CHELSEA
        assert task["daemon"] is False
        # Never echoed whole: redacted as Propeller does (manager/api/redact.go).
        assert task["file"] == redact(classify_b64)
        assert shim.task(task_id)["file"] == redact(classify_b64)
        # jq -r '.tasks[] | select(.name=="classify-chelsea") | .id'
        listed = shim.http.get("/tasks").json()
        assert [t["id"] for t in listed["tasks"] if t["name"] == "classify-chelsea"] == [task_id]
        assert all(t.get("file") in (None, redact(classify_b64)) for t in listed["tasks"])
        started = shim.http.post(f"/tasks/{task_id}/start")
        assert (started.status_code, started.json()) == (200, {"started": True})
        # poll .state and .results
        final = shim.wait_state(task_id)
        assert final["state"] == 3, final
        assert "1. tiger cat (282)" in final["results"]
        # REST names the worker that ran it: the shim's pool (local) or the node (kubernetes).
        assert final["proplet_id"] == backend.node
        assert final["start_time"] != "0001-01-01T00:00:00Z"
        assert final["finish_time"] >= final["start_time"]
        assert shim.http.get(f"/tasks/{task_id}/results").json() == {"results": final["results"]}
        # Listings carry the results, as Propeller's do, and redact modules.
        [listed] = [t for t in shim.tasks() if t["id"] == task_id]
        assert listed["results"] == final["results"] and listed["file"] == redact(classify_b64)
        assert listed["state"] == 3
        # The results topic carries the same result, in Propeller's shape; on MQTT the proplet is
        # the shim (the one a Propeller manager knows), whichever worker ran the task.
        [(topic, payload)] = results.wait_for(1, timeout=60)
    finally:
        results.close()
    assert topic == TOPIC_PREFIX + "control/proplet/results"
    assert payload == {
        "task_id": task_id,
        "proplet_id": SHIM_ID,
        "results": final["results"],
        "error": None,
    }


def test_inputs_as_numbers_and_a_failing_run(
    make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    """Numeric `inputs` are kept as their JSON text (Propeller's pkg/task FlexStrings), so Go
    clients can read them; a guest's failure is state 4 with its error."""
    shim = make_shim()
    task_id = shim.create("bad-args", file=classify_b64, inputs=[7, 18446744073709551615])
    assert shim.task(task_id)["inputs"] == ["7", "18446744073709551615"]
    shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
    final = shim.wait_state(task_id)
    assert final["state"] == 4
    assert final["error"]


def test_upload_rerun_and_delete(
    make_shim: Callable[..., Shim], guest_path: Callable[[str], Any]
) -> None:
    """`PUT /tasks/{id}/upload` (multipart), a second run, and delete removes the module."""
    shim = make_shim()
    task_id = shim.create("uploaded", inputs=CHELSEA)
    wasm = guest_path("classify-rust").read_bytes()
    files = {"file": ("classify.wasm", wasm, "application/wasm")}
    uploaded = shim.http.put(f"/tasks/{task_id}/upload", files=files)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["file"] == redact(base64.b64encode(wasm).decode())  # never whole
    for _ in range(2):
        shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
        final = shim.wait_state(task_id)
        assert final["state"] == 3, final
        assert "tiger cat" in final["results"]
    digest = "sha256:" + hashlib.sha256(wasm).hexdigest()
    served = shim.http.get(f"/artifacts/{digest}")
    assert served.status_code == 200
    assert served.content == wasm
    assert served.headers["content-type"] == "application/wasm"
    assert shim.http.delete(f"/tasks/{task_id}").status_code == 204
    assert shim.http.get(f"/tasks/{task_id}").status_code == 404
    assert shim.http.get(f"/artifacts/{digest}").status_code == 404


def test_put_replaces_env_and_keeps_the_rest(
    make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    """`PUT` replaces each field it names as a whole (an `env` map too) and keeps the others."""
    shim = make_shim()
    task_id = shim.create("replace", env={"OLD": "1", "KEEP": "2"}, inputs=CHELSEA)
    task = shim.http.put(f"/tasks/{task_id}", json={"env": {"KEEP": "3"}, "file": classify_b64})
    assert task.status_code == 200, task.text
    for seen in (task.json(), shim.task(task_id)):
        assert (seen["env"], seen["inputs"]) == ({"KEEP": "3"}, CHELSEA)
    assert shim.task(task_id)["file"] == redact(classify_b64)


def test_pages_are_ordered_and_complete(
    backend: ShimBackend, make_shim: Callable[..., Shim]
) -> None:
    shim = make_shim()
    ids = [shim.create(f"t{i}") for i in range(7)][::-1]  # newest first, as Propeller lists
    seen: list[str] = []
    for offset in range(0, 8, 3):
        page = shim.http.get("/tasks", params={"offset": offset, "limit": 3}).json()
        assert (page["offset"], page["limit"], page["total"]) == (offset, 3, 7)
        assert len(page["tasks"]) == min(3, 7 - offset)  # never padded
        seen += [t["id"] for t in page["tasks"]]
    assert seen == ids
    proplets = shim.http.get("/proplets").json()
    assert proplets["total"] == 1
    proplet = proplets["proplets"][0]
    # Propeller's PropletView (pkg/proplet/proplet.go).
    assert set(proplet) == {"id", "name", "task_count", "alive", "last_alive_at", "metadata"}
    assert proplet["alive"] is True
    if backend.name == "kubernetes":  # the OpenVINO-labelled, Ready node
        assert (proplet["id"], proplet["name"]) == (backend.node, backend.node)
    assert shim.http.get(f"/proplets/{proplet['id']}").json()["id"] == proplet["id"]
    health = shim.http.get("/health").json()
    assert health["status"] == "pass"
    assert set(health) == {
        "status",
        "version",
        "commit",
        "description",
        "build_time",
        "instance_id",
        "checks",  # ours: every dependency, each {"status": "pass"} here
    }
    assert all(check == {"status": "pass"} for check in health["checks"].values()), health
    metrics = shim.http.get("/metrics")
    assert 'wasinn_shim_tasks{state="pending"} 7.0' in metrics.text
