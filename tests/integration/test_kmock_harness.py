"""The kmock harness: the official client and kopf against the emulated API over real HTTP."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from .kube import Cluster, kopf_runner, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "wasinn.dev", "v1alpha1", "wasinntasks"
PROBE = Path(__file__).with_name("kopf_probe.py")


def task(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WasiNNTask",
        "metadata": {"name": name},
        "spec": {"wasm": {"path": "/guests/classify.wasm"}, **spec},
    }


def pod(name: str, **labels: str) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels or None),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="proplet", image="img")]),
    )


def status_of(error: pytest.ExceptionInfo[k8s.ApiException]) -> int:
    return int(error.value.status)


def obj(value: object) -> dict[str, Any]:
    """The custom-objects API returns `object`: a dict, here."""
    assert isinstance(value, dict)
    return value


def test_task_crud_through_the_client(kmock_api: Cluster) -> None:
    custom = kmock_api.custom
    args = (GROUP, VERSION, "default", PLURAL)
    created = obj(custom.create_namespaced_custom_object(*args, {**task("t1"), "status": {"x": 1}}))
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert "status" not in created  # a CR's status belongs to the status subresource

    listed = obj(custom.list_namespaced_custom_object(*args))
    assert [item["metadata"]["name"] for item in listed["items"]] == ["t1"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert obj(custom.get_namespaced_custom_object(*args, "t1"))["metadata"]["uid"] == meta["uid"]

    patched = obj(
        custom.patch_namespaced_custom_object(
            *args, "t1", {"spec": {"args": ["--model", "m"]}, "status": {"ignored": True}}
        )
    )
    assert patched["spec"] == {"wasm": {"path": "/guests/classify.wasm"}, "args": ["--model", "m"]}
    assert "status" not in patched  # the main endpoint ignores the status
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    with_status = obj(
        custom.patch_namespaced_custom_object_status(
            *args, "t1", {"status": {"phase": "Running"}, "spec": {"args": []}}
        )
    )
    assert with_status["status"] == {"phase": "Running"}
    assert with_status["spec"]["args"] == ["--model", "m"]  # /status changes only the status
    assert with_status["metadata"]["generation"] == 2

    same = obj(custom.patch_namespaced_custom_object_status(*args, "t1", with_status))
    assert same["metadata"]["resourceVersion"] == with_status["metadata"]["resourceVersion"]

    custom.delete_namespaced_custom_object(*args, "t1")
    with pytest.raises(k8s.ApiException) as error:
        custom.get_namespaced_custom_object(*args, "t1")
    assert status_of(error) == 404


def test_pod_crud_through_the_client(kmock_api: Cluster) -> None:
    core = kmock_api.core
    created = core.create_namespaced_pod("default", pod("p1", app="a"))
    assert created.metadata is not None and created.metadata.uid
    assert created.status is not None and created.status.phase == "Pending"
    core.create_namespaced_pod("default", pod("p2", app="b"))

    names = [p.metadata.name for p in core.list_namespaced_pod("default").items if p.metadata]
    assert names == ["p1", "p2"]
    selected = core.list_namespaced_pod("default", label_selector="app in (b,c)").items
    assert [p.metadata.name for p in selected if p.metadata] == ["p2"]
    by_field = core.list_namespaced_pod("default", field_selector="metadata.name=p1").items
    assert [p.metadata.name for p in by_field if p.metadata] == ["p1"]

    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"app": "z"}}})
    core.patch_namespaced_pod_status("p1", "default", {"status": {"phase": "Running"}})
    fetched = core.read_namespaced_pod("p1", "default")
    assert fetched.metadata is not None and fetched.metadata.labels == {"app": "z"}
    assert fetched.status is not None and fetched.status.phase == "Running"

    with pytest.raises(k8s.ApiException) as error:
        core.create_namespaced_pod("default", pod("p1"))
    assert status_of(error) == 409
    core.delete_namespaced_pod("p1", "default")
    assert kmock_api.find("pods", "p1") is None
    assert [p["metadata"]["name"] for p in kmock_api.list("pods")] == ["p2"]


def test_watch_streams_added_modified_deleted(kmock_api: Cluster) -> None:
    kmock_api.core.create_namespaced_pod("default", pod("w1"))
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()  # type: ignore[no-untyped-call]

    def consume() -> None:
        for event in stream.stream(  # type: ignore[no-untyped-call]
            kmock_api.core.list_namespaced_pod, namespace="default", timeout_seconds=30
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                stream.stop()  # type: ignore[no-untyped-call]

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        wait_for(lambda: ("ADDED", "w1") in seen, what="the initial ADDED")
        kmock_api.set_pod_phase("default", "w1", "Running", node="n1")
        kmock_api.core.create_namespaced_pod("default", pod("w2"))
        kmock_api.delete("pods", "w1")
        wait_for(lambda: ("DELETED", "w1") in seen, what="DELETED")
    finally:
        stream.stop()  # type: ignore[no-untyped-call]
        consumer.join(35)
    assert not consumer.is_alive()
    assert seen[0] == ("ADDED", "w1")
    assert ("MODIFIED", "w1") in seen
    assert ("ADDED", "w2") in seen
    assert seen.index(("ADDED", "w2")) < seen.index(("DELETED", "w1"))


def test_selector_watch_sees_objects_enter_and_leave(kmock_api: Cluster) -> None:
    kmock_api.core.create_namespaced_pod("default", pod("s1", app="x"))
    since = kmock_api.list("pods")[0]["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()  # type: ignore[no-untyped-call]

    def consume() -> None:
        for event in stream.stream(  # type: ignore[no-untyped-call]
            kmock_api.core.list_namespaced_pod,
            namespace="default",
            label_selector="app=y",
            resource_version=since,
            timeout_seconds=30,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                stream.stop()  # type: ignore[no-untyped-call]

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        wait_for(lambda: kmock_api.watchers("pods"), what="the watch to subscribe")
        kmock_api.patch("pods", "s1", {"metadata": {"labels": {"app": "y"}}})
        kmock_api.patch("pods", "s1", {"metadata": {"labels": {"app": "z"}}})
        wait_for(lambda: ("DELETED", "s1") in seen, what="s1 to leave the selection")
    finally:
        stream.stop()  # type: ignore[no-untyped-call]
        consumer.join(35)
    assert not consumer.is_alive()
    assert seen == [("ADDED", "s1"), ("DELETED", "s1")]


def test_watch_ends_after_timeout_seconds(kmock_api: Cluster) -> None:
    kmock_api.core.create_namespaced_pod("default", pod("idle"))
    seen: list[str] = []

    def consume() -> None:
        for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
            kmock_api.core.list_namespaced_pod, namespace="default", timeout_seconds=1
        ):
            seen.append(event["type"])

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(20)  # the server ends the stream after timeoutSeconds
    assert not consumer.is_alive()
    assert seen == ["ADDED"]


def test_finalizers_hold_deletion_and_owners_collect_dependents(kmock_api: Cluster) -> None:
    owner = kmock_api.create(
        PLURAL, {**task("t2"), "metadata": {"name": "t2", "finalizers": ["f"]}}
    )
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WasiNNTask", "name": "t2",
           "uid": owner["metadata"]["uid"], "controller": True}  # fmt: skip
    kmock_api.create("pods", {"metadata": {"name": "t2-run", "ownerReferences": [ref]}})
    kmock_api.create("configmaps", {"metadata": {"name": "kept", "ownerReferences": [ref]}})
    kmock_api.patch("configmaps", "kept", {"metadata": {"ownerReferences": None}})

    marked = kmock_api.delete(PLURAL, "t2")
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["generation"] == 2
    assert kmock_api.get(PLURAL, "t2")["metadata"]["finalizers"] == ["f"]
    assert kmock_api.find("pods", "t2-run") is not None
    with pytest.raises(k8s.ApiException) as error:
        kmock_api.patch(PLURAL, "t2", {"metadata": {"finalizers": ["f", "g"]}})
    assert status_of(error) == 422

    kmock_api.patch(PLURAL, "t2", {"metadata": {"finalizers": None}})
    assert kmock_api.find(PLURAL, "t2") is None
    assert kmock_api.find("pods", "t2-run") is None  # garbage-collected
    assert kmock_api.find("configmaps", "kept") is not None


def test_server_rules(kmock_api: Cluster) -> None:
    event = kmock_api.create("events", {"metadata": {"generateName": "kopf-event-"}})
    assert event["metadata"]["name"].startswith("kopf-event-")
    with pytest.raises(k8s.ApiException) as error:
        kmock_api.create("configmaps", {"metadata": {"name": "c"}}, namespace="nowhere")
    assert status_of(error) == 404

    stale = kmock_api.create("configmaps", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    kmock_api.patch("configmaps", "c", {"data": {"a": "2"}})
    with pytest.raises(k8s.ApiException) as error:
        kmock_api.replace("configmaps", {**stale, "data": {"a": "3"}})
    assert status_of(error) == 409
    version = stale["metadata"]["resourceVersion"]
    test_op = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
    with pytest.raises(k8s.ApiException) as error:
        kmock_api.patch("configmaps", "c", [test_op])
    assert status_of(error) == 422  # kopf relies on this for its JSON patches
    kmock_api.create(PLURAL, task("c"))
    for unsupported in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        with pytest.raises(k8s.ApiException) as error:
            kmock_api.custom.patch_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, "c", {}, _content_type=unsupported
            )
        assert status_of(error) == 415  # as for a CRD on a real server

    kmock_api.fail_next("POST", "pods", 403, message="quota")
    with pytest.raises(k8s.ApiException) as error:
        kmock_api.core.create_namespaced_pod("default", pod("q"))
    assert status_of(error) == 403
    kmock_api.core.create_namespaced_pod("default", pod("q"))  # only once


def test_cluster_doubles(kmock_api: Cluster) -> None:
    kmock_api.add_node("gpu-1", {"wasinn.dev/openvino": "true"})
    kmock_api.add_node("cpu-1", ready=False)
    nodes = kmock_api.list("nodes", label_selector="wasinn.dev/openvino=true")
    assert [n["metadata"]["name"] for n in nodes] == ["gpu-1"]
    ready = kmock_api.get("nodes", "cpu-1")["status"]["conditions"][0]
    assert (ready["type"], ready["status"]) == ("Ready", "False")

    pvc = kmock_api.add_pvc("default", "models")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["volumeName"] == f"pvc-{pvc['metadata']['uid']}"

    containers = [{"name": "proplet", "image": "i"}]
    kmock_api.create("pods", {"metadata": {"name": "p"}, "spec": {"containers": containers}})
    pending = kmock_api.set_pod_phase("default", "p", "Pending", unschedulable_message="0/2 nodes")
    scheduled = pending["status"]["conditions"][0]
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == (
        "False", "Unschedulable", "0/2 nodes",
    )  # fmt: skip

    running = kmock_api.set_pod_phase("default", "p", "Running", node="gpu-1")
    assert running["spec"]["nodeName"] == "gpu-1"
    assert running["status"]["hostIP"] == "10.0.0.1"
    assert "running" in running["status"]["containerStatuses"][0]["state"]

    failed = kmock_api.set_pod_phase(
        "default", "p", "Failed", exit_code=137, termination_message='{"error": "x"}',
        reason="DeadlineExceeded",
    )  # fmt: skip
    container = failed["status"]["containerStatuses"][0]
    assert container["name"] == "proplet"
    terminated = container["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (
        137, "Error", '{"error": "x"}',
    )  # fmt: skip
    assert failed["status"]["reason"] == "DeadlineExceeded"
    assert failed["status"]["startTime"] == running["status"]["startTime"]

    kmock_api.set_pod_log("default", "p", "line 1\nline 2\n")
    assert kmock_api.core.read_namespaced_pod_log("p", "default") == "line 1\nline 2\n"


def test_wait_for_reports_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the impossible; last: 0"):
        wait_for(lambda: 0, timeout=0.2, what="the impossible")


def test_kopf_operator_against_the_emulator(kmock_api: Cluster) -> None:
    kmock_api.add_node("n1", {"wasinn.dev/openvino": "true"})
    with kopf_runner(PROBE) as runner:
        created = kmock_api.create(PLURAL, task("k1"))
        found = wait_for(lambda: kmock_api.find("pods", "k1-run"), what="the task's pod")
        run = obj(found)
        owner = run["metadata"]["ownerReferences"][0]
        assert owner["uid"] == created["metadata"]["uid"]
        assert run["metadata"]["uid"]  # objects the operator creates get uids too

        status = wait_for(
            lambda: kmock_api.get(PLURAL, "k1").get("status", {}).get("podName"),
            what="the task's status",
        )
        assert status == "k1-run"
        assert kmock_api.get(PLURAL, "k1")["status"]["podUid"] == run["metadata"]["uid"]
        posted = wait_for(
            lambda: [e for e in kmock_api.list("events") if e.get("reason") == "PodCreated"],
            what="kopf to post the Event",
        )
        assert posted[0]["involvedObject"]["uid"] == created["metadata"]["uid"]
        assert posted[0]["metadata"]["name"].startswith("kopf-event-")  # generateName

        kmock_api.set_pod_phase("default", "k1-run", "Running", node="n1")
        wait_for(
            lambda: kmock_api.get(PLURAL, "k1")["status"].get("podPhase") == "Running",
            what="the pod event handler",
        )
        kmock_api.set_pod_phase("default", "k1-run", "Succeeded", exit_code=0)
        wait_for(
            lambda: kmock_api.get(PLURAL, "k1")["status"].get("exitCode") == 0,
            what="the pod's exit code",
        )

        marked = kmock_api.delete(PLURAL, "k1")
        assert marked["metadata"]["deletionTimestamp"]
        assert marked["metadata"]["finalizers"]  # kopf's, for its delete handler
        wait_for(lambda: kmock_api.find(PLURAL, "k1") is None, what="kopf to release the task")
        assert kmock_api.find("pods", "k1-run") is None

    assert runner.exception is None
    assert runner.exit_code == 0
    assert "probe: task k1 released" in runner.output
    assert "Traceback" not in runner.output
