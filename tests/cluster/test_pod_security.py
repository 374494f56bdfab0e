"""Task Pods under the `restricted` Pod Security Standard, judged by the real API server: a task
runs to Completed in a namespace that enforces it, and the operator's task policy fails hostile
WasiNNTasks (PolicyViolation) before any Pod exists."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Kubectl
from .operator_fixtures import Operator, crd, operator_ns, proplet_image, task
from .test_operator import CHELSEA, GUEST, condition, pods, status, wait_phase

pytestmark = pytest.mark.cluster
__all__ = ["crd", "operator_ns", "proplet_image"]  # fixtures used by name
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def restricted(kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "--overwrite",
            *(f"{k}={v}" for k, v in RESTRICTED.items()))  # fmt: skip


def test_a_task_runs_in_a_restricted_namespace(
    kubectl: Kubectl, operator_ns: tuple[str, Operator]
) -> None:
    namespace, _ = operator_ns
    restricted(kubectl, namespace)
    # The label is enforced: a Pod the profile forbids is refused at admission.
    hostile: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hostile", "namespace": namespace},
        "spec": {
            "containers": [{"name": "c", "image": "busybox", "securityContext": {}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        },
    }
    refused = kubectl.run(
        "apply", "--dry-run=server", "-f", "-", check=False, input=json.dumps(hostile)
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    kubectl.apply(
        task("chelsea", namespace, {"wasm": GUEST, "cliArgs": ["-S", "nn"], "args": CHELSEA})
    )
    st = wait_phase(kubectl, namespace, "chelsea", "Completed", "Failed", timeout=240)
    assert (st["phase"], st["exitCode"]) == ("Completed", 0), st
    assert "1. tiger cat (282)" in st["results"]
    [pod] = pods(kubectl, namespace, "chelsea")
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert not any(m["mountPath"].startswith("/var/run/secrets") for m in mounts)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cliArgs": ["--dir", "/::/host"]},
         "spec.cliArgs: --dir /::/host: host directories are not allowed (allowed: none)"),
        ({"models": {"readOnly": False}},
         "spec.models.readOnly: false: the models volume is mounted read-only"),
        ({"models": {"mountPath": "/usr/local/lib"}},
         "spec.models.mountPath: /usr/local/lib: the models volume is mounted at /models only"),
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "spec.env: LD_PRELOAD: reserved name"),
    ],
)  # fmt: skip
def test_the_operator_refuses_hostile_tasks_without_a_pod(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], spec: dict[str, Any], message: str
) -> None:
    namespace, _ = operator_ns
    kubectl.apply(task("hostile", namespace, {"wasm": GUEST, "args": CHELSEA, **spec}))
    st = wait_phase(kubectl, namespace, "hostile", "Failed")
    failed = condition(st, "Failed")
    assert failed["reason"] == "PolicyViolation", st
    assert str(failed["message"]).startswith(message)
    assert str(st["error"]).startswith(message)
    assert pods(kubectl, namespace, "hostile") == []
    assert status(kubectl, namespace, "hostile").get("podName") is None
