"""Fixtures for the container suite: the real images, built and run here.

The images are built once per session by `hack/build-images.sh` (buildah: the podman storage
the runs use; quick when nothing changed) and run with podman as a Pod runs them: read-only
root filesystem, a tmpfs at /tmp only, uid/gid 65532, the models mounted read-only at /models,
a writable termination-message file at /dev/termination-log, no network unless the task needs
one. Podman and buildah use `hack/containers.conf` (runc, cgroupfs; see the machine notes).

Every container run is bounded by a timeout and removed afterwards; the HTTP server and the OCI
registry (Debian `docker-registry`) the tests start listen on 127.0.0.1 only and are stopped
by the session (the registry by its PID).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import free_port, missing, pinned_version

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "hack" / "build-images.sh"
CONTAINERS_CONF = REPO / "hack" / "containers.conf"
CACHE = Path(os.environ.get("WASINN_CACHE") or Path.home() / ".cache" / "wasinn")
PROPLET_IMAGE = os.environ.get("WASINN_PROPLET_IMAGE", "localhost/wasinn-proplet:dev")
PROPLET_CLI_IMAGE = os.environ.get(
    "WASINN_PROPLET_CLI_IMAGE", "localhost/wasinn-proplet:dev-wasmtime-cli"
)
OPERATOR_IMAGE = os.environ.get("WASINN_OPERATOR_IMAGE", "localhost/wasinn-operator:dev")
WASMTIME_CLI_VERSION = pinned_version("WASMTIME_CLI_VERSION")
WASMTIME_CLI = Path(
    os.environ.get("WASINN_WASMTIME_CLI")
    or CACHE / "wasmtime-cli" / WASMTIME_CLI_VERSION / "bin" / "wasmtime"
)
# A cold build bootstraps Debian and installs python3 (a few minutes); a warm one takes seconds.
BUILD_TIMEOUT = float(os.environ.get("WASINN_IMAGE_BUILD_TIMEOUT", "1800"))
RUN_TIMEOUT = 240.0
UID = 65532
TERMINATION_LOG = "/dev/termination-log"


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def container_tools() -> None:
    for tool in ("buildah", "podman"):
        if shutil.which(tool) is None:
            missing(
                f"{tool} is not installed (Debian package {tool}; "
                "`hack/build-images.sh` installs it)"
            )
    if os.geteuid() != 0:
        missing("the container tests build with buildah and run podman as root")


def build(target: str, tag_env: Mapping[str, str], log: Path) -> None:
    """Run `hack/build-images.sh TARGET` into the podman storage; fail with its log's tail."""
    env = {**podman_env(), "WASINN_IMAGE_BUILDER": "buildah", **tag_env}
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [str(BUILD_IMAGES), target],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"hack/build-images.sh {target} took over {BUILD_TIMEOUT:.0f} s; log {log}")
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        pytest.fail(f"hack/build-images.sh {target} failed (exit {proc.returncode}):\n{tail}")
    print(f"built {target} in {time.monotonic() - started:.0f} s (log {log})")


