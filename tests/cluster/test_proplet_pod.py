"""The proplet image in a hand-written Pod on the local cluster: the models claim read-only,
the guest from a ConfigMap, the summary in the termination message."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from .conftest import REPO, Kubectl, wait_until
from .operator_fixtures import models_claim, proplet_image

pytestmark = pytest.mark.cluster
__all__ = ["proplet_image"]  # fixtures used by name


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"proplet-{uuid.uuid4().hex[:8]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_until(
        "the default ServiceAccount",
        lambda: kubectl.get("serviceaccount", "default", name),
        timeout=60,
    )
    try:
        yield name
    finally:
        kubectl.delete("namespace", name, timeout=180)
        kubectl(
            "delete",
            "pv",
            "-l",
            "wasinn.dev/test=proplet",
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )


def test_hand_written_pod_completes_with_a_summary(
    kubectl: Kubectl, proplet_image: str, namespace: str, node_name: str
) -> None:
    models_claim(kubectl, namespace, label="proplet")
    guest = REPO / "build" / "guests" / "classify-rust.wasm"
    kubectl("create", "configmap", "guest", "-n", namespace, f"--from-file=classify.wasm={guest}")
    task = {
        "id": "hand-written",
        "wasm": {"path": "/wasm/classify.wasm"},
        "cliArgs": ["-S", "nn"],
        "args": [
            "--model",
            "efficientnet-lite0",
            "/models/efficientnet-lite0/tensors/coffee.rgb.f32",
        ],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "proplet", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"wasinn.dev/openvino": "true"},
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "proplet",
                    "image": proplet_image,
                    "imagePullPolicy": "Never",
                    "env": [{"name": "WASINN_TASK", "value": json.dumps(task)}],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models", "readOnly": True},
                        {"name": "wasm", "mountPath": "/wasm", "readOnly": True},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "models",
                    "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
                },
                {"name": "wasm", "configMap": {"name": "guest"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
    kubectl.apply(pod)
    wait_until(
        "the Pod to finish",
        lambda: kubectl.pod_phase("proplet", namespace) in ("Succeeded", "Failed"),
        timeout=240,
    )
    found = kubectl.get("pod", "proplet", namespace)
    assert found is not None
    state = found["status"]["containerStatuses"][0]["state"]["terminated"]
    summary = json.loads(state["message"])
    assert found["status"]["phase"] == "Succeeded", summary
    assert (summary["state"], summary["exitCode"], summary["taskId"]) == (
        "Completed",
        0,
        "hand-written",
    )
    assert "1. espresso (967)" in summary["stdout"]
    assert found["spec"]["nodeName"] == node_name
    assert "1. espresso (967)" in kubectl("logs", "-n", namespace, "proplet")
