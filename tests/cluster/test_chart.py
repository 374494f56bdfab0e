"""The Helm chart on the real cluster of `hack/cluster` (marker `cluster`).

- every value set of charts/wasinn-operator/ci renders objects the API server accepts
  (`kubectl apply --dry-run=server`: the real OpenAPI schemas, the CRD's schema and its CEL
  rules, and RBAC's escalation checks), and so do the sample tasks of examples/;
- `helm install` with the local images gives a Ready operator and shim, a Service answering on
  8080 and 7070 (bearer token enforced), RBAC that allows what the rules files say and no more,
  a token kept across `helm upgrade`, and a first task run to completion by the operator;
- `helm uninstall` leaves nothing of the release behind.

helm comes from `hack/tools.sh` (skips, or fails under CI, when missing). The images are built
with hack/build-images.sh and imported with `hack/cluster load-image` (imagePullPolicy: Never).
Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chart_fixtures import (
    CHART,
    EXTRA_SET,
    OPERATOR_IMAGE,
    PROPLET_IMAGE,
    REPO,
    Helm,
    available,
    build_and_load,
    helm,
    leftovers,
)
from .chart_fixtures import (
    describe as describe_pods,
)
from .conftest import Kubectl, wait_until
from .conftest import models_claim as models_claim_on
from .operator_fixtures import crd

pytestmark = pytest.mark.cluster

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
__all__ = ["crd", "helm"]  # fixtures, used by name


def fresh_namespace(kubectl: Kubectl, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"wasinn.dev/test": "chart"}},
        }
    )
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: kubectl.get("serviceaccount", "default", name) is not None,
        timeout=60,
    )
    return name


@pytest.fixture(scope="module")
def chart_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = fresh_namespace(kubectl, "chart")
    try:
        yield name
    finally:
        kubectl.delete("namespace", name, timeout=180)


def dry_run(kubectl: Kubectl, docs: list[dict[str, Any]], namespace: str) -> str:
    proc = kubectl.run(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        check=False,
    )
    assert proc.returncode == 0, f"the API server rejected it:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_api_server_accepts_every_value_set(
    helm: Helm, kubectl: Kubectl, chart_namespace: str, values: Path | None
) -> None:
    args = ["template", "wasinn", str(CHART), "--namespace", chart_namespace]
    args += ["-f", str(values)] if values else []
    # Roles go into existing namespaces only.
    args += ["--set", f"rbac.watchNamespaces={{{chart_namespace}}}"]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    # The prometheus-operator CRD is not installed here.
    checked = [d for d in docs if d["kind"] != "ServiceMonitor"]
    out = dry_run(kubectl, checked, chart_namespace)
    assert out.count("(server dry run)") == len(checked), out


@pytest.mark.usefixtures("crd")  # on a fresh cluster nothing else has installed it yet
def test_api_server_accepts_the_examples_and_enforces_the_crd(
    kubectl: Kubectl, chart_namespace: str
) -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    docs = [d for p in examples for d in yaml.safe_load_all(p.read_text()) if d]
    out = dry_run(kubectl, docs, chart_namespace)
    assert out.count("created (server dry run)") == len(docs), out
    first_task = next(d for d in docs if d["kind"] == "WasiNNTask")
    bad = json.loads(json.dumps(first_task))
    bad["spec"]["wasm"]["path"] = "/models/app.wasm"  # two sources: the CEL rule says no
    proc = kubectl.run(
        "apply", "--dry-run=server", "-n", chart_namespace, "-f", "-",
        input=json.dumps(bad), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "exactly one of url, configMapKeyRef, path, inline, image" in proc.stderr


# ----------------------------------------------------------------------------- a real install


@pytest.fixture(scope="module")
def images(kubeconfig: str) -> None:
    build_and_load(OPERATOR_IMAGE, PROPLET_IMAGE)


@pytest.fixture(scope="module")
def models_claim(kubectl: Kubectl, chart_namespace: str, models_dir: Path) -> Iterator[str]:
    """`models` in the test namespace on ../shared/models (as hack/cluster makes default/models)."""
    pv = models_claim_on(kubectl, chart_namespace, models_dir, label="chart")
    try:
        yield "models"
    finally:
        kubectl.delete("pvc", "models", chart_namespace, timeout=120)
        kubectl.delete("pv", pv, timeout=120)


class Release:
    def __init__(self, name: str, namespace: str) -> None:
        self.name, self.namespace = name, namespace
        self.notes = ""

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"


def describe(kubectl: Kubectl, release: Release) -> str:
    return describe_pods(kubectl, release.namespace, release.selector)


@pytest.fixture(scope="module")
def release(
    helm: Helm, kubectl: Kubectl, chart_namespace: str, images: None, models_claim: str
) -> Iterator[Release]:
    rel = Release(f"wasinn-t{uuid.uuid4().hex[:6]}", chart_namespace)
    install = helm(
        "install", rel.name, str(CHART), "--namespace", rel.namespace,
        "--set", "image.pullPolicy=Never", "--set", f"models.claimName={models_claim}",
        "--set", "operator.resyncSeconds=2", *(a for v in EXTRA_SET for a in ("--set", v)),
    )  # fmt: skip
    rel.notes = install.stdout.partition("NOTES:")[2]
    try:
        for component in ("operator", "shim"):
            name = f"{rel.name}-{component}"
            try:
                wait_until(
                    f"deployment {name} to be Available",
                    lambda name=name: available(kubectl, name, rel.namespace),
                    timeout=240,
                    interval=2,
                )
            except pytest.fail.Exception as exc:
                raise AssertionError(f"{exc}\n{describe(kubectl, rel)}") from None
        yield rel
    finally:
        helm("uninstall", rel.name, "--namespace", rel.namespace, check=False, timeout=120)


def token(kubectl: Kubectl, release: Release) -> str:
    secret = kubectl.get("secret", f"{release.name}-shim-token", release.namespace)
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


def test_install_gives_ready_operator_and_shim(kubectl: Kubectl, release: Release) -> None:
    pods = json.loads(
        kubectl("get", "pods", "-n", release.namespace, "-l", release.selector, "-o", "json")
    )["items"]
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
    assert components == ["operator", "shim"]
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True", pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        (status,) = pod["status"]["containerStatuses"]
        assert status["restartCount"] == 0, describe(kubectl, release)


def test_notes_tell_how_to_label_submit_and_curl(release: Release) -> None:
    ns = release.namespace
    assert "kubectl label node NODE wasinn.dev/openvino=true" in release.notes
    assert f"kubectl -n {ns} apply -f examples/task.yaml" in release.notes
    assert f"kubectl -n {ns} get secret {release.name}-shim-token" in release.notes
    assert "curl" in release.notes and "/tasks/$ID/start" in release.notes


PROBE = """
import json, os, sys, urllib.error, urllib.request
def get(port, path, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    request = urllib.request.Request(f"http://{sys.argv[1]}:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return [response.status, json.load(response)]
    except urllib.error.HTTPError as exc:
        return [exc.code, None]
print(json.dumps({
    "health8080": get(8080, "/health"),
    "health7070": get(7070, "/health"),
    "tasks_without_token": get(8080, "/tasks"),
    "tasks_with_token": get(7070, "/tasks", os.environ["TOKEN"]),
}))
"""


def test_shim_service_answers_on_8080_and_7070_with_the_token(
    kubectl: Kubectl, release: Release
) -> None:
    """From a Pod, through the Service's cluster IP (the operator image has python3)."""
    service = kubectl.get("service", f"{release.name}-shim", release.namespace)
    assert service is not None
    name = f"probe-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": release.namespace},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                "containers": [
                    {
                        "name": "probe",
                        "image": OPERATOR_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", PROBE, service["spec"]["clusterIP"]],
                        "env": [
                            {
                                "name": "TOKEN",
                                "valueFrom": {
                                    "secretKeyRef": {
                                        "name": f"{release.name}-shim-token",
                                        "key": "token",
                                    }
                                },
                            }
                        ],
                    }
                ],
            },
        }
    )
    try:
        wait_until(
            "the probe Pod to finish",
            lambda: kubectl.pod_phase(name, release.namespace) in ("Succeeded", "Failed"),
            timeout=90,
        )
        out = kubectl("logs", name, "-n", release.namespace)
    finally:
        kubectl.delete("pod", name, release.namespace)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["health8080"][0] == result["health7070"][0] == 200, result
    assert result["health8080"][1]["status"] == "pass", result
    assert result["tasks_without_token"][0] == 401, result
    assert result["tasks_with_token"][0] == 200, result
    assert "tasks" in result["tasks_with_token"][1], result


