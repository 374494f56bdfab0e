"""The shim as a Propeller proplet: manager start/stop, announcements, the registry protocol."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from wasinn_operator.api.lifecycle import STOPPED_ERROR
from wasinn_operator.shim.taskfields import redact

from ..conftest import Broker, Subscriber
from .conftest import (
    CHELSEA,
    FAILED,
    RUNNING,
    SHIM_ID,
    TOPIC_PREFIX,
    Shim,
    mqtt_env,
)

pytestmark = pytest.mark.integration


class Manager:
    """Plays Propeller's manager (and its registry proxy) on the broker."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"mgr-{uuid.uuid4()}")
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10)

    def send(self, suffix: str, payload: dict[str, Any]) -> None:
        info = self.client.publish(TOPIC_PREFIX + suffix, json.dumps(payload), qos=2)
        info.wait_for_publish(10)
        assert info.is_published()

    def serve_registry(self, images: dict[str, bytes], chunk: int) -> None:
        """Answer `registry/proplet` requests with chunks, last first (order is not promised)."""

        def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
            name = json.loads(message.payload)["app_name"]
            data = images[name]
            total = math.ceil(len(data) / chunk)
            for index in reversed(range(total)):
                body = {
                    "app_name": name,
                    "chunk_idx": index,
                    "total_chunks": total,
                    "data": base64.b64encode(data[index * chunk : (index + 1) * chunk]).decode(),
                }
                self.client.publish(TOPIC_PREFIX + "registry/server", json.dumps(body), qos=1)

        self.client.on_message = on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(TOPIC_PREFIX + "registry/proplet", qos=1)
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def manager(broker: Broker) -> Iterator[Manager]:
    m = Manager(broker.port)
    yield m
    m.close()


def result_for(subscriber: Subscriber, task_id: str) -> dict[str, Any]:
    messages = subscriber.wait_for(1, timeout=120)
    while not any(isinstance(p, dict) and p.get("task_id") == task_id for _, p in messages):
        messages = subscriber.wait_for(len(messages) + 1, timeout=120)
    return next(p for _, p in messages if isinstance(p, dict) and p.get("task_id") == task_id)


def test_manager_start_runs_a_task_and_publishes(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager, classify_b64: str
) -> None:
    control = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/#")
    shim = make_shim(**mqtt_env(broker))
    try:
        announced = control.wait_for(2, timeout=30)
        bodies = [p for _, p in announced]
        assert {"proplet_id": SHIM_ID, "namespace": ""} in bodies
        assert {"status": "alive", "proplet_id": SHIM_ID, "namespace": ""} in bodies
        other, mine = str(uuid.uuid4()), str(uuid.uuid4())
        task = {
            "name": "classify",
            "state": 0,
            "image_url": "",
            "file": classify_b64,
            "inputs": CHELSEA,
            "cli_args": ["-S", "nn"],
            "daemon": False,
            "env": None,
        }
        # v-new addressing: for another proplet (ignored), then broadcast.
        manager.send(
            "control/manager/start",
            {**task, "id": other, "proplet_id": "someone-else", "broadcast": False},
        )
        manager.send("control/manager/start", {**task, "id": mine, "broadcast": True})
        payload = result_for(control, mine)
        assert payload["proplet_id"] == SHIM_ID
        assert payload["error"] is None
        assert "1. tiger cat (282)" in payload["results"]
        assert shim.task(mine)["state"] == 3
        assert shim.http.get(f"/tasks/{other}").status_code == 404
        # v-old: no addressing at all, every proplet runs it.
        old = str(uuid.uuid4())
        manager.send("control/manager/start", {**task, "id": old, "inputs": CHELSEA[-1:]})
        assert "tiger cat" in result_for(control, old)["results"]
    finally:
        control.close()


def test_manager_stop_ends_a_running_task(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager, spin_wasm: bytes
) -> None:
    shim = make_shim(**mqtt_env(broker))
    spin = str(uuid.uuid4())
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    try:
        manager.send(
            "control/manager/start",
            {"id": spin, "name": "spin", "file": base64.b64encode(spin_wasm).decode()},
        )
        shim.wait_state(spin, (RUNNING,), timeout=60)
        stop = {"id": spin, "proplet_id": SHIM_ID, "broadcast": False}
        manager.send("control/manager/stop", stop)
        # As Propeller's proplet reports a stopped task, and its manager records it: Failed.
        payload = result_for(results, spin)
    finally:
        results.close()
    assert (payload["error"], payload["results"]) == (STOPPED_ERROR, "")
    stopped = shim.wait_state(spin, (FAILED,), timeout=60)
    assert stopped["error"] == STOPPED_ERROR and "results" not in stopped
    # The run is gone: the proplet counts no running task, and the task can run again.
    deadline = time.monotonic() + 30
    while shim.http.get("/proplets").json()["proplets"][0]["task_count"] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert shim.http.get("/proplets").json()["proplets"][0]["task_count"] == 0
    assert shim.http.post(f"/tasks/{spin}/start").status_code == 200
    shim.wait_state(spin, (RUNNING,), timeout=60)
    assert shim.http.post(f"/tasks/{spin}/stop").status_code == 200


def test_image_url_through_the_registry_protocol(
    make_shim: Callable[..., Shim],
    broker: Broker,
    manager: Manager,
    guest_path: Callable[[str], Path],
) -> None:
    wasm = guest_path("classify-c").read_bytes()
    manager.serve_registry({"registry.example/classify:1": wasm}, chunk=100_000)
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    shim = make_shim(**mqtt_env(broker))
    try:
        task_id = str(uuid.uuid4())
        manager.send(
            "control/manager/start",
            {
                "id": task_id,
                "name": "from-registry",
                "image_url": "registry.example/classify:1",
                "inputs": CHELSEA,
            },
        )
        payload = result_for(results, task_id)
    finally:
        results.close()
    assert "tiger cat" in payload["results"], payload
    task = shim.task(task_id)
    assert task["image_url"] == "registry.example/classify:1"
    assert task["file"] == redact(base64.b64encode(wasm).decode())  # as Propeller answers it


def test_bad_start_message_fails_the_task_visibly(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager
) -> None:
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    shim = make_shim(**mqtt_env(broker))
    try:
        task_id = str(uuid.uuid4())
        manager.send(
            "control/manager/start",
            {"id": task_id, "name": "not-wasm", "file": base64.b64encode(b"hello").decode()},
        )
        payload = result_for(results, task_id)
    finally:
        results.close()
    assert "WebAssembly" in payload["error"]
    assert shim.task(task_id)["state"] == 4
