"""The operator on a real cluster, under exactly the RBAC it documents: the CRD's validation,
a real classification, retries, deadline, suspend/resume, a late node label and a late claim,
deletion, and an operator restart mid-task."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .conftest import NODE_LABEL_KEY, Kubectl, wait_until
from .operator_fixtures import (
    INVALID_TASKS,
    Operator,
    crd,
    models_claim,
    operator_ns,
    proplet_image,
    task,
    wat_inline,
)

pytestmark = pytest.mark.cluster
__all__ = ["crd", "operator_ns", "proplet_image"]  # fixtures used by name
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
GUEST = {"configMapKeyRef": {"name": "wasinn-guests", "key": "classify-c.wasm"}}
TRAP = '(module (memory (export "memory") 1) (func (export "_start") unreachable))'
SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'


def status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    found = kubectl.get("wnt", name, namespace)
    return {} if found is None else dict(found.get("status") or {})


def wait_phase(
    kubectl: Kubectl, namespace: str, name: str, *phases: str, timeout: float = 180
) -> dict[str, Any]:
    return dict(
        wait_until(
            f"task {name} to reach {phases}",
            lambda: (s := status(kubectl, namespace, name)).get("phase") in phases and s,
            timeout=timeout,
        )
    )


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == kind)


def pods(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    found = kubectl("get", "pods", "-n", namespace, "-l", f"wasinn.dev/task={name}", "-o", "json")
    return list(json.loads(found)["items"])


@pytest.mark.usefixtures("crd")
@pytest.mark.parametrize(
    ("spec", "message"),
    INVALID_TASKS,
)
def test_api_server_rejects_invalid_tasks(
    kubectl: Kubectl, spec: dict[str, Any], message: str
) -> None:
    proc = kubectl.run(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        check=False,
        input=json.dumps(task("invalid", "default", spec)),
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_classification_completes(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], node_name: str
) -> None:
    namespace, _ = operator_ns
    kubectl.apply(
        task("chelsea", namespace, {"wasm": GUEST, "cliArgs": ["-S", "nn"], "args": CHELSEA})
    )
    kubectl(
        "wait",
        "--for=condition=Complete",
        "wnt/chelsea",
        "-n",
        namespace,
        "--timeout=240s",
        timeout=260,
    )
    st = status(kubectl, namespace, "chelsea")
    assert (st["phase"], st["state"], st["exitCode"]) == ("Completed", 3, 0)
    assert "1. tiger cat (282)" in st["results"]
    assert st["nodeName"] == node_name
    [pod] = pods(kubectl, namespace, "chelsea")
    assert pod["spec"]["nodeSelector"][NODE_LABEL_KEY] == "true"
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    logs = kubectl("logs", "-n", namespace, pod["metadata"]["name"])
    assert "1. tiger cat (282)" in logs
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=chelsea",
        "-o",
        "json",
    )
    assert {"Scheduled", "Completed"} <= {e["reason"] for e in json.loads(events)["items"]}
    printed = kubectl("get", "wnt", "chelsea", "-n", namespace)
    assert printed.split()[:4] == ["NAME", "PHASE", "NODE", "EXIT"]


def test_retries_then_backoff_limit(kubectl: Kubectl, operator_ns: tuple[str, Operator]) -> None:
    namespace, _ = operator_ns
    kubectl.apply(
        task("trap", namespace, {"wasm": {"inline": wat_inline(TRAP)}, "backoffLimit": 1})
    )
    st = wait_phase(kubectl, namespace, "trap", "Failed")
    assert (st["attempts"], st["failedAttempts"]) == (2, 2)
    assert condition(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "wasm trap" in st["error"]
    assert len(pods(kubectl, namespace, "trap")) == 2


def test_deadline(kubectl: Kubectl, operator_ns: tuple[str, Operator]) -> None:
    namespace, _ = operator_ns
    kubectl.apply(
        task(
            "spin",
            namespace,
            {"wasm": {"inline": wat_inline(SPIN)}, "timeoutSeconds": 5, "backoffLimit": 3},
        )
    )
    st = wait_phase(kubectl, namespace, "spin", "Failed")
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    assert st["attempts"] == 1


def test_suspend_resume_and_delete(kubectl: Kubectl, operator_ns: tuple[str, Operator]) -> None:
    namespace, _ = operator_ns
    kubectl.apply(task("spin", namespace, {"wasm": {"inline": wat_inline(SPIN)}}))
    wait_phase(kubectl, namespace, "spin", "Running")
    kubectl(
        "patch", "wnt", "spin", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    st = wait_phase(kubectl, namespace, "spin", "Failed")
    assert (st["state"], st["error"]) == (4, "task was stopped before completion")
    assert condition(st, "Failed")["reason"] == "Stopped"
    assert condition(st, "Suspended")["status"] == "True"
    wait_until("the Pod to go", lambda: not pods(kubectl, namespace, "spin"), timeout=60)
    kubectl(
        "patch", "wnt", "spin", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    st = wait_phase(kubectl, namespace, "spin", "Running")
    assert st["attempts"] == 2
    kubectl.delete("wnt", "spin", namespace)
    wait_until("the task's Pods to go", lambda: not pods(kubectl, namespace, "spin"), timeout=90)


def test_unschedulable_until_a_node_is_labelled(
    kubectl: Kubectl, operator_ns: tuple[str, Operator], node_name: str
) -> None:
    namespace, _ = operator_ns
    label = f"wasinn.dev/test-{namespace}"
    kubectl.apply(
        task("later", namespace, {"wasm": GUEST, "args": CHELSEA, "nodeSelector": {label: "yes"}})
    )
    st = wait_phase(kubectl, namespace, "later", "Pending")
    wait_until(
        "Unschedulable",
        lambda: (
            condition(status(kubectl, namespace, "later"), "Scheduled").get("reason")
            == "Unschedulable"
        ),
        timeout=60,
    )
    assert f"{label}=yes" in condition(status(kubectl, namespace, "later"), "Scheduled")["message"]
    assert not pods(kubectl, namespace, "later")
    kubectl("label", "node", node_name, f"{label}=yes")
    try:
        st = wait_phase(kubectl, namespace, "later", "Completed")
    finally:
        kubectl("label", "node", node_name, f"{label}-")
    assert "tiger cat" in st["results"]


def test_missing_claim_until_it_exists(kubectl: Kubectl, operator_ns: tuple[str, Operator]) -> None:
    namespace, _ = operator_ns
    kubectl.apply(
        task(
            "claimless",
            namespace,
            {"wasm": GUEST, "args": CHELSEA, "models": {"claimName": "late-models"}},
        )
    )
    wait_until(
        "ModelClaimNotFound",
        lambda: (
            (
                condition(status(kubectl, namespace, "claimless"), "Scheduled").get("reason")
                == "ModelClaimNotFound"
            )
            if status(kubectl, namespace, "claimless").get("conditions")
            else False
        ),
        timeout=60,
    )
    models_claim(kubectl, namespace, "late-models")
    st = wait_phase(kubectl, namespace, "claimless", "Completed")
    assert "tiger cat" in st["results"]


def test_operator_restart_mid_task_makes_no_second_pod(
    kubectl: Kubectl, operator_ns: tuple[str, Operator]
) -> None:
    namespace, operator = operator_ns
    kubectl.apply(
        task("resilient", namespace, {"wasm": GUEST, "args": ["--repeat", "40", *CHELSEA]})
    )
    wait_phase(kubectl, namespace, "resilient", "Scheduled", "Running")
    operator.stop()
    time.sleep(2)
    operator.start()
    st = wait_phase(kubectl, namespace, "resilient", "Completed", timeout=300)
    assert st["attempts"] == 1
    assert len(pods(kubectl, namespace, "resilient")) == 1
