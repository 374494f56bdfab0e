"""The task policy at the shim: a refused REST task gets 400 and nothing of it is stored, a
refused manager start is published as failed and runs nothing, and the service's own settings
widen what tasks may ask for."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from ..conftest import ROOT, Broker, Subscriber
from .conftest import CHELSEA, TOPIC_PREFIX, Shim, ShimBackend, mqtt_env
from .test_shim_mqtt import Manager, result_for

pytestmark = pytest.mark.integration
NO_DIRS = "host directories are not allowed (allowed: none)"
RESERVED = "reserved name (names starting LD_, WASINN_, PROPLET_, WASMTIME_, RUST_, OV_"


def guest(name: str) -> bytes:
    return wasmtime.wat2wasm((ROOT / "tests" / "runtime" / "guests" / f"{name}.wat").read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refused(response: Any, message: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.json() == {"error": message}


def test_refused_tasks_get_400_and_nothing_is_stored(
    make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    shim = make_shim()
    http = shim.http
    keep = shim.create("keep-me", file=classify_b64, cli_args=["-S", "nn"], env={"A": "1"})
    before, listing = shim.task(keep), shim.tasks()
    other = guest("hello")  # a module only a refused update carries
    cases = [
        (
            http.post("/tasks", json={"name": "escape", "cli_args": ["--dir", "/::/host"]}),
            f"cli_args: --dir /::/host: {NO_DIRS}",
        ),
        (
            http.post("/tasks", json={"name": "env", "file": classify_b64,
                                      "cli_args": ["-S", "inherit-env"]}),
            "cli_args: -S inherit-env: the host environment is not available to tasks",
        ),
        (
            http.post("/tasks", json={"name": "long", "cli_args": ["-W", "timeout=10h"]}),
            "cli_args: -W timeout=10h: above the service maximum of 3600 s",
        ),
        (
            http.put(f"/tasks/{keep}", json={"cli_args": ["--dir=/models"], "file": b64(other)}),
            "cli_args: --dir /models: the guest path /models is at or under /models, the "
            "service's read-only models mount (always present); tasks cannot mount there",
        ),
        (
            http.put(f"/tasks/{keep}", json={"name": "renamed", "cli_args": ["-S", "tcp"]}),
            "cli_args: -S tcp: network access is not available to tasks",
        ),
        (
            http.put(f"/tasks/{keep}", json={"cli_args": ["--cache-dir", "/tmp/evil"]}),
            "cli_args: --cache-dir /tmp/evil: wasinn options are set by the service, not by "
            "tasks",
        ),
    ]  # fmt: skip
    for response, message in cases:
        refused(response, message)
    env = http.put(f"/tasks/{keep}", json={"env": {"LD_PRELOAD": "/tmp/x.so"}})
    assert env.status_code == 400 and env.json()["error"].startswith(f"env: LD_PRELOAD: {RESERVED}")
    assert shim.task(keep) == before  # every refused update left the stored task as it was
    assert shim.tasks() == listing  # and no refused create stored anything
    digest = "sha256:" + hashlib.sha256(other).hexdigest()
    assert http.get(f"/artifacts/{digest}").status_code == 404  # nor its module


def test_service_settings_widen_what_tasks_may_ask(
    make_shim: Callable[..., Shim], backend: ShimBackend, tmp_path: Path
) -> None:
    allowed = tmp_path.resolve() / "shared"
    (allowed / "data").mkdir(parents=True)
    (allowed / "data" / "secret.txt").write_text("shared data\n")
    shim = make_shim("--allow-host-dir", str(allowed), "--max-timeout", "2h")
    http = shim.http
    refused(
        http.post("/tasks", json={"name": "etc", "cli_args": ["--dir", "/etc::/etc"]}),
        f"cli_args: --dir /etc::/etc: host directory /etc is not allowed (allowed: {allowed})",
    )
    cli_args = ["--dir", f"{allowed}/data::/host", "-W", "timeout=90m"]
    task_id = shim.create("reader", file=b64(guest("read_host")), cli_args=cli_args)
    assert http.post(f"/tasks/{task_id}/start").status_code == 200
    task = shim.wait_state(task_id)
    if backend.name == "local":
        # The shim's workers run under the shim's policy (WASINN_POLICY): the read succeeds.
        assert (task["state"], task["results"]) == (3, "shared data\n"), task
    else:
        # On kubernetes the operator judges the WasiNNTask by its own policy (here the strict
        # default): the task fails before any Pod.
        assert task["state"] == 4, task
        assert task["error"] == f"spec.cliArgs: --dir {allowed}/data::/host: {NO_DIRS}"


def test_start_refuses_a_task_stored_under_a_wider_policy(
    make_shim: Callable[..., Shim], tmp_path: Path
) -> None:
    allowed = tmp_path.resolve() / "shared"
    allowed.mkdir()
    shim = make_shim("--allow-host-dir", str(allowed))
    cli_args = ["--dir", f"{allowed}::/host"]
    task_id = shim.create("reader", file=b64(guest("read_host")), cli_args=cli_args)
    shim.stop()
    shim.command = shim.command[: shim.command.index("--allow-host-dir")]
    shim.start()
    refused(
        shim.http.post(f"/tasks/{task_id}/start"),
        f"cli_args: --dir {allowed}::/host: {NO_DIRS}",
    )
    assert shim.task(task_id)["state"] == 0


def test_a_refused_manager_start_is_published_failed_and_runs_nothing(
    make_shim: Callable[..., Shim],
    broker: Broker,
    guest_path: Callable[[str], Path],
) -> None:
    manager = Manager(broker.port)
    results = Subscriber(broker.port, TOPIC_PREFIX + "control/proplet/results")
    requests = Subscriber(broker.port, TOPIC_PREFIX + "registry/proplet")
    try:
        manager.serve_registry({"reg.example/classify:1": guest_path("classify-c").read_bytes()},
                               chunk=100_000)  # fmt: skip
        shim = make_shim(**mqtt_env(broker))
        escape, pulled, fine = (str(uuid.uuid4()) for _ in range(3))
        start = {"name": "escape", "cli_args": ["--dir", "/::/host"], "env": {"A": "1"},
                 "inputs": ["/host/etc/shadow"]}  # fmt: skip
        manager.send("control/manager/start", {**start, "id": escape, "file": b64(guest("hello"))})
        payload = result_for(results, escape)
        message = f"cli_args: --dir /::/host: {NO_DIRS}"
        # results is a string ("" on failure), as Propeller's Go and Rust types want
        assert (payload["error"], payload["results"]) == (message, "")
        task = shim.task(escape)
        assert (task["state"], task["error"]) == (4, message)
        # Nothing runnable was kept: no module, no flags, no env, no inputs.
        assert task["cli_args"] is None and not {"file", "env", "inputs"} & set(task)
        start_again = shim.http.post(f"/tasks/{escape}/start")
        assert start_again.status_code == 409, start_again.text
        # A refused start with an image_url is not fetched through the registry either.
        manager.send("control/manager/start",
                     {**start, "id": pulled, "image_url": "reg.example/classify:1"})  # fmt: skip
        assert result_for(results, pulled)["error"] == message
        manager.send("control/manager/start",
                     {"id": fine, "name": "fine", "image_url": "reg.example/classify:1",
                      "inputs": CHELSEA})  # fmt: skip
        assert "tiger cat" in result_for(results, fine)["results"]
        assert len(requests.messages) == 1  # the allowed task's fetch only
    finally:
        requests.close()
        results.close()
        manager.close()
