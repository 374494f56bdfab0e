"""The shim's kubernetes backend on the real cluster: Propeller's seed walkthrough through the
REST API becomes a WasiNNTask the operator runs as a Pod; the result comes back over REST and
MQTT, and stop/delete act on the objects."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR, TaskPhase

from ..conftest import Broker, Subscriber, broker, free_port
from .conftest import REPO, Kubectl, wait_until
from .operator_fixtures import Operator, crd, operator_ns, proplet_image

pytestmark = pytest.mark.cluster
FAILED, RUNNING = TaskPhase.FAILED.state, TaskPhase.RUNNING.state
__all__ = ["broker", "crd", "operator_ns", "proplet_image"]  # fixtures used by name
SEED_INPUTS = ["/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]


@pytest.fixture
def shim(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], broker: Broker, tmp_path: Path
) -> Iterator[str]:
    namespace, _ = operator_ns
    node = json.loads(kubectl("get", "nodes", "-o", "json"))["items"][0]
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    port = free_port()
    log = (tmp_path / "shim.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wasinn_operator.cli",
            "shim",
            "--backend",
            "kubernetes",
            "--namespace",
            namespace,
            "--port",
            str(port),
            "--host",
            "0.0.0.0",
            "--public-url",
            f"http://{address}:{port}",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env={
            **os.environ,
            "KUBECONFIG": kubectl.kubeconfig,
            "PROPLET_MQTT_ADDRESS": f"tcp://127.0.0.1:{broker.port}",
            "PROPLET_DOMAIN_ID": "dom",
            "PROPLET_CHANNEL_ID": "chan",
            "PROPLET_INSTANCE_ID": "shim-k8s",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("the shim to answer", lambda: _healthy(url), timeout=60)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        print((tmp_path / "shim.log").read_text()[-3000:])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_seed_walkthrough_runs_as_a_wasinntask(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], shim: str, broker: Broker
) -> None:
    namespace, _ = operator_ns
    subscriber = Subscriber(broker.port, "m/dom/c/chan/control/proplet/results")
    try:
        created = httpx.post(f"{shim}/tasks", json={"name": "seed"}, timeout=30)
        assert created.status_code == 201
        task_id = created.json()["task"]["id"]
        assert created.json()["id"] == task_id
        wasm = (REPO / "build" / "guests" / "classify-c.wasm").read_bytes()
        updated = httpx.put(
            f"{shim}/tasks/{task_id}",
            timeout=30,
            json={
                "name": "seed",
                "file": base64.b64encode(wasm).decode(),
                "cli_args": ["--wasi-modules=experimental-wasi-nn"],
                "env": {"MODEL_DIR": "/models/efficientnet-lite0"},
                "inputs": SEED_INPUTS,
                "daemon": False,
            },
        )
        assert updated.status_code == 200, updated.text
        obj = kubectl.get("wnt", task_id, namespace)
        assert obj is not None and obj["spec"]["suspend"] is True
        assert httpx.post(f"{shim}/tasks/{task_id}/start", timeout=30).json() == {"started": True}
        final = wait_until(
            "state 3",
            lambda: (
                (t := httpx.get(f"{shim}/tasks/{task_id}", timeout=30).json())["state"] in (3, 4)
                and t
            ),
            timeout=300,
        )
        assert final["state"] == 3, final.get("error")
        assert "1. tiger cat (282)" in final["results"]
        [(_, message)] = subscriber.wait_for(1, timeout=60)
        assert isinstance(message, dict)
        assert message["task_id"] == task_id
        assert "tiger cat" in message["results"]
        listed = httpx.get(f"{shim}/tasks", timeout=30).json()
        assert [t["id"] for t in listed["tasks"]] == [task_id]
        proplets = httpx.get(f"{shim}/proplets", timeout=30).json()
        assert proplets["total"] >= 1 and proplets["proplets"][0]["alive"] is True
        assert httpx.delete(f"{shim}/tasks/{task_id}", timeout=30).status_code == 204
        wait_until(
            "the object to go", lambda: kubectl.get("wnt", task_id, namespace) is None, timeout=60
        )
    finally:
        subscriber.close()


def test_stop_interrupts_a_running_task(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], shim: str
) -> None:
    namespace, _ = operator_ns
    spin = (REPO / "tests" / "runtime" / "guests" / "spin.wat").read_text()
    import wasmtime  # noqa: PLC0415

    task_id = httpx.post(
        f"{shim}/tasks",
        timeout=30,
        json={
            "name": "spin",
            "file": base64.b64encode(wasmtime.wat2wasm(spin)).decode(),
        },
    ).json()["id"]
    httpx.post(f"{shim}/tasks/{task_id}/start", timeout=30)
    wait_until(
        "Running",
        lambda: httpx.get(f"{shim}/tasks/{task_id}", timeout=30).json()["state"] == RUNNING,
        timeout=180,
    )
    assert httpx.post(f"{shim}/tasks/{task_id}/stop", timeout=30).json() == {"stopped": True}
    # The stop is an intent (spec.suspend); the operator ends the run as Propeller does: Failed.
    task = wait_until(
        "the stop to end the run",
        lambda: (
            (t := httpx.get(f"{shim}/tasks/{task_id}", timeout=30).json())["state"] == FAILED and t
        ),
        timeout=90,
    )
    assert task["error"] == STOPPED_ERROR
    wait_until(
        "the Pod to go",
        lambda: (
            not json.loads(
                kubectl(
                    "get",
                    "pods",
                    "-n",
                    namespace,
                    "-l",
                    f"wasinn.dev/propeller-id={task_id}",
                    "-o",
                    "json",
                )
            )["items"]
        ),
        timeout=90,
    )
    time.sleep(3)
    assert httpx.get(f"{shim}/tasks/{task_id}", timeout=30).json()["state"] == FAILED