@pytest.fixture(scope="session")
def proplet_image(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("build") / "proplet.log"
    build("proplet", {"WASINN_PROPLET_IMAGE": PROPLET_IMAGE, "WASMTIME_CLI": ""}, log)
    return PROPLET_IMAGE


@pytest.fixture(scope="session")
def proplet_cli_image(proplet_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The proplet image with the wasmtime CLI at /usr/local/bin/wasmtime (build arg)."""
    if not (WASMTIME_CLI.is_file() and os.access(WASMTIME_CLI, os.X_OK)):
        pytest.skip(
            f"{WASMTIME_CLI} is missing: the wasmtime CLI with wasi-nn is not built "
            f"(cargo install wasmtime-cli@{WASMTIME_CLI_VERSION} --features wasi-nn --root ...)"
        )
    log = tmp_path_factory.mktemp("build") / "proplet-cli.log"
    build(
        "proplet",
        {"WASINN_PROPLET_IMAGE": PROPLET_CLI_IMAGE, "WASMTIME_CLI": str(WASMTIME_CLI)},
        log,
    )
    return PROPLET_CLI_IMAGE


@pytest.fixture(scope="session")
def operator_image(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("build") / "operator.log"
    build("operator", {"WASINN_OPERATOR_IMAGE": OPERATOR_IMAGE}, log)
    return OPERATOR_IMAGE


# ----------------------------------------------------------------------------- running


@dataclass
class Run:
    """One finished container: its exit code, output and parsed termination message."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    message: str

    @property
    def summary(self) -> dict[str, Any]:
        assert self.message, f"no termination message; {self.describe()}"
        parsed: dict[str, Any] = json.loads(self.message)
        return parsed

    def describe(self) -> str:
        return (
            f"exit {self.returncode}\n--- stdout\n{self.stdout[-2000:]}\n"
            f"--- stderr\n{self.stderr[-3000:]}\n--- termination message\n{self.message}"
        )


def run_container(
    image: str,
    workdir: Path,
    *,
    args: Sequence[str] = (),
    entrypoint: str | None = None,
    network: str = "none",
    volumes: Sequence[tuple[Path, str, str]] = (),
    env: Mapping[str, str] | None = None,
    user: str | None = f"{UID}:{UID}",
    timeout: float = RUN_TIMEOUT,
) -> Run:
    """`podman run` like a Pod: read-only root, tmpfs /tmp, non-root, a termination log."""
    name = f"wasinn-test-{uuid.uuid4().hex[:12]}"
    message = workdir / f"{name}.termination-log"
    message.touch()
    os.chown(message, UID, UID)
    command = [
        "podman", "run", "--rm", "--name", name, "--network", network,
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777,size=1g",
        "-v", f"{message}:{TERMINATION_LOG}:rw",
    ]  # fmt: skip
    if user is not None:
        command += ["--user", user]
    for host, guest, mode in volumes:
        command += ["-v", f"{host}:{guest}:{mode}"]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    command += [image, *args]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=podman_env(), check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"container {name} ran over {timeout:.0f} s: {' '.join(command)}")
    finally:
        # --rm removes it on exit; this covers a timeout or a podman failure.
        subprocess.run(
            ["podman", "rm", "--force", "--ignore", "--time", "0", name],
            capture_output=True,
            env=podman_env(),
            timeout=60,
            check=False,
        )
    return Run(command, proc.returncode, proc.stdout, proc.stderr, message.read_text())


@pytest.fixture
def proplet(proplet_image: str, models_dir: Path, tmp_path: Path) -> Callable[..., Run]:
    """Run a task: `proplet(task, network=..., volumes=..., env=..., image=...)`."""

    def run(
        task: Mapping[str, Any] | None,
        *,
        image: str = proplet_image,
        network: str = "none",
        volumes: Sequence[tuple[Path, str, str]] = (),
        env: Mapping[str, str] | None = None,
    ) -> Run:
        full_env = dict(env or {})
        if task is not None:
            full_env["WASINN_TASK"] = json.dumps(task)
        return run_container(
            image,
            tmp_path,
            network=network,
            volumes=[(models_dir, "/models", "ro"), *volumes],
            env=full_env,
        )

    return run


# -------------------------------------------------------------------- serving modules


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def wasm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, bytes], str]]:
    """`serve(name, data)` -> an http://127.0.0.1:PORT/name URL (a thread of this process)."""
    root = tmp_path_factory.mktemp("served")
    root.chmod(0o755)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield serve
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


# ------------------------------------------------------------------------- OCI registry


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT

    def push(self, repository: str, tag: str, wasm: Path, media_type: str | None = None) -> str:
        """Push `wasm` as a one-layer ORAS artifact; returns the manifest digest."""
        import oras.client  # noqa: PLC0415

        target = f"{self.host}/{repository}:{tag}"
        blob = f"{wasm}:{media_type}" if media_type else str(wasm)
        client = oras.client.OrasClient(insecure=True)
        response = client.push(target=target, files=[blob], disable_path_validation=True)
        assert response.status_code in (200, 201), response.text
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as head:
            return str(head.headers["Docker-Content-Digest"])


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, no auth, temp storage."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).is_file():
        missing("docker-registry is not installed (Debian package docker-registry)")
    try:
        import oras.client  # noqa: F401, PLC0415
    except ImportError:
        missing("the PyPI package oras is not installed in this venv (`make venv`)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (root / "registry.log").open("w")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=root
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"docker-registry exited: {(root / 'registry.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on 127.0.0.1:{port} within 30 s")
            time.sleep(0.2)
        yield Registry(f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def host_file(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """A file readable by uid 65532, to bind-mount read-only."""

    def make(name: str, data: bytes) -> Path:
        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        directory.chmod(0o755)
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    return make