def can_i(kubectl: Kubectl, account: str, namespace: str, *args: str) -> bool:
    proc = kubectl.run(
        "auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{account}", check=False
    )
    return proc.stdout.strip() == "yes"


def test_rbac_allows_what_the_rules_files_say_and_no_more(
    kubectl: Kubectl, release: Release
) -> None:
    ns = release.namespace
    operator, shim = f"{release.name}-operator", f"{release.name}-shim"
    checks = [
        ("operator-rules.yaml", operator, ["-n", "default"]),  # cluster-wide by default
        ("operator-cluster-rules.yaml", operator, []),
    ]
    if kubectl.get("role", shim, ns) is not None:  # the kubernetes backend
        checks += [("shim-rules.yaml", shim, ["-n", ns]), ("shim-cluster-rules.yaml", shim, [])]
    for rule_file, account, scope in checks:
        for rule in yaml.safe_load((CHART / "files" / rule_file).read_text()):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    name, _, sub = resource.partition("/")
                    target = f"{name}.{group}" if group else name
                    extra = [f"--subresource={sub}"] if sub else []
                    for verb in rule["verbs"]:
                        assert can_i(kubectl, account, ns, verb, target, *scope, *extra), (
                            f"{account} cannot {verb} {resource} ({rule_file})"
                        )
    assert not can_i(kubectl, operator, ns, "get", "secrets", "-n", ns)
    assert not can_i(kubectl, operator, ns, "delete", "nodes")
    assert not can_i(kubectl, shim, ns, "create", "wasinntasks.wasinn.dev", "-n", "default")
    assert not can_i(kubectl, shim, ns, "create", "pods", "-n", ns)
    assert not can_i(kubectl, shim, ns, "get", "secrets", "-n", ns)


