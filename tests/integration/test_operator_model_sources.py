"""Model sources through a real API server and the operator: the CRD refuses a malformed source,
the operator refuses origins its policy does not allow (PolicyViolation, no Pod), and an allowed
task's Pod carries the sources, a cache volume and a read-only volume per pvc:// source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

from .conftest import OperatorProcess
from .kubeapi import Cluster

pytestmark = pytest.mark.integration
LABELS = {"wasinn.dev/openvino": "true"}
DIGEST = "sha256:" + "e" * 64
WAIT = 120
ALLOWED = {"name": "net", "uri": "oci://reg.example/models/net:v1", "sha256": DIGEST}
CLAIM = {"name": "shared", "uri": "pvc://team-models/detectors"}


@pytest.fixture
def operator(kube: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    env = {
        "WASINN_PROPLET_IMAGE": "reg/proplet:test",
        "WASINN_RESYNC_SECONDS": "0.5",
        "WASINN_ALLOW_MODEL_ORIGINS": "oci://reg.example/models,pvc://team-models",
    }
    process = OperatorProcess(tmp_path, kube.kubeconfig, kube.namespace, env)
    process.start()
    yield process
    process.stop()
    log = process.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def create(kube: Cluster, name: str, sources: list[dict[str, str]]) -> None:
    kube.create(
        "wasinntasks",
        {
            "metadata": {"name": name},
            "spec": {"wasm": {"url": "http://shim/artifacts/x"}, "modelSources": sources},
        },
    )


def status(kube: Cluster, name: str) -> dict[str, Any]:
    found = kube.find("wasinntasks", name)
    return {} if found is None else dict(found.get("status") or {})


def test_the_api_server_refuses_malformed_sources(kube: Cluster) -> None:
    for sources, message in (
        ([{"name": "m", "uri": "ftp://x/model.onnx", "sha256": DIGEST}], "uri must start with"),
        ([{"name": "m", "uri": "https://x/model.onnx"}], "sha256 is required"),
        ([{"name": "../m", "uri": "pvc://c/x"}], "spec.modelSources[0].name"),
        ([ALLOWED, {**ALLOWED, "uri": "oci://reg.example/models/other:v1"}], "Duplicate value"),
    ):
        with pytest.raises(ApiException) as info:
            create(kube, "bad", sources)
        assert info.value.status == 422
        assert message in str(info.value.body), message


def test_the_operator_applies_the_policy_and_mounts_the_sources(
    kube: Cluster, operator: OperatorProcess
) -> None:
    kube.add_node("n1", LABELS)
    kube.add_pvc("models")
    create(kube, "refused", [{**ALLOWED, "uri": "oci://other.example/models/net:v1"}])
    st = kube.wait_for(
        lambda: (s := status(kube, "refused")).get("phase") == "Failed" and s,
        timeout=WAIT,
        what="refused task Failed",
    )
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PolicyViolation"
    assert failed["message"].startswith(
        "spec.modelSources[0].uri: oci://other.example/models/net:v1: origin not allowed"
    )
    assert kube.find("pods", "refused-1") is None
    create(kube, "net", [ALLOWED, CLAIM])
    pod = kube.wait_for(lambda: kube.find("pods", "net-1"), timeout=WAIT, what="Pod net-1")
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["WASINN_TASK"])["modelSources"] == [ALLOWED, CLAIM]
    assert "oci://reg.example/models" in json.loads(env["WASINN_POLICY"])["allowModelOrigins"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["model-cache"]
    assert volumes["model-pvc-0"]["persistentVolumeClaim"] == {
        "claimName": "team-models",
        "readOnly": True,
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-pvc-0"]["subPath"] == "detectors"
    assert mounts["model-pvc-0"]["readOnly"] is True
