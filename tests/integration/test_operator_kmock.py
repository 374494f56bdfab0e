"""The operator's whole lifecycle against kmock's Kubernetes API over real HTTP, with Pod
phases driven by the test: success, retries, deadline, suspend/resume, TTL, a late node label,
a late claim, deletion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from .kube import Cluster, kopf_runner

pytestmark = pytest.mark.integration
OPERATOR = Path(__file__).parent / "operator_main.py"
LABELS = {"wasinn.dev/openvino": "true"}
SUMMARY = {
    "state": "Completed",
    "exitCode": 0,
    "stdout": "  1. tiger cat (282) 0.383438\n",
    "stdoutTruncated": False,
    "digest": "sha256:" + "d" * 64,
}


@pytest.fixture
def operator(kmock_api: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    for name, value in {
        "WASINN_PROPLET_IMAGE": "reg/proplet:test",
        "WASINN_RESYNC_SECONDS": "0.5",
        "WASINN_BACKOFF_BASE_SECONDS": "0.2",
        "WASINN_NAMESPACES": "default",
        "WASINN_METRICS_PORT": "0",
    }.items():
        monkeypatch.setenv(name, value)
    with kopf_runner(OPERATOR, timeout=120) as runner:
        yield runner
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def create(cluster: Cluster, name: str, **spec: Any) -> None:
    cluster.create(
        "wasinntasks",
        {
            "apiVersion": "wasinn.dev/v1alpha1",
            "kind": "WasiNNTask",
            "metadata": {"name": name},
            "spec": {"wasm": {"url": "http://shim/artifacts/x"}, **spec},
        },
    )


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = cluster.find("wasinntasks", name)
    return {} if found is None else dict(found.get("status") or {})


def wait_status(cluster: Cluster, name: str, what: str, check: Any) -> dict[str, Any]:
    return dict(
        cluster.wait_for(
            lambda: (s := status(cluster, name)) and check(s) and s, timeout=30, what=what
        )
    )


def wait_pod(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(
        cluster.wait_for(lambda: cluster.find("pods", name), timeout=30, what=f"Pod {name}")
    )


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def test_success(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "cat", args=["x"], timeoutSeconds=30)
    pod = wait_pod(kmock_api, "cat-1")
    sent = json.loads(
        next(e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "WASINN_TASK")
    )
    assert sent["args"] == ["x"]
    assert pod["spec"]["activeDeadlineSeconds"] == 30
    assert (
        pod["metadata"]["ownerReferences"][0]["uid"]
        == kmock_api.get("wasinntasks", "cat")["metadata"]["uid"]
    )
    wait_status(kmock_api, "cat", "Scheduled", lambda s: s.get("phase") == "Scheduled")
    kmock_api.set_pod_phase("default", "cat-1", "Pending", node="n1")
    wait_status(kmock_api, "cat", "bound", lambda s: s.get("nodeName") == "n1")
    kmock_api.set_pod_phase("default", "cat-1", "Running", node="n1")
    wait_status(kmock_api, "cat", "Running", lambda s: s.get("state") == 2)
    kmock_api.set_pod_phase(
        "default",
        "cat-1",
        "Succeeded",
        node="n1",
        exit_code=0,
        termination_message=json.dumps(SUMMARY),
    )
    st = wait_status(kmock_api, "cat", "Completed", lambda s: s.get("phase") == "Completed")
    assert (st["state"], st["exitCode"], st["attempts"]) == (3, 0, 1)
    assert "tiger cat" in st["results"]
    assert st["digest"] == SUMMARY["digest"]
    assert condition(st, "Complete")["status"] == "True"
    kmock_api.wait_for(
        lambda: (
            {"Scheduled", "Running", "Completed"}
            <= {e.get("reason") for e in kmock_api.list("events")}
        ),
        timeout=30,
        what="an Event for each transition",
    )


def test_retries_then_backoff_limit(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "flaky", backoffLimit=1)
    failed = json.dumps({"state": "Failed", "exitCode": 1, "error": "exited with code 1"})
    wait_pod(kmock_api, "flaky-1")
    kmock_api.set_pod_phase(
        "default", "flaky-1", "Failed", node="n1", exit_code=1, termination_message=failed
    )
    wait_pod(kmock_api, "flaky-2")
    assert status(kmock_api, "flaky")["failedAttempts"] == 1
    kmock_api.set_pod_phase(
        "default", "flaky-2", "Failed", node="n1", exit_code=1, termination_message=failed
    )
    st = wait_status(kmock_api, "flaky", "Failed", lambda s: s.get("phase") == "Failed")
    assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert (st["attempts"], st["error"]) == (2, "exited with code 1")


def test_deadline(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "slow", timeoutSeconds=5, backoffLimit=3)
    wait_pod(kmock_api, "slow-1")
    kmock_api.set_pod_phase("default", "slow-1", "Failed", node="n1", reason="DeadlineExceeded")
    st = wait_status(kmock_api, "slow", "Failed", lambda s: s.get("phase") == "Failed")
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    assert kmock_api.find("pods", "slow-2") is None


def test_suspend_and_resume(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "long")
    wait_pod(kmock_api, "long-1")
    kmock_api.set_pod_phase("default", "long-1", "Running", node="n1")
    wait_status(kmock_api, "long", "Running", lambda s: s.get("phase") == "Running")
    kmock_api.patch("wasinntasks", "long", {"spec": {"suspend": True}})
    st = wait_status(kmock_api, "long", "Interrupted", lambda s: s.get("phase") == "Interrupted")
    assert st["state"] == 6
    kmock_api.wait_for(
        lambda: kmock_api.find("pods", "long-1") is None, timeout=30, what="Pod gone"
    )
    kmock_api.patch("wasinntasks", "long", {"spec": {"suspend": False}})
    wait_pod(kmock_api, "long-2")
    assert condition(status(kmock_api, "long"), "Suspended")["status"] == "False"


def test_ttl_after_finished(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "brief", ttlSecondsAfterFinished=1)
    wait_pod(kmock_api, "brief-1")
    kmock_api.set_pod_phase(
        "default",
        "brief-1",
        "Succeeded",
        node="n1",
        exit_code=0,
        termination_message=json.dumps(SUMMARY),
    )
    kmock_api.wait_for(
        lambda: kmock_api.find("wasinntasks", "brief") is None,
        timeout=30,
        what="the task to expire",
    )
    kmock_api.wait_for(
        lambda: kmock_api.find("pods", "brief-1") is None, timeout=30, what="its Pod to go"
    )


def test_unschedulable_until_a_node_is_labelled(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_pvc("default", "models")
    kmock_api.add_node("plain", {})
    create(kmock_api, "waiting")
    st = wait_status(
        kmock_api,
        "waiting",
        "Unschedulable",
        lambda s: condition(s, "Scheduled").get("reason") == "Unschedulable",
    )
    assert "wasinn.dev/openvino=true" in condition(st, "Scheduled")["message"]
    assert kmock_api.find("pods", "waiting-1") is None
    kmock_api.add_node("gpu-node", LABELS)
    wait_pod(kmock_api, "waiting-1")


def test_missing_claim_until_created(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    create(kmock_api, "claimless", models={"claimName": "zoo"})
    st = wait_status(
        kmock_api,
        "claimless",
        "ModelClaimNotFound",
        lambda s: condition(s, "Scheduled").get("reason") == "ModelClaimNotFound",
    )
    assert "'zoo' not found" in condition(st, "Scheduled")["message"]
    kmock_api.add_pvc("default", "zoo")
    pod = wait_pod(kmock_api, "claimless-1")
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "zoo"


def test_deletion_removes_children(kmock_api: Cluster, operator: KopfRunner) -> None:
    kmock_api.add_node("n1", LABELS)
    kmock_api.add_pvc("default", "models")
    create(kmock_api, "gone", wasm={"inline": "AGFzbQEAAAA="})
    wait_pod(kmock_api, "gone-1")
    assert kmock_api.find("configmaps", "gone-wasm") is not None
    kmock_api.delete("wasinntasks", "gone")
    kmock_api.wait_for(
        lambda: kmock_api.find("pods", "gone-1") is None, timeout=30, what="Pod gone"
    )
    kmock_api.wait_for(
        lambda: kmock_api.find("configmaps", "gone-wasm") is None, timeout=30, what="ConfigMap gone"
    )
