"""The shim as a Propeller manager: a real second shim, in proplet mode on the first one's
channel, is the external proplet; the manager is driven by REST alone.

Propeller's flow (manager/service.go StartTask, StopTask, updateResultsHandler,
updateLivenessHandler): the proplet announces itself and heartbeats, the manager publishes
`control/manager/start` to it, the proplet runs the module and publishes the result, which
completes the manager's task. The manager here keeps its tasks in the local backend; with the
kubernetes backend: test_shim_manager_kubernetes.py.
"""

from __future__ import annotations

import base64
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR

from ..conftest import Broker, Subscriber
from .conftest import CHELSEA, FAILED, RUNNING, SHIM_BACKENDS, TOPIC_PREFIX, Shim, ShimBackend
from .conftest import mqtt_env as proplet_env

pytestmark = pytest.mark.integration
EDGE = str(uuid.uuid4())
COMPLETED = 3


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    """The manager keeps its tasks in the local backend (see the module's docstring)."""
    return SHIM_BACKENDS["local"](request)


def proplets(shim: Shim, status: str | None = None) -> dict[str, dict[str, Any]]:
    params = {"status": status} if status else {}
    response = shim.http.get("/proplets", params=params)
    assert response.status_code == 200, response.text
    return {p["id"]: p for p in response.json()["proplets"]}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def pair(make_shim: Callable[..., Shim], broker: Broker) -> tuple[Shim, Shim]:
    """The manager shim and an external proplet (a second shim) it has seen announce itself."""
    manager = make_shim(**proplet_env(broker))
    edge = make_shim(**{**proplet_env(broker), "PROPLET_INSTANCE_ID": EDGE})
    wait_for("the manager lists the external proplet", lambda: EDGE in proplets(manager, "active"))
    return manager, edge


def create(shim: Shim, **fields: Any) -> str:
    response = shim.http.post("/tasks", json=fields)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def start(shim: Shim, task_id: str) -> None:
    response = shim.http.post(f"/tasks/{task_id}/start")
    assert response.status_code == 200, response.text
    assert response.json() == {"started": True}


def test_a_task_for_an_external_proplet_runs_there(
    make_shim: Callable[..., Shim], broker: Broker, classify_b64: str
) -> None:
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    starts = Subscriber(broker.port, TOPIC_PREFIX + "control/manager/start")
    try:
        manager, edge = pair(make_shim, broker)
        listed = proplets(manager)[EDGE]
        assert listed["alive"] is True and listed["last_alive_at"]
        assert listed["metadata"]["wasm_runtime"]  # what the proplet announced
        task_id = create(
            manager,
            name="classify",
            file=classify_b64,
            cli_args=["-S", "nn"],
            inputs=CHELSEA,
            proplet_id=EDGE,
        )
        start(manager, task_id)
        assert manager.task(task_id)["state"] in (RUNNING, COMPLETED)
        done = manager.wait_state(task_id)
        assert done["state"] == COMPLETED, done
        assert "1. tiger cat (282)" in done["results"]
        assert done["proplet_id"] == EDGE
        # It ran on the external proplet: its own store has the run, under the same id.
        there = edge.task(task_id)
        assert there["state"] == COMPLETED and there["results"] == done["results"]
        # Propeller's start message, as the proplet got it (manager/service.go startPayload).
        message = next(p for _, p in starts.wait_for(1) if isinstance(p, dict))
        assert message["id"] == task_id and message["proplet_id"] == EDGE
        assert base64.b64decode(message["file"]) == base64.b64decode(classify_b64)
        assert (message["state"], message["broadcast"], message["daemon"]) == (0, False, False)
        # The result on the channel is the proplet's own.
        result = next(p for _, p in results.wait_for(1) if isinstance(p, dict))
        assert (result["task_id"], result["proplet_id"]) == (task_id, EDGE)
        assert proplets(manager)[EDGE]["task_count"] == 0

        # The proplet's task_metrics (sent after its result) are the task's metrics.
        def sampled() -> bool:
            page = manager.http.get(f"/tasks/{task_id}/metrics").json()
            return any(m.get("proplet_id") == EDGE for m in page["metrics"])

        wait_for("the proplet's task metrics", sampled)
        # Decoded as Propeller's ProcessMetrics, in the shape of the local backend's samples:
        # its seven fields (zeros filled), no `aggregated` when the proplet sent null.
        page = manager.http.get(f"/tasks/{task_id}/metrics").json()
        sample = next(m for m in page["metrics"] if m["proplet_id"] == EDGE)
        assert set(sample) == {"task_id", "proplet_id", "metrics", "timestamp"}, sample
        assert set(sample["metrics"]) == {
            "cpu_percent", "memory_bytes", "memory_percent", "disk_read_bytes",
            "disk_write_bytes", "uptime_seconds", "thread_count",
        }  # fmt: skip
        assert isinstance(sample["metrics"]["uptime_seconds"], int)
        own = manager.create("own", file=classify_b64, cli_args=["-S", "nn"], inputs=CHELSEA)
        assert manager.http.post(f"/tasks/{own}/start").status_code == 200
        assert manager.wait_state(own)["state"] == COMPLETED
        local = manager.http.get(f"/tasks/{own}/metrics").json()["metrics"][0]
        assert set(local["metrics"]) == set(sample["metrics"])
    finally:
        results.close()
        starts.close()


def test_stop_and_a_dead_proplet_end_dispatched_runs(
    make_shim: Callable[..., Shim], broker: Broker, spin_wasm: bytes
) -> None:
    manager, edge = pair(make_shim, broker)
    spin = base64.b64encode(spin_wasm).decode()
    stopped = create(manager, name="spin", file=spin, proplet_id=EDGE)
    start(manager, stopped)
    edge.wait_state(stopped, (RUNNING,))
    assert proplets(manager)[EDGE]["task_count"] == 1
    response = manager.http.post(f"/tasks/{stopped}/stop")
    assert response.status_code == 200, response.text
    task = manager.task(stopped)
    assert (task["state"], task["error"]) == (FAILED, STOPPED_ERROR)
    # control/manager/stop reached the proplet: its run ended too.
    assert edge.wait_state(stopped)["error"] == STOPPED_ERROR
    # A proplet that dies holding a run: the run fails once its heartbeats are 10 s old.
    orphan = create(manager, name="spin", file=spin, proplet_id=EDGE)
    start(manager, orphan)
    edge.wait_state(orphan, (RUNNING,))
    edge.stop(signal.SIGKILL)
    failed = manager.wait_state(orphan, timeout=90)
    assert failed["state"] == FAILED
    assert failed["error"].startswith(f"proplet {EDGE} stopped heartbeating (last alive at ")
    assert EDGE in proplets(manager, "inactive")
    # Starting a task on it again is refused, as Propeller's StartTask refuses a dead proplet.
    again = manager.http.post(f"/tasks/{orphan}/start")
    assert again.status_code == 409, again.text
    assert again.json() == {"error": f"specified proplet {EDGE} is not alive"}
