"""Fixtures for the integration tests: a real Kubernetes control plane, and the shim under test."""

from __future__ import annotations

import base64
import getpass
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import wasmtime
from paho.mqtt.enums import CallbackAPIVersion

from wasinn_operator.api.lifecycle import TaskPhase

from ..apiserver import ControlPlane, MissingError, find_binaries
from ..conftest import ROOT, Broker, free_port, missing
from .kubeapi import Cluster
from .kubelet import Kubelet

# ==== Kubernetes: etcd + kube-apiserver + kube-controller-manager, no nodes (tests/apiserver.py)

APIWARNINGS = Path(__file__).parent / "apiwarnings"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane for the session (tests isolate themselves in namespaces)."""
    try:
        plane = ControlPlane(tmp_path_factory.mktemp("apiserver"), find_binaries())
    except MissingError as e:
        missing(str(e))
    plane.start()
    print(f"\n[apiserver] control plane up in {plane.started_in:.1f}s at {plane.url}")
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Cluster]:
    """Admin access in a fresh namespace; KUBECONFIG set. Afterwards the test's Nodes, Pods
    and namespace are deleted, and the test fails if the API server warned a process the test
    started about one of its writes (e.g. a field the CRD's schema does not have, which the
    server drops: see tests/integration/apiwarnings)."""
    cluster = Cluster(control_plane.kubeconfig, f"t-{uuid.uuid4().hex[:10]}")
    cluster.create("namespaces", {"metadata": {"name": cluster.namespace}})
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    warnings = tmp_path / "api-warnings.log"
    monkeypatch.setenv("WASINN_API_WARNINGS", str(warnings))
    path = [str(APIWARNINGS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    try:
        yield cluster
    finally:
        cluster.cleanup()
    if warnings.is_file() and warnings.read_text():
        pytest.fail(f"the API server warned about writes:\n{warnings.read_text()}")


# ==== wasinn shim: a real `wasinn shim` process per backend, a real mosquitto ====
# Every shim test (test_shim_*.py) is written once against the `backend` fixture. A backend is a
# `ShimBackend` made by a factory in SHIM_BACKENDS, saying how to start the shim on it and
# bringing up what it needs (for kubernetes: a namespace on the control plane, the operator, a
# kubelet stand-in).
# Where the backends promise different things (what a shim restart does to a running task),
# the test says so and checks each promise. tests/cluster/test_shim_suite.py runs these same
# tests with the kubernetes backend on the real local cluster.

CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
TOPIC_PREFIX = "m/dom/c/chan/"
SHIM_ID = "shim-proplet-1"
FINISHED = tuple(p.state for p in TaskPhase if p.finished)
FAILED, RUNNING = TaskPhase.FAILED.state, TaskPhase.RUNNING.state
NODE = "openvino-node-1"
OPENVINO_LABELS = {"wasinn.dev/openvino": "true"}


@dataclass
class ShimBackend:
    """How to run the shim on one backend: its extra options (given the shim's workdir and
    URL) and environment; `node` is the proplet REST names for a task's run (the OpenVINO
    node, on kubernetes; the shim itself, locally)."""

    name: str
    args: Callable[[Path, str], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    node: str = SHIM_ID


def _local_backend(request: pytest.FixtureRequest) -> ShimBackend:
    def args(workdir: Path, _url: str) -> list[str]:
        return ["--backend", "local", "--db", str(workdir / "tasks.db"), "--workers", "2"]

    return ShimBackend("local", args)


def _kubernetes_backend(request: pytest.FixtureRequest) -> ShimBackend:
    """WasiNNTasks on the real API server, run by the real operator and the kubelet stand-in;
    Pods fetch modules from the shim's /artifacts at its own URL (--public-url)."""
    world: KubeWorld = request.getfixturevalue("kube_world")
    namespace = world.cluster.namespace

    def args(_workdir: Path, url: str) -> list[str]:
        return ["--backend", "kubernetes", "--namespace", namespace, "--public-url", url]

    return ShimBackend("kubernetes", args, {"KUBECONFIG": str(world.cluster.kubeconfig)}, node=NODE)


