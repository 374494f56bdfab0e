"""The shim as a Propeller proplet: manager start/stop, announcements, the registry protocol."""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import wasmtime
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
    ShimBackend,
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
        # proplet/src/service.rs publish_discovery / publish_liveliness: the namespace
        # defaults to "default"; the discovery carries the proplet's metadata.
        created = next(p for t, p in announced if t.endswith("/control/proplet/create"))
        assert isinstance(created, dict)
        assert created["proplet_id"] == SHIM_ID and created["namespace"] == "default"
        assert created["metadata"]["os"] and created["metadata"]["wasm_runtime"]
        assert {"status": "alive", "proplet_id": SHIM_ID, "namespace": "default"} in bodies
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
    # The manager keeps the "" of the stop's result (pkg/task `Results any`): so does the record.
    assert stopped["error"] == STOPPED_ERROR and stopped["results"] == ""
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


class _ModuleServer:
    """Serves one module over http on 127.0.0.1, as an `image_url` would point to."""

    def __init__(self, module: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = module if self.path == "/m.wasm" else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_http_image_url_is_fetched_directly(
    make_shim: Callable[..., Shim],
    broker: Broker,
    manager: Manager,
    guest_path: Callable[[str], Path],
) -> None:
    wasm = guest_path("classify-c").read_bytes()
    server = _ModuleServer(wasm)
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    shim = make_shim(**mqtt_env(broker), WASINN_SHIM_FETCH_PRIVATE="1")
    try:
        good, missing = str(uuid.uuid4()), str(uuid.uuid4())
        task = {"name": "classify", "inputs": CHELSEA}
        manager.send(
            "control/manager/start", {**task, "id": good, "image_url": f"{server.url}/m.wasm"}
        )
        manager.send(
            "control/manager/start", {**task, "id": missing, "image_url": f"{server.url}/no"}
        )
        assert "tiger cat" in result_for(results, good)["results"]
        failed = result_for(results, missing)
    finally:
        results.close()
        server.close()
    # The stored module is the fetched one; answers carry it redacted, as Propeller's do.
    assert shim.task(good)["file"] == redact(base64.b64encode(wasm).decode())
    assert failed["results"] == ""  # a string, as Propeller's Go and Rust types want
    assert "fetching image_url: GET" in failed["error"] and "HTTP 404" in failed["error"]


def test_http_image_url_on_an_internal_address_is_refused(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager
) -> None:
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    make_shim(**mqtt_env(broker))
    try:
        task_id = str(uuid.uuid4())
        manager.send(
            "control/manager/start",
            {"id": task_id, "name": "x", "image_url": "http://127.0.0.1:9/m.wasm"},
        )
        payload = result_for(results, task_id)
    finally:
        results.close()
    assert "an internal address: refused" in payload["error"]


def test_the_task_name_is_the_export_called(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager
) -> None:
    # Propeller's runtimes call the export named after the task, with the inputs as its
    # arguments (proplet/src/runtime/wasmtime_runtime.rs), and fall back to _start.
    module = wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " (i32.add (local.get 0) (local.get 1)))"
        ' (func (export "_start")))'
    )
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    make_shim(**mqtt_env(broker))
    try:
        task_id = str(uuid.uuid4())
        manager.send(
            "control/manager/start",
            {"id": task_id, "name": "add", "inputs": ["2", "40"],
             "file": base64.b64encode(module).decode()},
        )  # fmt: skip
        payload = result_for(results, task_id)
    finally:
        results.close()
    assert payload["error"] is None, payload
    assert payload["results"] == "42\n"


