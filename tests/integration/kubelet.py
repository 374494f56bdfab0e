"""A kubelet stand-in (a test double) for one Node of the test control plane: it runs task Pods
for real, as host processes.

The control plane has no scheduler and no kubelet, so Pods would stay Pending forever.
`Kubelet` plays both for one Node, through the API as they do: it registers its Node (Ready,
with its labels), binds each Pod whose nodeSelector the Node satisfies (`pods/binding`), sets
up the Pod's volumes as host directories, runs the container's command (`wasinn proplet run`,
the proplet image's entry point) as a child process with the Pod's environment, and writes the
status a kubelet would (`pods/status`): Pending on the node, Running with a running container,
then Succeeded or Failed with `state.terminated.exitCode` and `message` = the termination
message file (or, with FallbackToLogsOnError and an empty file, the log's tail). A deleted Pod's
process gets SIGTERM, then SIGKILL after the grace period, and the deletion is confirmed (a
delete with grace period 0); `activeDeadlineSeconds` fails the Pod with reason
DeadlineExceeded. The container log is served over HTTPS at the kubelet's
`/containerLogs/NS/POD/CONTAINER`, where the API server's `pods/NAME/log` proxies to.

Where a container and a host process differ, paths are translated: a volume's mountPath (and
the termination-message path) becomes a host path in the Pod's environment and in the task's
`wasm.path`. A PersistentVolumeClaim is the host directory given for it in `claims`; emptyDir
and configMap volumes are fresh directories per Pod. The task's own guest paths (args, env,
cliArgs) are left alone: the runtime maps the models directory to /models inside the guest.
A volume that cannot be set up fails the Pod (a kubelet would retry the mount). Not emulated:
images, users and security contexts, resources, taints, probes, init containers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from .kubeapi import Cluster

log = logging.getLogger("tests.kubelet")
LOG_TAIL_BYTES, LOG_TAIL_LINES = 2048, 80  # what the kubelet keeps for FallbackToLogsOnError
POLL_SECONDS = 0.2


@dataclass
class _Run:
    """One Pod this node runs: its process, its host directory, its path translations."""

    namespace: str
    name: str
    uid: str
    root: Path
    mounts: list[tuple[str, Path]] = field(default_factory=list)  # (container path, host path)
    termination: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deadline: float | None = None
    grace: float = 30.0
    policy: str = "File"
    done: bool = False


class Kubelet:
    """Scheduler + kubelet stand-in for Node `node`, which it registers with `labels`; it serves
    Pod logs over HTTPS with `serving` (a certificate for 127.0.0.1 and its key)."""

    def __init__(
        self,
        cluster: Cluster,
        node: str,
        labels: dict[str, str],
        claims: dict[str, Path],
        workdir: Path,
        serving: tuple[Path, Path],
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.labels = labels
        self.claims = claims
        self.workdir = workdir
        self.runs: dict[str, _Run] = {}
        self.logs: dict[tuple[str, str], Path] = {}  # (namespace, Pod) -> its container's log
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{node}", daemon=True)
        self._server = _log_server(self.logs, serving)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name=f"kubelet-{node}-logs", daemon=True
        )

    def start(self) -> None:
        self._server_thread.start()
        self.cluster.add_node(self.node, self.labels, kubelet_port=self._server.server_address[1])
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and end every process still running (as if the node went away)."""
        self._stopping.set()
        self._thread.join(60)
        for run in self.runs.values():
            self._kill(run, grace=5)
        self._server.shutdown()
        self._server.server_close()

    # -- the loop --

    def _loop(self) -> None:
        while not self._stopping.wait(POLL_SECONDS):
            try:
                self._sync()
            except Exception as exc:  # reported by the fixture
                if self._stopping.is_set():
                    return
                log.exception("kubelet stand-in: sync failed")
                self.errors.append(exc)
                if len(self.errors) > 20:
                    return

    def _sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self.cluster.list("pods", all_namespaces=True)}
        for uid, pod in pods.items():
            meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
            if meta.get("deletionTimestamp") and node == self.node:
                # Deleted gracefully: stop the container, then confirm (the Pod goes for good).
                run = self.runs.get(uid)
                if run is not None and not run.done:
                    self._kill(run, grace=float(meta.get("deletionGracePeriodSeconds") or 0))
                    run.done = True
                self.cluster.confirm_deletion(meta["name"], uid, meta["namespace"])
        for uid, run in list(self.runs.items()):
            current = pods.get(uid)
            if current is None:
                if not run.done:  # deleted at once (grace period 0): stop what still runs
                    self._kill(run, grace=0)
                del self.runs[uid]
                self.logs.pop((run.namespace, run.name), None)
                shutil.rmtree(run.root, ignore_errors=True)
            elif not run.done:
                self._watch_process(run, current)
        for uid, pod in pods.items():
            if uid in self.runs or pod["metadata"].get("deletionTimestamp"):
                continue
            status = pod.get("status") or {}
            if status.get("phase") not in (None, "Pending") or status.get("containerStatuses"):
                continue  # not ours to start (ended already, or another node's)
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in (None, self.node) or not self._fits(pod):
                continue
            self._start(pod)

    def _fits(self, pod: dict[str, Any]) -> bool:
        """The scheduler's check: the Node carries every label of the Pod's nodeSelector."""
        wanted = (pod.get("spec") or {}).get("nodeSelector") or {}
        node = self.cluster.find("nodes", self.node) or {}
        labels = node.get("metadata", {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in wanted.items())

    # -- a Pod's life --

    def _start(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        if not self._report(namespace, name, "Pending"):  # bound to this node
            return
        root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        run = _Run(namespace, name, meta["uid"], root)
        self.runs[run.uid] = run
        run.log_file = root / "container.log"
        self.logs[namespace, name] = run.log_file
        try:
            [container] = spec["containers"]
            command = self._command(container)
            env = self._prepare(run, spec, container)
        except (ValueError, KeyError, OSError, ApiException) as exc:
            log.warning("kubelet stand-in: cannot start %s/%s: %s", namespace, name, exc)
            run.log_file.write_text(f"kubelet stand-in: {exc}\n")
            self._finish(run, "Failed", 128, None)
            return
        run.grace = float(spec.get("terminationGracePeriodSeconds", 30))
        deadline = spec.get("activeDeadlineSeconds")
        run.started = time.monotonic()
        run.deadline = None if deadline is None else run.started + float(deadline)
        with run.log_file.open("wb") as log_out:
            run.process = subprocess.Popen(
                command,
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._report(namespace, name, "Running")

    def _report(self, namespace: str, name: str, phase: str, **details: Any) -> bool:
        """Bind (first) and write the Pod's status; False when the Pod is gone or going."""
        try:
            self.cluster.set_pod_phase(name, phase, node=self.node, namespace=namespace, **details)
        except ApiException as exc:
            # 404: deleted meanwhile. 409: bound elsewhere meanwhile, or already deleting.
            if exc.status not in (404, 409):
                raise
            return False
        return True

    def _watch_process(self, run: _Run, pod: dict[str, Any]) -> None:
        assert run.process is not None
        code = run.process.poll()
        if code is None and run.deadline is not None and time.monotonic() > run.deadline:
            self._kill(run, grace=run.grace)
            self._finish(run, "Failed", 137, None, reason="DeadlineExceeded")
            return
        if code is None:
            return
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal number
        self._finish(run, "Succeeded" if code == 0 else "Failed", code, self._message(run, code))

    def _finish(
        self, run: _Run, phase: str, code: int, message: str | None, reason: str | None = None
    ) -> None:
        run.done = True
        self._report(
            run.namespace, run.name, phase, exit_code=code, termination_message=message,
            reason=reason,
        )  # fmt: skip

    def _message(self, run: _Run, code: int) -> str | None:
        """The termination message: the file, else (FallbackToLogsOnError, failed) the log tail."""
        text = ""
        if run.termination is not None and run.termination.is_file():
            text = run.termination.read_bytes()[:4096].decode("utf-8", errors="replace")
        if not text and code != 0 and run.policy == "FallbackToLogsOnError" and run.log_file:
            tail = run.log_file.read_bytes()[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")
            text = "\n".join(tail.splitlines()[-LOG_TAIL_LINES:])
        return text or None

    def _kill(self, run: _Run, grace: float) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    # -- the container as a host process --

    @staticmethod
    def _command(container: dict[str, Any]) -> list[str]:
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if not command or command[0] != "wasinn":
            raise ValueError(f"the stand-in runs only the proplet image's `wasinn`: {command}")
        return [sys.executable, "-m", "wasinn_operator.cli", *command[1:]]

    def _prepare(
        self, run: _Run, spec: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, str]:
        """Volumes as host directories, and the container's environment with host paths."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            host = self._volume(run, volumes[mount["name"]])
            if mount.get("subPath"):
                host = host / mount["subPath"]
            run.mounts.append((mount["mountPath"].rstrip("/") or "/", host))
        run.mounts.sort(key=lambda m: len(m[0]), reverse=True)
        run.policy = container.get("terminationMessagePolicy") or "File"
        path = container.get("terminationMessagePath") or "/dev/termination-log"
        run.termination = run.root / "termination-log"
        run.termination.touch()
        run.mounts.insert(0, (path, run.termination))
        # A container's environment is its image's (PATH) and the Pod's, nothing of the host's;
        # WASINN_PARENT_PID ends the proplet if the test process dies without stopping us.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "WASINN_PARENT_PID": str(os.getpid()),
        }
        for item in container.get("env") or []:
            if "value" not in item:
                raise ValueError(f"env {item['name']}: only literal values are emulated")
            env[item["name"]] = self._host_path(run, item["value"])
        if "WASINN_TASK" in env:
            env["WASINN_TASK"] = self._task_json(run, env["WASINN_TASK"])
        return env

    def _volume(self, run: _Run, volume: dict[str, Any]) -> Path:
        directory = run.root / "volumes" / volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            self.cluster.get("persistentvolumeclaims", claim, run.namespace)  # 404 if missing
            if claim not in self.claims:
                raise ValueError(f"no host directory for the claim {claim!r}")
            return self.claims[claim]
        directory.mkdir(parents=True)
        if "configMap" in volume:
            ref = volume["configMap"]
            found = self.cluster.get("configmaps", ref["name"], run.namespace)
            files = {k: v.encode() for k, v in (found.get("data") or {}).items()}
            files |= {k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}
            items = ref.get("items") or [{"key": k, "path": k} for k in files]
            for item in items:
                target = directory / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(files[item["key"]])
        elif "emptyDir" not in volume:
            raise ValueError(f"volume {volume['name']}: only PVC, configMap, emptyDir are emulated")
        return directory

    @staticmethod
    def _host_path(run: _Run, value: str) -> str:
        for inside, host in run.mounts:
            if value == inside or value.startswith(inside.rstrip("/") + "/"):
                return str(host) + value[len(inside) :]
        return value

    def _task_json(self, run: _Run, text: str) -> str:
        """The task's module path (a mounted ConfigMap) as a host path; the rest is the guest's."""
        task = json.loads(text)
        wasm = task.get("wasm") or {}
        if isinstance(wasm.get("path"), str):
            wasm["path"] = self._host_path(run, wasm["path"])
        return json.dumps(task)


def _log_server(
    logs: dict[tuple[str, str], Path], serving: tuple[Path, Path]
) -> ThreadingHTTPServer:
    """The kubelet's log endpoint on a free 127.0.0.1 port, over TLS."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            found = logs.get((parts[1], parts[2])) if len(parts) == 4 else None
            if parts[0] != "containerLogs" or found is None or not found.is_file():
                self.send_error(404)
                return
            body = found.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, serving))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
