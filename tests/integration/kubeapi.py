"""Sync helpers over the official client for one test namespace of the test control plane.

`Cluster` reads and writes objects as plain dicts (the JSON the API server sends) and plays the
parts of a cluster the control plane does not run, as those components do it through the API:
a kubelet registering its Node, a volume binding a claim, the scheduler binding a Pod
(`pods/binding`), the kubelet writing Pod status (`pods/status`) and confirming a graceful
deletion (a delete with grace period 0), the node lifecycle controller untainting a Ready Node.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config

JSON = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}" + (f"/{name}" if name is not None else "")


RESOURCES = {
    r.plural: r
    for r in (
        Resource("", "v1", "pods", "Pod"),
        Resource("", "v1", "configmaps", "ConfigMap"),
        Resource("", "v1", "events", "Event"),
        Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
        Resource("", "v1", "nodes", "Node", namespaced=False),
        Resource("", "v1", "namespaces", "Namespace", namespaced=False),
        Resource("wasinn.dev", "v1alpha1", "wasinntasks", "WasiNNTask"),
    )
}


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    """An official-client ApiClient for this kubeconfig only (no global config, no proxies)."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    configuration.proxy = None
    return k8s.ApiClient(configuration=configuration)


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "a condition") -> T:
    """Poll until `predicate()` is truthy and return it; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.1)
        last = predicate()
    return last


class Cluster:
    """Admin access to the control plane, defaulting to `namespace` (created by the caller)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.client = api_client(kubeconfig)
        self.core = k8s.CoreV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)
        self.nodes: list[str] = []  # created here: cluster-wide, so removed by `cleanup`

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # -- plain REST --

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        request = self.client.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers,
            body=body,
        )  # fmt: skip
        response = self.client.call_api(*request, _request_timeout=60)
        response.read()  # type: ignore[no-untyped-call]
        return self.client.response_deserialize(response, {"2XX": "object"}).data

    def _ns(self, resource: Resource, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if resource.namespaced else None

    def create(self, plural: str, body: Mapping[str, Any], namespace: str | None = None) -> JSON:
        r = RESOURCES[plural]
        full = {"apiVersion": r.api_version, "kind": r.kind, **body}
        return cast(JSON, self.call("POST", r.path(self._ns(r, namespace)), body=full))

    def get(self, plural: str, name: str, namespace: str | None = None) -> JSON:
        """The object; raises kubernetes.client.ApiException (status 404) if absent."""
        r = RESOURCES[plural]
        return cast(JSON, self.call("GET", r.path(self._ns(r, namespace), name)))

    def find(self, plural: str, name: str, namespace: str | None = None) -> JSON | None:
        """The object, or None if absent."""
        try:
            return self.get(plural, name, namespace)
        except k8s.ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, plural: str, namespace: str | None = None, *, all_namespaces: bool = False,
             label_selector: str | None = None) -> builtins.list[JSON]:  # fmt: skip
        r = RESOURCES[plural]
        path = r.path(None if all_namespaces else self._ns(r, namespace))
        found = self.call("GET", path, query={"labelSelector": label_selector})
        return cast(builtins.list[JSON], found["items"])

    def patch(self, plural: str, name: str, body: Any, namespace: str | None = None, *,
              subresource: str | None = None) -> JSON:  # fmt: skip
        """A merge patch (a dict) or a JSON patch (a list), on the object or a subresource."""
        r = RESOURCES[plural]
        path = r.path(self._ns(r, namespace), name) + (f"/{subresource}" if subresource else "")
        kind = "json-patch" if isinstance(body, list) else "merge-patch"
        ctype = f"application/{kind}+json"
        return cast(JSON, self.call("PATCH", path, body=body, content_type=ctype))

    def delete(
        self,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        propagation: str | None = None,
    ) -> JSON:
        r = RESOURCES[plural]
        options: JSON = {}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation is not None:  # Background, Foreground or Orphan
            options["propagationPolicy"] = propagation
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        return cast(JSON, self.call("DELETE", r.path(self._ns(r, namespace), name), body=options))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60.0,
                 what: str = "a condition") -> T:  # fmt: skip
        return wait_for(predicate, timeout, what)

    # -- the rest of a cluster --

    def add_node(self, name: str, labels: Mapping[str, str] | None = None, *, ready: bool = True,
                 kubelet_port: int = 10250,
                 devices: Mapping[str, str] | None = None) -> JSON:  # fmt: skip
        """A Node as its kubelet registers it: Ready (or NotReady), at 127.0.0.1:kubelet_port,
        with the extended resources of `devices` as a device plugin reports them."""
        now = now_rfc3339()
        condition = {"type": "Ready", "status": "True" if ready else "False",
                     "reason": "KubeletReady" if ready else "KubeletNotReady",
                     "message": "kubelet is posting ready status",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", **(devices or {})}
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}
        created = self.create("nodes", {"metadata": {"name": name, "labels": labels}})
        self.nodes.append(name)
        if ready:  # the node lifecycle controller lifts the taint admission put on a new Node
            taints = [t for t in (created.get("spec") or {}).get("taints") or []
                      if t.get("key") != "node.kubernetes.io/not-ready"]  # fmt: skip
            self.patch("nodes", name, [{"op": "add", "path": "/spec/taints", "value": taints}])
        status = {
            "conditions": [condition], "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        }  # fmt: skip
        return self.patch("nodes", name, {"status": status}, subresource="status")

    def add_pvc(self, name: str, *, bound: bool = True) -> JSON:
        """A ReadOnlyMany claim, Bound (as the volume binder would record it) unless not."""
        spec = {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}}}  # fmt: skip
        if bound:
            spec["volumeName"] = f"pv-{name}-{uuid.uuid4().hex[:6]}"
        pvc = self.create("persistentvolumeclaims", {"metadata": {"name": name}, "spec": spec})
        if not bound:
            return pvc
        status = {"phase": "Bound", "accessModes": ["ReadOnlyMany"], "capacity": {"storage": "1Gi"}}
        return self.patch("persistentvolumeclaims", name, {"status": status},
                          subresource="status")  # fmt: skip

    def bind(self, pod: str, node: str, namespace: str | None = None) -> None:
        """The scheduler's decision: POST pods/NAME/binding."""
        path = RESOURCES["pods"].path(namespace or self.namespace, pod) + "/binding"
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}  # fmt: skip
        self.call("POST", path, body=body)

    def set_pod_phase(
        self,
        name: str,
        phase: str,
        node: str | None = None,
        exit_code: int | None = None,
        termination_message: str | None = None,
        reason: str | None = None,
        namespace: str | None = None,
    ) -> JSON:
        """Play the scheduler and kubelet: bind the Pod to `node` (unless bound) and write the
        status a kubelet writes for `phase`. Pending without a node: PodScheduled False
        (Unschedulable). Running: container running and Ready. Succeeded/Failed: container
        terminated with `exit_code` (default 0/1) and `termination_message`; `reason` goes to
        `status.reason` (e.g. DeadlineExceeded)."""
        if phase not in {"Pending", "Running", "Succeeded", "Failed"}:
            raise ValueError(f"unknown pod phase {phase!r}")
        namespace = namespace or self.namespace
        pod = self.get("pods", name, namespace)
        bound = (pod.get("spec") or {}).get("nodeName")
        if node is not None and bound is None:
            self.bind(name, node, namespace)
            pod = self.get("pods", name, namespace)
            bound = node
        if bound is None and phase != "Pending":
            raise ValueError(f"a {phase} pod runs on a node: pass node=")
        old = pod.get("status") or {}
        now = now_rfc3339()
        started = old.get("startTime") or now
        status: JSON = {"phase": phase, "qosClass": old.get("qosClass", "BestEffort")}
        if bound is None:
            status["conditions"] = [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "lastTransitionTime": now,
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node selector.",
            }]  # fmt: skip
        else:
            status.update(startTime=started, hostIP="127.0.0.1", hostIPs=[{"ip": "127.0.0.1"}])
            ready = "True" if phase == "Running" else "False"
            status["conditions"] = [
                {"type": kind, "status": value, "lastTransitionTime": now}
                for kind, value in (("PodScheduled", "True"), ("Initialized", "True"),
                                    ("ContainersReady", ready), ("Ready", ready))
            ]  # fmt: skip
            status["containerStatuses"] = [self._container(pod, phase, started, now, exit_code,
                                                           termination_message)]  # fmt: skip
        if reason is not None:
            status["reason"] = reason
        return self.patch("pods", name, [{"op": "add", "path": "/status", "value": status}],
                          namespace, subresource="status")  # fmt: skip

    @staticmethod
    def _container(pod: JSON, phase: str, started: str, now: str, exit_code: int | None,
                   message: str | None) -> JSON:  # fmt: skip
        spec = pod["spec"]["containers"][0]
        container: JSON = {"name": spec["name"], "image": spec["image"], "imageID": "",
                           "restartCount": 0, "ready": False, "started": False}  # fmt: skip
        container_id = f"containerd://{uuid.uuid5(uuid.NAMESPACE_URL, pod['metadata']['uid']).hex}"
        if phase == "Pending":
            container["state"] = {"waiting": {"reason": "ContainerCreating"}}
        elif phase == "Running":
            container.update(ready=True, started=True, containerID=container_id,
                             state={"running": {"startedAt": started}})  # fmt: skip
        else:
            code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
            terminated: JSON = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "startedAt": started, "finishedAt": now,
                                "containerID": container_id}  # fmt: skip
            if message is not None:
                terminated["message"] = message
            container.update(containerID=container_id, state={"terminated": terminated})
        return container

    def confirm_deletion(self, name: str, uid: str, namespace: str | None = None) -> bool:
        """The kubelet's last word on a gracefully deleted Pod (its containers are gone):
        delete it for good. False when it is gone already."""
        try:
            self.delete("pods", name, namespace, grace_period_seconds=0, uid=uid)
        except k8s.ApiException as e:
            if e.status in (404, 409):  # gone, or another Pod of that name now
                return False
            raise
        return True

    def cleanup(self) -> None:
        """Remove what a test leaves: its Nodes, its Pods at once (no kubelet confirms their
        deletion), its namespace (the namespace controller deletes the rest)."""
        for node in self.nodes:
            with contextlib.suppress(k8s.ApiException):  # (a test may have deleted it)
                self.delete("nodes", node)
        for pod in self.list("pods"):
            meta = pod["metadata"]
            self.confirm_deletion(meta["name"], meta["uid"])
        self.call("DELETE", RESOURCES["namespaces"].path(None, self.namespace))
        self.close()
