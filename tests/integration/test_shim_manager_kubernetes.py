"""The shim as a Propeller manager on the kubernetes backend: one API drives the cluster and
external proplets (issue 14 item 10).

A real API server and etcd, the real operator, a real mosquitto; the external proplet is a
second shim (local backend) in proplet mode on the manager's channel. The WasiNNTask stays the
one record of a dispatched run: the shim writes the dispatch with the run request and the
proplet's result as a report (annotations, api/external.py), and the operator, the only writer
of status, records both without making a Pod.
"""

from __future__ import annotations

import base64
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wasinn_operator.api.external import DISPATCH_ANNOTATION, REPORT_ANNOTATION
from wasinn_operator.api.lifecycle import STOPPED_ERROR

from ..conftest import Broker
from .conftest import (
    CHELSEA,
    FAILED,
    RUNNING,
    SHIM_BACKENDS,
    KubeWorld,
    Shim,
    ShimBackend,
    mqtt_env,
)
from .test_shim_manager import COMPLETED, create, proplets, start, wait_for

pytestmark = pytest.mark.integration
EDGE = str(uuid.uuid4())


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    """The manager keeps its tasks as WasiNNTasks."""
    return SHIM_BACKENDS["kubernetes"](request)


@pytest.fixture
def edge(
    request: pytest.FixtureRequest,
    broker: Broker,
    models_dir: Path,
    task_cache: Path,
    tmp_path: Path,
) -> Iterator[Shim]:
    """The external proplet: a shim on the local backend, in proplet mode on the channel."""
    workdir = tmp_path / "edge"
    workdir.mkdir()
    env = {**mqtt_env(broker), "PROPLET_INSTANCE_ID": EDGE}
    shim = Shim(SHIM_BACKENDS["local"](request), workdir, models_dir, task_cache, [], env)
    shim.start()
    yield shim
    shim.stop(signal.SIGKILL)
    shim.http.close()


def manager_of(make_shim: Callable[..., Shim], broker: Broker) -> Shim:
    manager = make_shim(**mqtt_env(broker))
    wait_for("the manager lists the external proplet", lambda: EDGE in proplets(manager, "active"))
    return manager


def pods_of(world: KubeWorld, task_id: str) -> list[object]:
    uid = world.cluster.get("wasinntasks", task_id)["metadata"]["uid"]
    return list(world.cluster.list("pods", label_selector=f"wasinn.dev/task-uid={uid}"))


def test_tasks_for_external_proplets_run_there_recorded_by_the_operator(
    make_shim: Callable[..., Shim],
    broker: Broker,
    edge: Shim,
    kube_world: KubeWorld,
    classify_b64: str,
) -> None:
    manager = manager_of(make_shim, broker)
    classify = {"file": classify_b64, "cli_args": ["-S", "nn"], "inputs": CHELSEA}
    task_id = create(manager, name="classify", proplet_id=EDGE, **classify)
    start(manager, task_id)
    done = manager.wait_state(task_id)
    assert done["state"] == COMPLETED, done
    assert "1. tiger cat (282)" in done["results"]
    assert done["proplet_id"] == EDGE
    assert edge.task(task_id)["results"] == done["results"]  # it ran there
    # The WasiNNTask is the record: the operator wrote status from the shim's report, and
    # made no Pod for the run.
    obj = kube_world.cluster.get("wasinntasks", task_id)
    status, notes = obj["status"], obj["metadata"]["annotations"]
    assert (status["phase"], status["nodeName"]) == ("Completed", EDGE)
    assert status["results"] == done["results"]
    assert json.loads(notes[DISPATCH_ANNOTATION]) == {
        "run": 1,
        "proplets": [EDGE],
        "broadcast": False,
    }
    assert json.loads(notes[REPORT_ANNOTATION])["proplet"] == EDGE
    assert pods_of(kube_world, task_id) == []
    assert proplets(manager)[EDGE]["task_count"] == 0
    # A broadcast goes to every alive proplet; the first result ends it.
    spread = create(manager, name="classify", broadcast=True, **classify)
    start(manager, spread)
    assert manager.wait_state(spread)["state"] == COMPLETED
    assert edge.task(spread)["state"] == COMPLETED
    assert pods_of(kube_world, spread) == []
    # A task addressed to no proplet still runs in the cluster (a Pod on the OpenVINO node).
    own = create(manager, name="classify", **classify)
    start(manager, own)
    assert manager.wait_state(own)["state"] == COMPLETED
    assert len(pods_of(kube_world, own)) == 1


def test_stop_reaches_the_proplet_also_after_a_shim_restart(
    make_shim: Callable[..., Shim],
    broker: Broker,
    edge: Shim,
    kube_world: KubeWorld,
    spin_wasm: bytes,
) -> None:
    manager = manager_of(make_shim, broker)
    spin = base64.b64encode(spin_wasm).decode()
    stopped = create(manager, name="spin", file=spin, proplet_id=EDGE)
    start(manager, stopped)
    edge.wait_state(stopped, (RUNNING,))
    assert manager.wait_state(stopped, (RUNNING,))["proplet_id"] == EDGE
    response = manager.http.post(f"/tasks/{stopped}/stop")
    assert response.status_code == 200, response.text
    ended = manager.wait_state(stopped)
    assert (ended["state"], ended["error"]) == (FAILED, STOPPED_ERROR)
    assert edge.wait_state(stopped)["error"] == STOPPED_ERROR  # control/manager/stop
    # A restarted shim takes the dispatched runs up again from the WasiNNTasks: a stop after
    # the restart still reaches the proplet (and a result would still be recorded).
    held = create(manager, name="spin", file=spin, proplet_id=EDGE)
    start(manager, held)
    edge.wait_state(held, (RUNNING,))
    manager.stop(signal.SIGKILL)
    manager.start()
    assert "took up 1 dispatched run(s) again" in manager.log.read_text()
    assert manager.task(held)["state"] == RUNNING
    response = manager.http.post(f"/tasks/{held}/stop")
    assert response.status_code == 200, response.text
    assert manager.wait_state(held)["error"] == STOPPED_ERROR
    assert edge.wait_state(held)["error"] == STOPPED_ERROR
