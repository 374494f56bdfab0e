"""Smoke suite for the single-node cluster of `hack/cluster` (marker `cluster`).

Run: `hack/cluster up && pytest -m cluster tests/cluster` (the conftest brings the cluster up
itself when needed). Pods use the locally built busybox image with imagePullPolicy: Never.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..conftest import pinned_version
from .chart_fixtures import build_and_load

pytestmark = pytest.mark.cluster

# `kubectl` is conftest's Kubectl: kubectl(...) -> stdout, .run/.apply/.get/.delete,
# .wait_until(what, predicate, timeout) and .pod_phase(name, namespace).
Kubectl = Any
NODE_LABEL_KEY = "wasinn.dev/openvino"
NODE_LABEL_VALUE = "true"
MODELS_CLAIM = "models"

EXPECTED_VERSION = "v" + pinned_version("K8S_VERSION")


def busybox_pod(name: str, namespace: str, image: str, script: str, **spec: object) -> dict:
    pod: dict = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"wasinn.dev/test": "smoke"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                }
            ],
        },
    }
    pod["spec"].update(spec)
    return pod


def test_server_version_and_labelled_node(kubectl: Kubectl, node_name: str) -> None:
    version = json.loads(kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == EXPECTED_VERSION
    node = kubectl.get("node", node_name)
    assert node is not None
    assert node["metadata"]["labels"][NODE_LABEL_KEY] == NODE_LABEL_VALUE
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"


def test_models_claim_bound_read_only(kubectl: Kubectl, models_dir: Path) -> None:
    pvc = kubectl.get("pvc", MODELS_CLAIM, "default")
    assert pvc is not None, "hack/cluster up creates the claim default/models"
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    pv = kubectl.get("pv", pvc["spec"]["volumeName"])
    assert pv is not None
    assert Path(pv["spec"]["hostPath"]["path"]) == models_dir


def test_pod_runs_on_labelled_node_with_models(
    kubectl: Kubectl, smoke_image: str, node_name: str, models_dir: Path
) -> None:
    name = f"smoke-models-{uuid.uuid4().hex[:6]}"
    script = (
        "echo hello-from-wasinn-smoke; "
        "echo models: $(ls /models); "
        "if touch /models/.write-test 2>/tmp/err; then echo WRITABLE; "
        "else echo READONLY $(cat /tmp/err); fi"
    )
    pod = busybox_pod(
        name,
        "default",
        smoke_image,
        script,
        nodeSelector={NODE_LABEL_KEY: NODE_LABEL_VALUE},
        # root inside the Pod: a failed write then proves the mount, not file modes, is read-only
        securityContext={"runAsUser": 0},
        volumes=[
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": MODELS_CLAIM, "readOnly": True},
            }
        ],
    )
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "models", "mountPath": "/models", "readOnly": True}
    ]
    kubectl.apply(pod)
    try:
        phase = kubectl.wait_until(
            f"pod {name} to finish",
            lambda: (p := kubectl.pod_phase(name, "default")) in ("Succeeded", "Failed") and p,
            timeout=120,
        )
        logs = kubectl("logs", name, "-n", "default")
        assert phase == "Succeeded", logs
        got = kubectl.get("pod", name, "default")
        assert got is not None and got["spec"]["nodeName"] == node_name
        lines = logs.splitlines()
        assert lines[0] == "hello-from-wasinn-smoke"
        expected = sorted(p.name for p in models_dir.iterdir() if not p.name.startswith("."))
        assert lines[1].split()[1:] == expected
        assert lines[2].startswith("READONLY") and "Read-only file system" in lines[2], lines[2]
    finally:
        kubectl.delete("pod", name, "default")


def test_pod_with_absent_label_stays_pending(
    kubectl: Kubectl, smoke_image: str, namespace: str
) -> None:
    name = "nowhere"
    kubectl.apply(
        busybox_pod(
            name, namespace, smoke_image, "true", nodeSelector={"wasinn.dev/absent": "true"}
        )
    )

    def unschedulable() -> dict | None:
        pod = kubectl.get("pod", name, namespace)
        for cond in (pod or {}).get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return cond
        return None

    cond = kubectl.wait_until("the scheduler to give up on the pod", unschedulable, timeout=60)
    assert cond["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in cond["message"], cond["message"]
    pod = kubectl.get("pod", name, namespace)
    assert pod is not None and pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    )
    assert any(e["reason"] == "FailedScheduling" for e in json.loads(events)["items"])


def test_service_account_can_do_exactly_what_its_role_allows(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "reader", "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pod-reader", "namespace": namespace},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "reader-reads-pods", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ]
    )
    who = f"system:serviceaccount:{namespace}:reader"

    def can_i(*args: str) -> str:
        proc = kubectl.run("auth", "can-i", *args, f"--as={who}", check=False)
        return proc.stdout.strip()

    cases = {
        ("list", "pods", "-n", namespace): "yes",
        ("get", "pods", "-n", namespace): "yes",
        ("watch", "pods", "-n", namespace): "yes",
        ("create", "pods", "-n", namespace): "no",
        ("delete", "pods", "-n", namespace): "no",
        ("get", "secrets", "-n", namespace): "no",
        ("list", "configmaps", "-n", namespace): "no",
        ("list", "pods", "-n", "default"): "no",
        ("list", "nodes"): "no",
    }
    got = {
        args: kubectl.wait_until(f"can-i {' '.join(args)}", lambda a=args: can_i(*a), timeout=30)
        for args in cases
    }
    assert got == cases

    # The same through a real service-account token (TokenRequest) instead of impersonation.
    token = kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").strip()
    raw = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = raw["clusters"][0]["cluster"]
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
        json.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "reader", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "c",
                        "context": {"cluster": "c", "user": "reader", "namespace": namespace},
                    }
                ],
                "current-context": "c",
            },
            f,
        )
        token_cfg = f.name
    try:
        ok = kubectl.run("get", "pods", "-n", namespace, kubeconfig=token_cfg, check=False)
        assert ok.returncode == 0, ok.stderr
        denied = kubectl.run("get", "secrets", "-n", namespace, kubeconfig=token_cfg, check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
        assert who in denied.stderr
    finally:
        os.unlink(token_cfg)


def test_deleting_owner_deletes_dependents(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": namespace},
        }
    )
    owner = kubectl.get("configmap", "owner", namespace)
    assert owner is not None
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"dependent-{i}",
                    "namespace": namespace,
                    "ownerReferences": [ref],
                },
                "data": {"i": str(i)},
            }
            for i in range(3)
        ]
    )
    kubectl.run("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    kubectl.wait_until(
        "the garbage collector to delete the dependents",
        lambda: all(
            kubectl.get("configmap", f"dependent-{i}", namespace) is None for i in range(3)
        ),
        timeout=90,
    )


def test_service_reaches_pod_by_ip_and_by_name(
    kubectl: Kubectl, smoke_image: str, namespace: str
) -> None:
    server = busybox_pod(
        "web",
        namespace,
        smoke_image,
        "mkdir -p /tmp/www && echo smoke-service-ok > /tmp/www/index.html"
        " && exec httpd -f -p 8080 -h /tmp/www",
        restartPolicy="Always",
    )
    server["metadata"]["labels"]["app"] = "web"
    server["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
    server["spec"]["containers"][0]["readinessProbe"] = {
        "tcpSocket": {"port": 8080},
        "periodSeconds": 1,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    kubectl.apply([server, service])
    kubectl.run(
        "wait", "--for=condition=Ready", "pod/web", "-n", namespace, "--timeout=90s", timeout=100
    )
    svc = kubectl.get("service", "web", namespace)
    assert svc is not None
    cluster_ip = svc["spec"]["clusterIP"]

    def endpoint_ready() -> bool:
        slices = json.loads(
            kubectl(
                "get",
                "endpointslices",
                "-n",
                namespace,
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "json",
            )
        )
        return any(
            ep.get("conditions", {}).get("ready")
            for s in slices["items"]
            for ep in s.get("endpoints") or []
        )

    kubectl.wait_until("the Service's endpoints", endpoint_ready, timeout=60)
    # kube-proxy programs the rules asynchronously: the client retries, boundedly, by itself.
    # (Plain HTTP over nc: the static busybox's wget crashes without NSS files in the image.)
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    client = busybox_pod(
        "client",
        namespace,
        smoke_image,
        f"get() {{ for i in $(seq 1 30); do {request} | nc -w 2 $1 80 > /tmp/out"
        " && grep -q ' 200 ' /tmp/out && cat /tmp/out && return 0; sleep 1; done; return 1; }; "
        # By the cluster IP, then by name through the cluster DNS (CoreDNS, resolv.conf search).
        f"get {cluster_ip} && echo BY-NAME && get web && get web.{namespace}.svc.cluster.local",
    )
    kubectl.apply(client)
    phase = kubectl.wait_until(
        "the client pod to finish",
        lambda: (p := kubectl.pod_phase("client", namespace)) in ("Succeeded", "Failed") and p,
        timeout=120,
    )
    logs = kubectl("logs", "client", "-n", namespace)
    assert phase == "Succeeded", logs
    assert logs.count("smoke-service-ok") == 3, logs


OPERATOR_IMAGE = "localhost/wasinn-operator:dev"
# The operator image's interpreter, with the `kubernetes` client installed.
OPERATOR_PYTHON = "/opt/wasinn/bin/python"


@pytest.fixture(scope="module")
def operator_image(kubeconfig: str) -> str:
    """The operator image (it has python3 and the kubernetes client), built and loaded."""
    build_and_load(OPERATOR_IMAGE)
    return OPERATOR_IMAGE


# Runs in the Pod: the in-cluster configuration (KUBERNETES_SERVICE_HOST/PORT, the mounted token
# and CA), then its own Pod through the API; a Secret must be forbidden. Retries are bounded.
IN_CLUSTER_SCRIPT = """
import os, sys, time
import kubernetes
from kubernetes.client.rest import ApiException

