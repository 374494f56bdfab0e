"""Shared fixtures: where the models and built guests are, and a runtime per precision."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from wasinn_operator.models import default_models_dir

ROOT = Path(__file__).resolve().parent.parent


def missing(reason: str) -> None:
    """Skip for a missing tool; under CI (which installs every tool) fail instead."""
    if os.environ.get("CI") and "WASINN_ALLOW_SKIPS" not in os.environ:
        pytest.fail(f"CI installs every tool, yet: {reason}")
    pytest.skip(reason)


def pinned_version(name: str) -> str:
    """A version pinned in hack/versions.env (`K8S_VERSION`, `WASMTIME_CLI_VERSION`, ...)."""
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise KeyError(f"{name} is not pinned in hack/versions.env")


def models_dir_path() -> Path:
    """`$WASINN_MODELS_DIR`, else `../shared/models` beside the repo when it exists, else the
    models `make models` (`wasinn models fetch --all`) fetches into the cache."""
    explicit = os.environ.get("WASINN_MODELS_DIR")
    shared = ROOT.parent / "shared" / "models"
    path = Path(explicit) if explicit else shared if shared.is_dir() else default_models_dir()
    return path.resolve()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = models_dir_path()
    if not (path / "efficientnet-lite0" / "model.xml").is_file():
        missing(f"models directory {path} lacks efficientnet-lite0 (run `make models`)")
    return path


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    return Path(os.environ.get("WASINN_GUEST_DIR") or ROOT / "build" / "guests").resolve()


@pytest.fixture(scope="session")
def guest_path(guest_dir: Path) -> Iterator[object]:
    def find(name: str) -> Path:
        path = guest_dir / f"{name}.wasm"
        if not path.is_file():
            tool = "clang + wasi-libc" if name.endswith("-c") else "Debian rustc + wasm32 std"
            if name.endswith("-component"):
                tool += " + wasm-tools 1.261.0 (built by hack/build-guests.sh with rustup's cargo)"
            missing(f"guest {path} is not built ({tool}; run `make guests`)")
        return path

    yield find


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A real mosquitto on 127.0.0.1, started and stopped by the test (by PID)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            missing("mosquitto is not installed (Debian package mosquitto)")
        self.binary = binary
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """Collects the JSON messages published on a topic filter."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        ready = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=2)
        self._client.on_subscribe = lambda *_: ready.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscription not acknowledged")

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} message(s), got {self.messages}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def loop_model(directory: Path) -> Path:
    """`directory`/model.xml (+ .bin): an OpenVINO IR whose f32[1,4] input `x` comes out with
    x[0,0] added to every element, by a Loop of x[0,0] iterations adding 1 each. Its inference
    takes as long as its input says, and OpenVINO cannot cancel a Loop part way."""
    x = ops.parameter([1, 4], ov.Type.f32, name="x")
    trip = ops.convert(ops.reduce_max(x, ops.constant(np.array([0, 1])), False), "i64")
    body_x, body_i = ops.parameter([1, 4], ov.Type.f32), ops.parameter([], ov.Type.i64)
    plus = ops.add(body_x, ops.constant(np.ones((1, 4), np.float32)))
    body = ov.Model([ops.constant(np.array(True)), plus], [body_i, body_x], "body")
    loop = ops.loop(trip, ops.constant(np.array(True)))
    loop.set_function(body)
    loop.set_special_body_ports([0, 0])
    loop.set_merged_input(body_x, x.output(0), plus.output(0))
    model = ov.Model([loop.get_iter_value(plus.output(0), -1)], [x], "loop")
    directory.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, directory / "model.xml", compress_to_fp16=False)
    return directory / "model.xml"
