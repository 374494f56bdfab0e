"""The kubelet stand-in's paths the shim suite does not take, with the real operator: an inline
module (a ConfigMap volume, the task's `wasm.path` mapped to the host, the Pod's log through the
API server's proxy to the stand-in's log endpoint) and a deadline."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHELSEA, KubeWorld
from .kubeapi import Cluster

pytestmark = pytest.mark.integration


def create(cluster: Cluster, name: str, **spec: Any) -> None:
    cluster.create("wasinntasks", {"metadata": {"name": name}, "spec": spec})


def finished(cluster: Cluster, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = (cluster.find("wasinntasks", name) or {}).get("status") or {}
        return status if status.get("phase") in ("Completed", "Failed") else None

    return dict(cluster.wait_for(check, timeout=300, what=f"task {name} to finish"))


def test_inline_module_runs_from_its_configmap(
    kube_world: KubeWorld, guest_path: Callable[[str], Path]
) -> None:
    cluster = kube_world.cluster
    wasm = base64.b64encode(guest_path("classify-c").read_bytes()).decode()
    create(cluster, "inline", wasm={"inline": wasm}, args=CHELSEA)
    status = finished(cluster, "inline")
    assert (status["phase"], status["exitCode"]) == ("Completed", 0), status
    assert "1. tiger cat (282)" in status["results"]
    log = cluster.core.read_namespaced_pod_log("inline-1", cluster.namespace)
    assert "tiger cat" in log


def test_deadline_fails_the_pod(kube_world: KubeWorld, spin_wasm: bytes) -> None:
    cluster = kube_world.cluster
    create(cluster, "slow", wasm={"inline": base64.b64encode(spin_wasm).decode()},
           timeoutSeconds=2)  # fmt: skip
    status = finished(cluster, "slow")
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    # The proplet's own -W timeout (124) or the kubelet's activeDeadlineSeconds: both are
    # DeadlineExceeded to the operator, whichever comes first.
    assert failed["reason"] == "DeadlineExceeded", status