def test_propeller_configuration_names(
    make_shim: Callable[..., Shim],
    broker: Broker,
    manager: Manager,
    classify_b64: str,
    backend: ShimBackend,
) -> None:
    # Propeller's proplet settings (proplet/src/config.rs); the proplet id is the entity id.
    entity = str(uuid.uuid4())
    env = {
        "PROPLET_MQTT_ADDRESS": f"tcp://127.0.0.1:{broker.port}",
        "PROPLET_TENANT_ID": "dom", "PROPLET_CHANNEL_ID": "chan",
        "PROPLET_ENTITY_ID": entity, "PROPLET_API_KEY": "secret",
        "PROPLET_MANAGER_K8S_NAMESPACE": "edge", "PROPLET_METRICS_INTERVAL": "1",
    }  # fmt: skip
    control = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/#")
    shim = make_shim(**env)
    try:
        task_id = str(uuid.uuid4())
        manager.send(
            "control/manager/start",
            {"id": task_id, "name": "classify", "inputs": CHELSEA, "file": classify_b64,
             "proplet_id": entity},
        )  # fmt: skip
        payload = result_for(control, task_id)
        topics = {t.removeprefix(TOPIC_PREFIX) for t, _ in control.wait_for(1)}
        while not {"control/proplet/metrics", "control/proplet/task_metrics"} <= topics:
            messages = control.wait_for(len(control.messages) + 1, timeout=60)
            topics = {t.removeprefix(TOPIC_PREFIX) for t, _ in messages}
        by_topic = {t.removeprefix(TOPIC_PREFIX): p for t, p in control.messages}
    finally:
        control.close()
    assert payload["proplet_id"] == entity and "tiger cat" in payload["results"]
    assert by_topic["control/proplet/create"]["proplet_id"] == entity  # type: ignore[index]
    assert by_topic["control/proplet/alive"]["namespace"] == "edge"  # type: ignore[index]
    metrics = by_topic["control/proplet/metrics"]
    assert isinstance(metrics, dict) and metrics["memory_metrics"]["rss_bytes"] > 0
    task_metrics = by_topic["control/proplet/task_metrics"]
    assert isinstance(task_metrics, dict) and task_metrics["task_id"] == task_id
    if backend.name == "local":  # REST lists the shim itself as the proplet (kubernetes: nodes)
        assert [p["id"] for p in shim.http.get("/proplets").json()["proplets"]] == [entity]


def test_half_configured_mqtt_fails_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPLET_")}
    env |= {"PROPLET_TENANT_ID": "dom", "PROPLET_ENTITY_ID": str(uuid.uuid4())}
    done = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "shim", "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "missing channel_id/PROPLET_CHANNEL_ID, api_key/PROPLET_API_KEY" in done.stderr


def test_latent_task_answers_invocations(
    make_shim: Callable[..., Shim], broker: Broker, manager: Manager
) -> None:
    # proplet/src/service.rs handle_start_command (latent: stored, not run) and
    # handle_invoke_command (InvokeResultMessage on control/proplet/invoke_results).
    module = wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " (i32.add (local.get 0) (local.get 1))))"
    )
    answers = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/invoke_results")
    shim = make_shim(**mqtt_env(broker))
    task_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        manager.send(
            "control/manager/start",
            {"id": task_id, "name": "add", "inputs": ["1", "2"], "latent": True,
             "file": base64.b64encode(module).decode(), "proplet_id": SHIM_ID},
        )  # fmt: skip
        shim.wait_state(task_id, (0,), timeout=60)  # stored, not run
        invoke = {"proplet_id": SHIM_ID, "broadcast": False}
        manager.send(
            "control/manager/invoke",
            {**invoke, "id": task_id, "invocation_id": "inv-1", "inputs": ["2", "40"]},
        )
        manager.send("control/manager/invoke", {**invoke, "id": other, "invocation_id": "inv-2"})
        manager.send("control/manager/invoke", {**invoke, "id": task_id, "invocation_id": "inv-3"})
        messages = answers.wait_for(3, timeout=120)
    finally:
        answers.close()
    by_id = {p["invocation_id"]: p for _, p in messages if isinstance(p, dict)}
    assert by_id["inv-1"] == {
        "task_id": task_id, "invocation_id": "inv-1", "proplet_id": SHIM_ID,
        "results": "42\n", "error": None,
    }  # fmt: skip
    assert by_id["inv-2"]["results"] == ""
    assert by_id["inv-2"]["error"] == (
        f"task {other} has not been precompiled; deploy it as a latent task first"
    )
    assert by_id["inv-3"]["results"] == "3\n"  # no inputs: the task's own
    assert shim.task(task_id)["state"] == 0  # invocations do not run the task itself
