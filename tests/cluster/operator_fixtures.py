"""Fixtures for operator tests on the real cluster: the CRD, the proplet image, a models claim
per namespace, and the operator itself running under a ServiceAccount that holds only the
RBAC the chart documents (charts/wasinn-operator/files/operator-*rules.yaml)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, Kubectl, _hack_cluster, wait_until
from .conftest import models_claim as models_claim_on

PROPLET_IMAGE = os.environ.get("WASINN_PROPLET_IMAGE", "localhost/wasinn-proplet:dev")
RULES = REPO / "charts" / "wasinn-operator" / "files"
# Specs the API server must refuse (the CRD's schema and CEL rules), with its message.
INVALID_TASKS: list[tuple[dict[str, Any], str]] = [
    (
        {"wasm": {"url": "http://a/x.wasm", "path": "/x.wasm"}},
        "exactly one of url, configMapKeyRef, path, inline, image must be set",
    ),
    (
        {"wasm": {"path": "/x.wasm", "digest": "sha256:1234"}},
        "spec.wasm.digest in body should match '^sha256:[0-9a-f]{64}$'",
    ),
    (
        {"wasm": {"path": "/x.wasm"}, "env": {"1 BAD": "x"}},
        "env names must match [-._a-zA-Z][-._a-zA-Z0-9]*",
    ),
    (
        {"wasm": {"path": "/x.wasm"}, "timeoutSeconds": -5},
        "spec.timeoutSeconds in body should be greater than or equal to 1",
    ),
]
MODELS_DIR = Path(os.environ.get("WASINN_MODELS_DIR") or REPO.parent / "shared" / "models")


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(REPO / "crds" / "wasinntask.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/wasinntasks.wasinn.dev", "--timeout=60s")


@pytest.fixture(scope="session")
def proplet_image(kubectl: Kubectl) -> str:
    """The proplet image, built from this checkout and imported into the node."""
    build = subprocess.run(
        [str(REPO / "hack" / "build-images.sh"), "proplet"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert build.returncode == 0, f"build-images.sh failed:\n{build.stderr[-3000:]}"
    load = _hack_cluster("load-image", PROPLET_IMAGE, timeout=600)
    assert load.returncode == 0, f"load-image failed:\n{load.stderr[-3000:]}"
    return PROPLET_IMAGE


def models_claim(
    kubectl: Kubectl, namespace: str, name: str = "models", label: str = "operator"
) -> None:
    """A read-only claim on the shared models directory, in `namespace`."""
    models_claim_on(kubectl, namespace, MODELS_DIR, name, label=label)


def account_kubeconfig(
    kubectl: Kubectl, namespace: str, directory: Path, account: str = "operator"
) -> Path:
    """A kubeconfig for ServiceAccount `wasinn-<account>` bound to exactly the rules the chart
    documents for it (files/<account>-rules.yaml and files/<account>-cluster-rules.yaml)."""
    rules = yaml.safe_load((RULES / f"{account}-rules.yaml").read_text())
    cluster_rules = yaml.safe_load((RULES / f"{account}-cluster-rules.yaml").read_text())
    name = f"wasinn-{account}"
    cluster_role = f"{name}-test-{namespace}"
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name, "namespace": namespace},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [subject],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                # The operator_ns teardown deletes what carries this label.
                "metadata": {"name": cluster_role, "labels": {"wasinn.dev/test": "operator"}},
                "rules": cluster_rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_role, "labels": {"wasinn.dev/test": "operator"}},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_role,
                },
                "subjects": [subject],
            },
        ]
    )
    token = kubectl("create", "token", name, "-n", namespace, "--duration=2h").strip()
    admin = yaml.safe_load(Path(kubectl.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path = directory / f"{account}.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "c",
                        "context": {"cluster": "c", "user": account, "namespace": namespace},
                    }
                ],
                "current-context": "c",
            }
        )
    )
    return path


class Operator:
    """`wasinn operator` as a child process (restartable)."""

    def __init__(self, kubeconfig: Path, namespace: str, image: str, log: Path) -> None:
        self.kubeconfig, self.namespace, self.image, self.log = kubeconfig, namespace, image, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "WASINN_BACKOFF_BASE_SECONDS": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wasinn_operator.cli",
                    "operator",
                    "--namespace",
                    self.namespace,
                    "--proplet-image",
                    self.image,
                    "--pull-policy",
                    "Never",
                    "--resync-seconds",
                    "2",
                    "--metrics-port",
                    "0",
                    "--health-port",
                    str(_free_port()),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator_ns(
    kubectl: Kubectl, crd: None, proplet_image: str, tmp_path: Path
) -> Iterator[tuple[str, Operator]]:
    """A namespace with a models claim, the classify guest in a ConfigMap, and an operator."""
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    wait_until(
        "the default ServiceAccount",
        lambda: kubectl.get("serviceaccount", "default", namespace),
        timeout=60,
    )
    models_claim(kubectl, namespace)
    guest = REPO / "build" / "guests" / "classify-c.wasm"
    kubectl(
        "create",
        "configmap",
        "wasinn-guests",
        "-n",
        namespace,
        f"--from-file=classify-c.wasm={guest}",
    )
    operator = Operator(
        account_kubeconfig(kubectl, namespace, tmp_path),
        namespace,
        proplet_image,
        tmp_path / "operator.log",
    )
    operator.start()
    try:
        yield namespace, operator
    finally:
        operator.stop()
        kubectl("delete", "wnt", "--all", "-n", namespace, "--wait=false", check=False)
        kubectl.delete("namespace", namespace, timeout=180)
        kubectl(
            "delete",
            "pv,clusterrole,clusterrolebinding",
            "-l",
            "wasinn.dev/test=operator",
            "--ignore-not-found",
            # The claim goes with the namespace, which ends after this returns; waiting here for
            # the volume's pv-protection finalizer timed out on a slow control plane.
            "--wait=false",
            check=False,
        )
        print((tmp_path / "operator.log").read_text()[-3000:])


def wat_inline(text: str) -> str:
    """A WAT module as the base64 a task's wasm.inline takes."""
    import wasmtime  # noqa: PLC0415

    return base64.b64encode(wasmtime.wat2wasm(text)).decode()


def task(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
