"""The operator's whole lifecycle as a process against the real API server, with Pod phases
driven by the test (playing scheduler and kubelet through the API): success, retries, deadline,
suspend/resume, TTL, a late node label, placement by node features and device plugins, a late
claim, deletion, and garbage collection by Kubernetes' own collector."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from wasinn_operator.controller.kube import Kube

from .conftest import OperatorProcess
from .kubeapi import Cluster

pytestmark = pytest.mark.integration
LABELS = {"wasinn.dev/openvino": "true"}
SUMMARY = {
    "state": "Completed",
    "exitCode": 0,
    "stdout": "  1. tiger cat (282) 0.383438\n",
    "stdoutTruncated": False,
    "digest": "sha256:" + "d" * 64,
}
WAIT = 120  # seconds: generous, the machine is shared and slow
AMX = "feature.node.kubernetes.io/cpu-cpuid.AMXBF16"
GPU = "gpu.intel.com/i915"


@contextlib.contextmanager
def running_operator(kube: Cluster, tmp_path: Path, **env: str) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace; afterwards it must have exited cleanly."""
    settings = {
        "WASINN_PROPLET_IMAGE": "reg/proplet:test",
        "WASINN_RESYNC_SECONDS": "0.5",
        "WASINN_BACKOFF_BASE_SECONDS": "0.2",
        **env,
    }
    process = OperatorProcess(tmp_path, kube.kubeconfig, kube.namespace, settings)
    process.start()
    try:
        yield process
    finally:
        process.stop()
    log = process.log.read_text()
    assert process.exit_codes and set(process.exit_codes) == {0}, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def operator(kube: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(kube, tmp_path) as process:
        yield process


def create(cluster: Cluster, name: str, **spec: Any) -> None:
    cluster.create(
        "wasinntasks",
        {"metadata": {"name": name}, "spec": {"wasm": {"url": "http://shim/artifacts/x"}, **spec}},
    )


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = cluster.find("wasinntasks", name)
    return {} if found is None else dict(found.get("status") or {})


def wait_status(cluster: Cluster, name: str, what: str, check: Any) -> dict[str, Any]:
    return dict(
        cluster.wait_for(
            lambda: (s := status(cluster, name)) and check(s) and s, timeout=WAIT, what=what
        )
    )


def wait_pod(cluster: Cluster, name: str) -> dict[str, Any]:
    found = cluster.wait_for(lambda: cluster.find("pods", name), timeout=WAIT, what=f"Pod {name}")
    return dict(found)


def wait_gone(cluster: Cluster, plural: str, name: str) -> None:
    cluster.wait_for(
        lambda: cluster.find(plural, name) is None, timeout=WAIT, what=f"{plural}/{name} gone"
    )


def suspended(st: dict[str, Any]) -> bool:
    return condition(st, "Suspended").get("status") != "False"


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def running(kube: Cluster, name: str, **spec: Any) -> dict[str, Any]:
    """A task whose first attempt's Pod runs on n1 (the test playing scheduler and kubelet),
    and its Pod as created."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, name, **spec)
    pod = wait_pod(kube, f"{name}-1")
    kube.set_pod_phase(f"{name}-1", "Running", node="n1")
    wait_status(kube, name, "Running", lambda s: s.get("phase") == "Running")
    return pod


def test_success(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "cat", args=["x"], timeoutSeconds=30)
    pod = wait_pod(kube, "cat-1")
    sent = json.loads(
        next(e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "WASINN_TASK")
    )
    assert sent["args"] == ["x"]
    assert pod["spec"]["activeDeadlineSeconds"] == 30
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["uid"] == kube.get("wasinntasks", "cat")["metadata"]["uid"]
    wait_status(kube, "cat", "Scheduled", lambda s: s.get("phase") == "Scheduled")
    kube.set_pod_phase("cat-1", "Pending", node="n1")
    wait_status(kube, "cat", "bound", lambda s: s.get("nodeName") == "n1")
    kube.set_pod_phase("cat-1", "Running")
    wait_status(kube, "cat", "Running", lambda s: s.get("state") == 2)
    kube.set_pod_phase("cat-1", "Succeeded", exit_code=0, termination_message=json.dumps(SUMMARY))
    st = wait_status(kube, "cat", "Completed", lambda s: s.get("phase") == "Completed")
    assert (st["state"], st["exitCode"], st["attempts"]) == (3, 0, 1)
    assert "tiger cat" in st["results"]
    assert st["digest"] == SUMMARY["digest"]
    assert condition(st, "Complete")["status"] == "True"
    kube.wait_for(
        lambda: {"Scheduled", "Running", "Completed"} <= {e["reason"] for e in kube.list("events")},
        timeout=WAIT,
        what="an Event for each transition",
    )


def test_a_task_pod_outside_the_pod_watch_still_completes(
    kube: Cluster, operator: OperatorProcess
) -> None:
    """A task Pod the Pod watch does not select (made by a version whose Pods lacked
    app.kubernetes.io/part-of, running through an upgrade) sends the operator no events: the
    resync's listing of the task Pods' versions finds it changed and moves its task along."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "legacy")
    wait_pod(kube, "legacy-1")
    wait_status(kube, "legacy", "Scheduled", lambda s: s.get("phase") == "Scheduled")
    kube.patch("pods", "legacy-1", {"metadata": {"labels": {"app.kubernetes.io/part-of": None}}})
    kube.set_pod_phase("legacy-1", "Running", node="n1")
    wait_status(kube, "legacy", "Running", lambda s: s.get("phase") == "Running")
    summary = json.dumps(SUMMARY)
    kube.set_pod_phase("legacy-1", "Succeeded", exit_code=0, termination_message=summary)
    wait_status(kube, "legacy", "Completed", lambda s: s.get("phase") == "Completed")


def test_retries_then_backoff_limit(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "flaky", backoffLimit=1)
    failed = json.dumps({"state": "Failed", "exitCode": 1, "error": "exited with code 1"})
    wait_pod(kube, "flaky-1")
    kube.set_pod_phase("flaky-1", "Failed", node="n1", exit_code=1, termination_message=failed)
    wait_pod(kube, "flaky-2")
    wait_status(kube, "flaky", "a failed attempt", lambda s: s.get("failedAttempts") == 1)
    kube.set_pod_phase("flaky-2", "Failed", node="n1", exit_code=1, termination_message=failed)
    st = wait_status(kube, "flaky", "Failed", lambda s: s.get("phase") == "Failed")
    assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert (st["attempts"], st["error"]) == (2, "exited with code 1")


def test_deadline(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "slow", timeoutSeconds=5, backoffLimit=3)
    wait_pod(kube, "slow-1")
    kube.set_pod_phase("slow-1", "Failed", node="n1", reason="DeadlineExceeded")
    st = wait_status(kube, "slow", "Failed", lambda s: s.get("phase") == "Failed")
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    assert kube.find("pods", "slow-2") is None


def test_suspend_and_resume(kube: Cluster, operator: OperatorProcess) -> None:
    running(kube, "long")
    kube.patch("wasinntasks", "long", {"spec": {"suspend": True}})
    st = wait_status(kube, "long", "Failed", lambda s: s.get("phase") == "Failed")
    assert (st["state"], st["error"]) == (4, "task was stopped before completion")
    assert condition(st, "Failed")["reason"] == "Stopped"
    # A running Pod's deletion is graceful: it stays, marked, until its kubelet confirms.
    pod = kube.wait_for(
        lambda: (p := kube.find("pods", "long-1")) and p["metadata"].get("deletionTimestamp") and p,
        timeout=WAIT,
        what="the operator to delete the Pod",
    )
    assert kube.confirm_deletion("long-1", pod["metadata"]["uid"])
    wait_gone(kube, "pods", "long-1")
    kube.patch("wasinntasks", "long", {"spec": {"suspend": False}})
    wait_pod(kube, "long-2")
    # (The Pod is created before the status that records it is written.)
    wait_status(kube, "long", "Suspended False", lambda s: not suspended(s))


def test_a_restarted_operator_takes_up_a_running_pod(
    kube: Cluster, operator: OperatorProcess
) -> None:
    """A new operator process knows a Pod only from its watch's first listing (its Pod cache
    starts empty): it must still follow the running attempt to its end, not start another."""
    running(kube, "resumed")
    operator.stop()
    kube.set_pod_phase(
        "resumed-1", "Succeeded", exit_code=0, termination_message=json.dumps(SUMMARY)
    )
    operator.start()
    st = wait_status(kube, "resumed", "Completed", lambda s: s.get("phase") == "Completed")
    assert (st["attempts"], st["exitCode"]) == (1, 0)
    assert kube.find("pods", "resumed-2") is None


def test_a_deleted_pod_is_a_failed_attempt_and_retried(
    kube: Cluster, operator: OperatorProcess
) -> None:
    """A running attempt's Pod deleted by someone else (an eviction, a drain, kubectl): its
    DELETED event leaves the task's Pod cache without the Pod the status names, the operator
    lists to be sure and counts the attempt as failed."""
    pod = running(kube, "evicted", backoffLimit=2)
    assert kube.confirm_deletion("evicted-1", pod["metadata"]["uid"])
    wait_pod(kube, "evicted-2")
    st = wait_status(kube, "evicted", "a failed attempt", lambda s: s.get("failedAttempts") == 1)
    assert "the Pod disappeared" in str(st)


def test_ttl_after_finished(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "brief", ttlSecondsAfterFinished=1)
    wait_pod(kube, "brief-1")
    kube.set_pod_phase(
        "brief-1", "Succeeded", node="n1", exit_code=0, termination_message=json.dumps(SUMMARY)
    )
    wait_gone(kube, "wasinntasks", "brief")
    wait_gone(kube, "pods", "brief-1")


def test_unschedulable_until_a_node_is_labelled(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_pvc("models")
    kube.add_node("plain", {})
    create(kube, "waiting")
    st = wait_status(
        kube,
        "waiting",
        "Unschedulable",
        lambda s: condition(s, "Scheduled").get("reason") == "Unschedulable",
    )
    assert "wasinn.dev/openvino=true" in condition(st, "Scheduled")["message"]
    assert kube.find("pods", "waiting-1") is None
    kube.add_node("gpu-node", LABELS)
    wait_pod(kube, "waiting-1")


def test_node_features_and_devices_place_the_pod(kube: Cluster, operator: OperatorProcess) -> None:
    """A task asking for a GPU on an AMX node: while no node has them it waits Unschedulable,
    naming both; a node that has them takes its Pod, which carries the device limit, the NFD
    affinity and the device toleration; when the device goes before the scheduler placed the
    Pod (FailedScheduling), the condition names the device again."""
    kube.add_pvc("models")
    kube.add_node("cpu-only", LABELS)
    create(kube, "gpu-task", device="GPU", nodeFeatures=[AMX])
    st = wait_status(
        kube,
        "gpu-task",
        "Unschedulable",
        lambda s: condition(s, "Scheduled").get("reason") == "Unschedulable",
    )
    assert condition(st, "Scheduled")["message"] == (
        f"no node has label {AMX}=true; no node has {GPU}"
    )
    assert kube.find("pods", "gpu-task-1") is None

    kube.add_node("gpu-node", {**LABELS, AMX: "true"}, devices={GPU: "1"})
    pod = wait_pod(kube, "gpu-task-1")
    spec = pod["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {GPU: "1"}
    assert spec["nodeSelector"] == LABELS
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": AMX, "operator": "In", "values": ["true"]}]}
    ]
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert (
        json.loads(
            next(e["value"] for e in spec["containers"][0]["env"] if e["name"] == "WASINN_TASK")
        )["device"]
        == "GPU"
    )

    gone = {"capacity": {GPU: "0"}, "allocatable": {GPU: "0"}}  # its device plugin stopped
    kube.patch("nodes", "gpu-node", {"status": gone}, subresource="status")
    kube.set_pod_phase("gpu-task-1", "Pending")  # the scheduler: PodScheduled False
    st = wait_status(
        kube,
        "gpu-task",
        "Unschedulable naming the device",
        lambda s: "(scheduler: " in condition(s, "Scheduled").get("message", ""),
    )
    assert st["phase"] == "Pending"
    scheduled = condition(st, "Scheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert scheduled["message"].startswith(f"no node has {GPU} (scheduler: 0/1 nodes are")


def test_a_node_change_places_a_waiting_task_without_a_resync(
    kube: Cluster, tmp_path: Path
) -> None:
    """The operator watches nodes: with resyncs an hour apart, labelling a node is what makes
    the waiting task's Pod."""
    kube.add_pvc("models")
    kube.add_node("plain", {})
    with running_operator(kube, tmp_path, WASINN_RESYNC_SECONDS="3600"):
        create(kube, "watcher", nodeFeatures=[AMX])
        st = wait_status(
            kube,
            "watcher",
            "Unschedulable",
            lambda s: condition(s, "Scheduled").get("reason") == "Unschedulable",
        )
        assert condition(st, "Scheduled")["message"] == (
            "no node has label wasinn.dev/openvino=true; no node has label "
            f"{AMX}=true; label a node with wasinn.dev/openvino=true"
        )
        kube.patch("nodes", "plain", {"metadata": {"labels": {**LABELS, AMX: "true"}}})
        pod = wait_pod(kube, "watcher-1")
        assert pod["spec"]["nodeSelector"] == LABELS


def test_the_api_server_refuses_node_features_that_are_not_nfd_labels(kube: Cluster) -> None:
    with pytest.raises(ApiException) as refused:
        create(kube, "picky", nodeFeatures=["kubernetes.io/hostname=n1"])
    assert refused.value.status == 422
    assert "spec.nodeFeatures[0]" in str(refused.value.body)


def test_missing_claim_until_created(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    create(kube, "claimless", models={"claimName": "zoo"})
    st = wait_status(
        kube,
        "claimless",
        "ModelClaimNotFound",
        lambda s: condition(s, "Scheduled").get("reason") == "ModelClaimNotFound",
    )
    assert "'zoo' not found" in condition(st, "Scheduled")["message"]
    kube.add_pvc("zoo")
    pod = wait_pod(kube, "claimless-1")
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "zoo"


def test_deletion_removes_children(kube: Cluster, operator: OperatorProcess) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "gone", wasm={"inline": "AGFzbQEAAAA="})
    wait_pod(kube, "gone-1")
    assert kube.find("configmaps", "gone-wasm") is not None
    kube.delete("wasinntasks", "gone")
    wait_gone(kube, "pods", "gone-1")
    wait_gone(kube, "configmaps", "gone-wasm")


def test_a_task_deleted_with_orphan_propagation_leaves_its_pod(
    kube: Cluster, operator: OperatorProcess
) -> None:
    """`kubectl delete --cascade=orphan`: the Pod stays, without its owner; the operator
    deletes no child of a deleted task itself (that is the garbage collector's)."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "kept")
    wait_pod(kube, "kept-1")
    kube.delete("wasinntasks", "kept", propagation="Orphan")
    wait_gone(kube, "wasinntasks", "kept")
    kube.wait_for(
        lambda: not (kube.find("pods", "kept-1") or {}).get("metadata", {}).get("ownerReferences"),
        timeout=WAIT,
        what="the Pod without its owner",
    )
    create(kube, "after")  # the operator has handled the deletion by the time this starts
    wait_pod(kube, "after-1")
    kept = kube.find("pods", "kept-1")
    assert kept is not None and "deletionTimestamp" not in kept["metadata"]


def test_garbage_collector_removes_children_of_a_task_deleted_while_the_operator_is_down(
    kube: Cluster, operator: OperatorProcess
) -> None:
    """The owner references the operator writes are right: Kubernetes' garbage collector alone
    deletes a task's Pod and ConfigMap when the task goes while no operator runs."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "orphan", wasm={"inline": "AGFzbQEAAAA="})
    wait_pod(kube, "orphan-1")
    kube.wait_for(lambda: kube.find("configmaps", "orphan-wasm"), timeout=WAIT, what="ConfigMap")
    operator.stop()
    kube.delete("wasinntasks", "orphan")
    wait_gone(kube, "pods", "orphan-1")
    wait_gone(kube, "configmaps", "orphan-wasm")
    operator.start()  # (the fixture stops it and checks its exit)


def test_the_resync_lists_task_pods_as_metadata_only(
    kube: Cluster, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resync's one listing per round (which sweeps Pods deleted while the watch was away
    out of the Pod cache) names each task Pod by its task's uid, in one metadata-only call."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "named")
    wait_pod(kube, "named-1")
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    uid = kube.get("wasinntasks", "named")["metadata"]["uid"]
    versions = asyncio.run(Kube().task_pod_versions((kube.namespace,)))
    assert versions[(uid, "named-1")] == kube.get("pods", "named-1")["metadata"]["resourceVersion"]
    assert all(pod_uid for pod_uid, _ in versions)


def test_the_resync_reads_tasks_and_pods_in_pages(
    kube: Cluster, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resync's listings come a page at a time (the API server's limit and continue), so
    a thousand tasks with inline modules are never all in the operator's memory at once; the
    pages together hold every task and every task Pod, each once."""
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    names = [f"paged-{i}" for i in range(5)]
    for name in names:
        create(kube, name)
    for name in names:
        wait_pod(kube, f"{name}-1")
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    uids = {kube.get("wasinntasks", name)["metadata"]["uid"]: name for name in names}

    async def read() -> tuple[list[list[dict[str, Any]]], dict[tuple[str, str], str]]:
        api = Kube()
        pages = [page async for page in api.task_pages((kube.namespace,), limit=2)]
        return pages, await api.task_pod_versions((kube.namespace,), limit=2)

    pages, pods = asyncio.run(read())
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [task["metadata"]["uid"] for page in pages for task in page]
    assert sorted(listed) == sorted(uids)
    assert set(pods) == {(uid, f"{name}-1") for uid, name in uids.items()}