SHIM_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], ShimBackend]] = {
    "local": _local_backend,
    "kubernetes": _kubernetes_backend,
}


@pytest.fixture(params=sorted(SHIM_BACKENDS))
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    return SHIM_BACKENDS[str(request.param)](request)


def _wait_healthy(
    process: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout: float
) -> None:
    """Wait until `url` answers 200; fail with the log if the process exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited:\n{log.read_text()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} did not answer {url}:\n{log.read_text()}")


def _stop_process(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send `sig`, then kill after 30 s."""
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class OperatorProcess:
    """`wasinn operator` as a process of its own, watching one namespace."""

    def __init__(
        self, workdir: Path, kubeconfig: Path, namespace: str, env: dict[str, str] | None = None
    ) -> None:
        self.health_port = free_port()
        self.log = workdir / "operator.log"
        self.command = [
            sys.executable, "-m", "wasinn_operator.cli", "operator", "--namespace", namespace,
            "--health-port", str(self.health_port), "--metrics-port", "0",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "WASINN_PROPLET_IMAGE": "localhost/wasinn-proplet:dev",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        _wait_healthy(self.process, url, self.log, "the operator", timeout=120)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, signal.SIGTERM)
            self.exit_codes.append(self.process.returncode)
        self.process = None


@dataclass
class KubeWorld:
    """The kubernetes backend's surroundings: API, operator, and one OpenVINO node."""

    cluster: Cluster
    operator: OperatorProcess
    kubelet: Kubelet


