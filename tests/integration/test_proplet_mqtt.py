"""The proplet publishes its result to a real mosquitto in Propeller's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import Broker, Subscriber, free_port

pytestmark = pytest.mark.integration


def run_proplet(task: dict[str, object], models_dir: Path, tmp: Path, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={**os.environ, "WASINN_TASK": json.dumps(task), "WASINN_MODELS_DIR": str(models_dir),
             "WASINN_TERMINATION_LOG": str(tmp / "term"), "WASINN_CACHE_DIR": str(tmp / "c"),
             "PROPLET_DOMAIN_ID": "dom", "PROPLET_CHANNEL_ID": "chan",
             "PROPLET_CLIENT_ID": "proplet-1", "PROPLET_CLIENT_KEY": "secret",
             "PROPLET_INSTANCE_ID": "proplet-1", "PROPLET_MQTT_TIMEOUT": "2s", **env},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_result_is_published(
    broker: Broker, guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    subscriber = Subscriber(broker.port, "m/dom/c/chan/control/proplet/results")
    try:
        task = {"id": "3f1c8d2e-0000-4000-8000-000000000001",
                "wasm": {"path": str(guest_path("classify-c"))},
                "args": ["--model", "efficientnet-lite0",
                         "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]}  # fmt: skip
        run_proplet(
            task, models_dir, tmp_path, PROPLET_MQTT_ADDRESS=f"tcp://127.0.0.1:{broker.port}"
        )
        [(topic, payload)] = subscriber.wait_for(1)
    finally:
        subscriber.close()
    assert topic == "m/dom/c/chan/control/proplet/results"
    assert isinstance(payload, dict)
    assert set(payload) == {"task_id", "proplet_id", "results", "error"}
    assert payload["task_id"] == task["id"]
    assert payload["proplet_id"] == "proplet-1"
    assert payload["error"] is None
    assert "1. tiger cat (282)" in payload["results"]


def test_unreachable_broker_does_not_fail_the_task(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    task = {"wasm": {"path": str(guest_path("classify-c"))},
            "args": ["/models/efficientnet-lite0/tensors/coffee.rgb.f32"]}  # fmt: skip
    stderr = run_proplet(
        task, models_dir, tmp_path, PROPLET_MQTT_ADDRESS=f"tcp://127.0.0.1:{free_port()}"
    )
    assert "MQTT: publishing to 127.0.0.1" in stderr
    assert "failed after 5 attempts" in stderr
    assert json.loads((tmp_path / "term").read_text())["state"] == "Completed"


def test_propeller_names_and_entity_id(
    broker: Broker, guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    # Propeller's proplet settings (proplet/src/config.rs): the entity id is the proplet id.
    subscriber = Subscriber(broker.port, "m/ten/c/chan/control/proplet/results")
    entity = "7d1c8d2e-0000-4000-8000-0000000000e1"
    try:
        task = {"wasm": {"path": str(guest_path("classify-c"))},
                "args": ["/models/efficientnet-lite0/tensors/coffee.rgb.f32"]}  # fmt: skip
        run_proplet(
            task, models_dir, tmp_path, PROPLET_MQTT_ADDRESS=f"tcp://127.0.0.1:{broker.port}",
            PROPLET_DOMAIN_ID="", PROPLET_CLIENT_ID="", PROPLET_CLIENT_KEY="",
            PROPLET_INSTANCE_ID="", PROPLET_TENANT_ID="ten", PROPLET_ENTITY_ID=entity,
            PROPLET_API_KEY="secret",
        )  # fmt: skip
        [(_, payload)] = subscriber.wait_for(1)
    finally:
        subscriber.close()
    assert isinstance(payload, dict) and payload["proplet_id"] == entity