def test_operator_runs_a_first_task(
    kubectl: Kubectl, release: Release, guest_path: Any, node_name: str
) -> None:
    wasm = Path(guest_path("classify-c")).read_bytes()
    name = f"first-{uuid.uuid4().hex[:6]}"
    task = {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {"name": name, "namespace": release.namespace},
        "spec": {
            "wasm": {"inline": base64.b64encode(wasm).decode()},
            "cliArgs": ["-S", "nn"],
            "args": [
                "--model",
                "efficientnet-lite0",
                "/models/efficientnet-lite0/tensors/chelsea.rgb.f32",
            ],
            "timeoutSeconds": 240,
        },
    }
    # `create`, not `apply`: the inline module is too big for apply's last-applied annotation.
    kubectl.run("create", "-f", "-", input=json.dumps(task))
    try:
        try:
            task = wait_until(
                f"task {name} to finish",
                lambda: (
                    t
                    if (t := kubectl.get("wnt", name, release.namespace) or {})
                    .get("status", {})
                    .get("phase")
                    in ("Completed", "Failed")
                    else None
                ),
                timeout=300,
                interval=2,
            )
        except pytest.fail.Exception as exc:
            status = (kubectl.get("wnt", name, release.namespace) or {}).get("status")
            raise AssertionError(
                f"{str(exc)[:300]}\nstatus: {json.dumps(status, indent=1)}\n"
                f"{describe(kubectl, release)}"
            ) from None
        status = task["status"]
        assert status["phase"] == "Completed", json.dumps(status, indent=1)
        assert status["nodeName"] == node_name
        assert "tiger cat" in status["results"] or "tabby" in status["results"], status["results"]
    finally:
        kubectl.delete("wnt", name, release.namespace, timeout=120)


def test_upgrade_keeps_the_generated_token(helm: Helm, kubectl: Kubectl, release: Release) -> None:
    before = token(kubectl, release)
    assert len(before) == 48
    helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values")
    assert token(kubectl, release) == before
    for component in ("operator", "shim"):
        wait_until(
            f"{component} to be Available after the upgrade",
            lambda c=component: available(kubectl, f"{release.name}-{c}", release.namespace),
            timeout=240,
            interval=2,
        )


def test_uninstall_removes_everything(helm: Helm, kubectl: Kubectl, release: Release) -> None:
    # The selector does find the release's objects.
    assert leftovers(kubectl, release.namespace, release.selector)
    helm("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "120s")
    wait_until(
        f"every object of {release.name} to be gone",
        lambda: not leftovers(kubectl, release.namespace, release.selector),
        timeout=120,
        interval=2,
    )
    assert helm("status", release.name, "-n", release.namespace, check=False).returncode != 0
    # The CRD stays (Helm never deletes CRDs): tasks elsewhere keep their data.
    assert kubectl.get("crd", "wasinntasks.wasinn.dev") is not None
