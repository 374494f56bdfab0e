"""Warm execution on the real cluster: the chart installed with warmWorkers enabled, in a
namespace that enforces the `restricted` Pod Security Standard, runs warm classification tasks
(one, then ten applied at once) to Completed with the golden top-1, on its worker Deployment,
without a Pod per task; the operator's metrics endpoint exports the warm queue depth.

helm and the images as in test_chart.py (hack/tools.sh, hack/build-images.sh + hack/cluster
load-image). Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .chart_fixtures import (
    CHART,
    EXTRA_SET,
    OPERATOR_IMAGE,
    PROPLET_IMAGE,
    Helm,
    available,
    build_and_load,
    describe,
    helm,
)
from .conftest import Kubectl, wait_until
from .conftest import models_claim as models_claim_on
from .operator_fixtures import crd
from .test_pod_security import restricted

pytestmark = pytest.mark.cluster
__all__ = ["crd", "helm"]  # fixtures, used by name
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
GOLDEN = "1. tiger cat (282)"


@pytest.fixture(scope="module")
def warm_release(
    helm: Helm, kubectl: Kubectl, models_dir: Path, crd: None
) -> Iterator[tuple[str, str]]:
    """(release, namespace): the chart with warm workers, watching only its namespace (the
    checkout's CRD applied first: helm leaves an installed CRD as it is)."""
    build_and_load(OPERATOR_IMAGE, PROPLET_IMAGE)
    namespace = f"warm-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"wasinn.dev/test": "warm"}},
        }
    )
    restricted(kubectl, namespace)
    volume = models_claim_on(kubectl, namespace, models_dir, label="warm")
    release = f"wasinn-w{uuid.uuid4().hex[:6]}"
    try:
        helm(
            "install", release, str(CHART), "--namespace", namespace,
            "--set", "image.pullPolicy=Never", "--set", "shim.enabled=false",
            "--set", "rbac.namespaced=true", "--set", f"rbac.watchNamespaces={{{namespace}}}",
            "--set", "warmWorkers.enabled=true", "--set", "operator.resyncSeconds=2",
            *(a for v in EXTRA_SET for a in ("--set", v)),
        )  # fmt: skip
        selector = f"app.kubernetes.io/instance={release}"
        for name in (f"{release}-operator", f"{release}-warm-default"):
            try:
                wait_until(
                    f"deployment {name} to be Available",
                    lambda name=name: available(kubectl, name, namespace),
                    timeout=300,
                    interval=2,
                )
            except pytest.fail.Exception as exc:
                raise AssertionError(f"{exc}\n{describe(kubectl, namespace, selector)}") from None
        yield release, namespace
    finally:
        helm("uninstall", release, "--namespace", namespace, check=False, timeout=120)
        kubectl.delete("namespace", namespace, timeout=180)
        kubectl.delete("pv", volume, timeout=120)


def warm_task(name: str, namespace: str, wasm: str) -> dict[str, Any]:
    return {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "wasm": {"inline": wasm},
            "execution": "warm",
            "cliArgs": ["-S", "nn"],
            "args": CHELSEA,
            "timeoutSeconds": 120,
        },
    }


def finished(kubectl: Kubectl, namespace: str, names: list[str]) -> list[dict[str, Any]] | None:
    found = json.loads(kubectl("get", "wnt", "-n", namespace, "-o", "json"))["items"]
    by_name = {t["metadata"]["name"]: t.get("status") or {} for t in found}
    statuses = [by_name.get(n, {}) for n in names]
    ended = all(s.get("phase") in ("Completed", "Failed") for s in statuses)
    return statuses if ended else None


def test_warm_tasks_complete_on_the_workers_with_golden_results(
    kubectl: Kubectl, warm_release: tuple[str, str], guest_dir: Path
) -> None:
    release, namespace = warm_release
    wasm = base64.b64encode((guest_dir / "classify-c.wasm").read_bytes()).decode()
    workers = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", "wasinn.dev/warm-pool=default", "-o", "json")
    )["items"]
    assert len(workers) == 1
    worker = workers[0]
    container = worker["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]

    # create, not apply: apply's last-applied annotation cannot hold an inline module this big.
    kubectl("create", "-f", "-", input=json.dumps(warm_task("one", namespace, wasm)))
    [st] = wait_until(
        "warm task one to finish", lambda: finished(kubectl, namespace, ["one"]), timeout=240
    )
    assert (st["phase"], st["state"], st["exitCode"]) == ("Completed", 3, 0), st
    assert GOLDEN in st["results"]
    assert st["worker"]["pod"] == worker["metadata"]["name"]
    assert st["nodeName"] == worker["spec"]["nodeName"]

    names = [f"many-{i}" for i in range(10)]
    many = [warm_task(n, namespace, wasm) for n in names]
    kubectl(
        "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": many})
    )
    statuses = wait_until(
        "ten warm tasks to finish", lambda: finished(kubectl, namespace, names), timeout=300
    )
    for st in statuses:
        assert st["phase"] == "Completed", st
        assert GOLDEN in st["results"]
    task_pods = kubectl("get", "pods", "-n", namespace, "-l", "wasinn.dev/task-uid", "-o", "name")
    assert task_pods.strip() == ""  # no Pod per task

    selector = "app.kubernetes.io/component=operator"
    found = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    operator = json.loads(found)["items"][0]["metadata"]["name"]
    metrics = kubectl(
        "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{operator}:9090/proxy/metrics"
    )
    assert 'wasinn_warm_queue_depth{pool="default"} 0.0' in metrics
    del release