@pytest.fixture
def kube_world(
    kube: Cluster, control_plane: ControlPlane, models_dir: Path, tmp_path: Path
) -> Iterator[KubeWorld]:
    """A Ready Node labelled OpenVINO-capable with the kubelet stand-in running its Pods, the
    `models` claim (the host's models directory behind it), and the real operator."""
    kube.add_pvc("models")
    pods = tmp_path / "kubelet"
    pods.mkdir()
    kubelet = Kubelet(kube, NODE, OPENVINO_LABELS, {"models": models_dir}, pods,
                      control_plane.serving)  # fmt: skip
    operator = OperatorProcess(tmp_path, kube.kubeconfig, kube.namespace)
    kubelet.start()
    try:
        operator.start()
        yield KubeWorld(kube, operator, kubelet)
    finally:
        operator.stop()
        kubelet.stop()
    assert not kubelet.errors, f"the kubelet stand-in failed: {kubelet.errors!r}"


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled-module and model cache for every shim of the session."""
    return tmp_path_factory.mktemp("shim-cache")


def mqtt_env(broker: Broker) -> dict[str, str]:
    """PROPLET_* settings pointing the shim at the test broker."""
    return {
        "PROPLET_MQTT_ADDRESS": f"tcp://127.0.0.1:{broker.port}",
        "PROPLET_DOMAIN_ID": "dom",
        "PROPLET_CHANNEL_ID": "chan",
        "PROPLET_INSTANCE_ID": SHIM_ID,
        "PROPLET_LIVELINESS_INTERVAL": "1s",
        "PROPLET_MQTT_TIMEOUT": "5s",
    }


class Shim:
    """A `wasinn shim` process on a free port; restartable on the same state."""

    def __init__(
        self,
        backend: ShimBackend,
        workdir: Path,
        models_dir: Path,
        cache: Path,
        extra: list[str],
        env: dict[str, str],
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "shim.log"
        self.command = [
            sys.executable, "-m", "wasinn_operator.cli", "shim", "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(workdir / "data"),
            "--models-dir", str(models_dir), *backend.args(workdir, self.url), *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "WASINN_CACHE_DIR": str(cache), **backend.env, **env}
        for name in [k for k in self.env if k.startswith("PROPLET_") and k not in env]:
            del self.env[name]  # only the test's broker, never one from the environment
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        _wait_healthy(self.process, f"{self.url}/health", self.log, "the shim", timeout=90)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop_process(self.process, sig)
        self.process = None

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_state(
        self, task_id: str, states: tuple[int, ...] = FINISHED, timeout: float = 180
    ) -> dict[str, Any]:
        # A task started over MQTT appears only once the shim has the message: 404 = not yet.
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            response = self.http.get(f"/tasks/{task_id}")
            if response.status_code == 200:
                last = response.json()
                if last["state"] in states:
                    return dict(last)
            elif response.status_code != 404:
                raise AssertionError(
                    f"GET /tasks/{task_id}: {response.status_code} {response.text}"
                )
            time.sleep(0.2)
        raise AssertionError(
            f"task {task_id} never reached {states}: {last}\n{self.log.read_text()[-3000:]}"
        )

    def create(self, name: str, **fields: Any) -> str:
        response = self.http.post("/tasks", json={"name": name, **fields})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, newest first (pages of at most 100, as in Propeller)."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.http.get("/tasks", params={"offset": len(found), "limit": 100}).json()
            found += page["tasks"]
            if not page["tasks"] or len(found) >= page["total"]:
                return found


@pytest.fixture
def make_shim(
    backend: ShimBackend, models_dir: Path, task_cache: Path, tmp_path: Path
) -> Iterator[Callable[..., Shim]]:
    """Start a shim: `make_shim(*extra_args, **env)`; killed at teardown."""
    shims: list[Shim] = []

    def make(*extra: str, **env: str) -> Shim:
        workdir = tmp_path / f"shim{len(shims)}"
        workdir.mkdir()
        shim = Shim(backend, workdir, models_dir, task_cache, list(extra), env)
        shims.append(shim)
        shim.start()
        return shim

    yield make
    for shim in shims:
        shim.stop(signal.SIGKILL)
        shim.http.close()


@pytest.fixture
def classify_b64(guest_path: Callable[[str], Path]) -> str:
    return base64.b64encode(guest_path("classify-c").read_bytes()).decode()


@pytest.fixture(scope="session")
def spin_wasm() -> bytes:
    """A guest that never ends (only stop, or a timeout, ends it)."""
    return wasmtime.wat2wasm((ROOT / "tests" / "runtime" / "guests" / "spin.wat").read_text())


def flood_wasm(chunks: int) -> bytes:
    """A guest that prints `chunks` times 64 KiB of "x" (16 = 1 MiB, the results limit)."""
    return wasmtime.wat2wasm(f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {chunks}))))))
""")


def complain_wasm(message: str, code: int) -> bytes:
    """A guest that writes `message` and a newline to stderr, then exits with `code`."""
    text = (message + "\n").encode()
    escaped = "".join(f"\\{b:02x}" for b in text)
    return wasmtime.wat2wasm(f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{escaped}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len(text)}))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const {code}))))
""")


class PersistentBroker(Broker):
    """A mosquitto that keeps sessions and queued messages across its own restarts."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.store = workdir / "mosquitto-db"
        self.store.mkdir()
        # Run as root, mosquitto drops to user `mosquitto` unless told to stay, and then cannot
        # save its database under pytest's 0700 directories: sessions would silently vanish.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            f"persistence true\npersistence_location {self.store}/\n"
        )

    def stop(self) -> None:
        super().stop()
        if not (self.store / "mosquitto.db").is_file():
            raise RuntimeError(f"mosquitto saved no database in {self.store} on SIGTERM")


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[PersistentBroker]:
    b = PersistentBroker(tmp_path)
    b.start()
    yield b
    b.stop()


class DurableSubscriber:
    """A QoS 2 subscriber with a persistent session: misses nothing while it is offline."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"durable-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )  # fmt: skip
        ready = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=2)
        self._client.on_subscribe = lambda *_: ready.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscription not acknowledged")

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(message.payload))

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def wait_until(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 120
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.payloads()):
                return self.payloads()
            time.sleep(0.1)
        raise AssertionError(f"condition not met; messages: {self.payloads()}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# ==== end of the wasinn shim section ====