kubernetes.config.load_incluster_config()
api = kubernetes.client.CoreV1Api()
name, namespace = os.environ["POD_NAME"], os.environ["POD_NAMESPACE"]
print("api", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
for attempt in range(30):
    try:
        pod = api.read_namespaced_pod(name, namespace, _request_timeout=5)
        break
    except ApiException:
        raise
    except Exception as exc:
        print("retry", attempt, type(exc).__name__, exc, file=sys.stderr)
        time.sleep(1)
else:
    sys.exit("the API server stayed unreachable")
print("own-pod", pod.metadata.name, pod.metadata.namespace, pod.spec.service_account_name)
try:
    api.read_namespaced_secret("anything", namespace, _request_timeout=5)
    print("secret-allowed")
except ApiException as exc:
    print("secret-status", exc.status)
"""


def test_pod_reads_its_own_pod_through_the_api(
    kubectl: Kubectl, operator_image: str, namespace: str, node_name: str
) -> None:
    node = kubectl.get("node", node_name)
    assert node is not None
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    endpoints = kubectl.get("endpoints", "kubernetes", "default")
    assert endpoints is not None
    addresses = [
        (a["ip"], p["port"])
        for s in endpoints.get("subsets") or []
        for a in s.get("addresses") or []
        for p in s.get("ports") or []
    ]
    # The apiserver's endpoint reconciler publishes its --advertise-address (the node IP).
    assert [ip for ip, _ in addresses] == [node_ip], f"kubernetes Service endpoints: {addresses}"
    service = kubectl.get("service", "kubernetes", "default")
    assert service is not None
    name = "api-client"
    kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "self-reader", "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "get-pods", "namespace": namespace},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "self-reader-gets-pods", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "get-pods",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "self-reader", "namespace": namespace}
                ],
            },
        ]
    )
    pod = busybox_pod(
        name,
        namespace,
        operator_image,
        "",
        serviceAccountName="self-reader",
        automountServiceAccountToken=True,
    )
    container = pod["spec"]["containers"][0]
    container["command"] = [OPERATOR_PYTHON, "-c", IN_CLUSTER_SCRIPT]
    container["env"] = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for var, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"))
    ]
    kubectl.apply(pod)
    phase = kubectl.wait_until(
        f"pod {name} to finish",
        lambda: (p := kubectl.pod_phase(name, namespace)) in ("Succeeded", "Failed") and p,
        timeout=120,
    )
    logs = kubectl("logs", name, "-n", namespace)
    assert phase == "Succeeded", logs
    lines = logs.splitlines()
    # The kubelet points Pods at the Service's ClusterIP, which kube-proxy DNATs to the node.
    assert f"api {service['spec']['clusterIP']} 443" in lines, logs
    assert f"own-pod {name} {namespace} self-reader" in lines, logs
    assert "secret-status 403" in lines, logs
