"""A tiny kopf operator for the kmock harness's self-test, loaded by path by `kopf run`.

On a new WasiNNTask it creates a Pod owned by the task (official client), records the Pod in the
task's status and posts a PodCreated Event; on every event of such a Pod it copies the Pod's
phase, node and exit code to the task's status; its delete handler makes kopf put a finalizer on
tasks.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client as k8s

from tests.integration.kube import api_client

GROUP, VERSION, PLURAL = "wasinn.dev", "v1alpha1", "wasinntasks"
TASK_LABEL = "wasinn.dev/task"


@functools.cache
def _client(kubeconfig: str) -> k8s.ApiClient:
    return api_client(Path(kubeconfig))


def client() -> k8s.ApiClient:
    return _client(os.environ["KUBECONFIG"])


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Read KUBECONFIG now; kopf's default login via the client would read a stale default path.
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
def close_client(**_: Any) -> None:
    if _client.cache_info().currsize:
        client().close()  # type: ignore[no-untyped-call]
    _client.cache_clear()


@kopf.on.create(GROUP, VERSION, PLURAL)
def start(
    body: kopf.Body, name: str, namespace: str | None, uid: str, patch: kopf.Patch, **_: Any
) -> None:
    owner = k8s.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}", kind="WasiNNTask", name=name, uid=uid,
        controller=True, block_owner_deletion=True,
    )  # fmt: skip
    pod = k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=f"{name}-run", labels={TASK_LABEL: name}, owner_references=[owner]
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            containers=[k8s.V1Container(name="proplet", image="localhost/wasinn-proplet:dev")],
        ),
    )
    created = k8s.CoreV1Api(client()).create_namespaced_pod(namespace or "default", pod)
    assert created.metadata is not None
    patch.status["podName"] = created.metadata.name
    patch.status["podUid"] = created.metadata.uid
    patch.status["phase"] = "Scheduled"
    kopf.info(body, reason="PodCreated", message=f"created pod {created.metadata.name}")


@kopf.on.delete(GROUP, VERSION, PLURAL)
def stop(logger: kopf.Logger, name: str, **_: Any) -> None:
    logger.info(f"probe: task {name} released")


@kopf.on.event("", "v1", "pods", labels={TASK_LABEL: kopf.PRESENT})
def pod_event(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    phase = body.get("status", {}).get("phase")
    if phase is None or body.metadata.get("deletionTimestamp"):
        return
    statuses = body.get("status", {}).get("containerStatuses") or [{}]
    terminated = statuses[0].get("state", {}).get("terminated") or {}
    status = {"podPhase": phase, "nodeName": body.spec.get("nodeName")}
    if "exitCode" in terminated:
        status["exitCode"] = terminated["exitCode"]
    try:
        k8s.CustomObjectsApi(client()).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace or "default", PLURAL, labels[TASK_LABEL], {"status": status}
        )
    except k8s.ApiException as e:
        if e.status != 404:  # the task may be gone already
            raise
