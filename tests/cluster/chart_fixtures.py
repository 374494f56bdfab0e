"""Helm, the release images and release helpers shared by the chart and end-to-end tests.

helm comes from `hack/tools.sh` (skips, or fails under CI, when missing). The images are built
with hack/build-images.sh and imported with `hack/cluster load-image` (imagePullPolicy: Never),
unless WASINN_E2E_IMAGES_LOADED=1 says the caller (hack/e2e-kind.sh) loaded them already.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import missing
from .conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wasinn-operator"
OPERATOR_IMAGE = "localhost/wasinn-operator:dev"
PROPLET_IMAGE = "localhost/wasinn-proplet:dev"
MOSQUITTO_IMAGE = "localhost/wasinn-mosquitto:dev"
BUILD_TIMEOUT = int(os.environ.get("WASINN_IMAGE_BUILD_TIMEOUT", "3600"))
# Extra `--set` values for installs (comma-separated, e.g. image.repository=...,image.tag=...).
EXTRA_SET = [v for v in os.environ.get("WASINN_CHART_SET", "").split(",") if v]


class Helm:
    """helm against the test cluster's kubeconfig."""

    def __init__(self, binary: str, kubeconfig: str) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", self.kubeconfig, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc


def helm_binary() -> Path:
    bindir = subprocess.run(
        [str(REPO / "hack" / "tools.sh"), "bindir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    binary = Path(bindir) / "helm"
    if not binary.is_file():
        missing(f"helm is not installed in {bindir}: run hack/tools.sh (make test does)")
    return binary


@pytest.fixture(scope="module")
def helm(kubeconfig: str) -> Helm:
    return Helm(str(helm_binary()), kubeconfig)


def build_and_load(*images: str) -> None:
    """Build the named images of this checkout and import them into the node."""
    if os.environ.get("WASINN_E2E_IMAGES_LOADED") == "1":
        return
    names = [image.rsplit("/", 1)[-1].split(":")[0].removeprefix("wasinn-") for image in images]
    build = subprocess.run(
        [str(REPO / "hack" / "build-images.sh"), *names],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert build.returncode == 0, f"hack/build-images.sh failed:\n{build.stderr[-4000:]}"
    for image in images:
        load = subprocess.run(
            [str(REPO / "hack" / "cluster"), "load-image", image],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert load.returncode == 0, f"load-image {image} failed:\n{load.stderr[-4000:]}"


def available(kubectl: Kubectl, name: str, namespace: str) -> bool:
    """Deployment `name` is Available with its one replica ready."""
    deployment = kubectl.get("deployment", name, namespace) or {}
    conditions = {
        c["type"]: c["status"] for c in deployment.get("status", {}).get("conditions", [])
    }
    return conditions.get("Available") == "True" and deployment["status"].get("readyReplicas") == 1


def describe(kubectl: Kubectl, namespace: str, selector: str) -> str:
    """Pods of the namespace and the release's recent logs, for failure messages."""
    pods = kubectl.run("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    logs = kubectl.run(
        "logs", "-n", namespace, "-l", selector, "--all-containers", "--tail=40", "--prefix",
        check=False,
    )  # fmt: skip
    return f"{pods}\n{logs.stdout}{logs.stderr}"


def leftovers(kubectl: Kubectl, namespace: str, selector: str) -> list[str]:
    """Objects labelled `selector`: namespaced kinds in `namespace`, and cluster-wide RBAC."""
    found = []
    kinds = "deployments,services,serviceaccounts,secrets,configmaps,roles,rolebindings,pods"
    for kind, scope in ((kinds, ["-n", namespace]), ("clusterroles,clusterrolebindings", [])):
        found += kubectl("get", kind, *scope, "-l", selector, "-o", "name").split()
    return found


def task_pods(kubectl: Kubectl, namespace: str, task: str) -> list[dict[str, object]]:
    found = kubectl("get", "pods", "-n", namespace, "-l", f"wasinn.dev/task={task}", "-o", "json")
    return list(json.loads(found)["items"])
