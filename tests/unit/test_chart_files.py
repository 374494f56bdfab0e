"""The Helm chart: its files (no tools), then what `helm lint`/`helm template` make of it.

The file checks need nothing but Python. The render checks need helm and kubeconform from
`hack/tools.sh` (built from the Go module proxy; `make test` installs them): they skip where
the binaries are missing, and fail under CI (see tests/conftest.py `missing`). Every rendered
object is validated by kubeconform against Kubernetes' own OpenAPI schemas, generated offline
by hack/openapi2jsonschema.py; the examples are validated against the CRD's schema.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from wasinn_operator.api.policy import TaskPolicy
from wasinn_operator.api.policyflags import policy_from_settings
from wasinn_operator.controller import handlers
from wasinn_operator.controller.priority import parse_bands
from wasinn_operator.controller.settings import OperatorSettings

from ..conftest import missing
from .test_pod_security import restricted_violations

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wasinn-operator"
CRD = CHART / "crds" / "wasinntask.yaml"  # generated: tests/unit/test_generated.py
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
NAMESPACE = "wasinn-system"
RELEASE = "wasinn"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions"}
# WASINN_* variables the chart passes that the operator does not read yet (none now; the
# test below fails when one appears, and when a listed one becomes supported).
PENDING_OPERATOR_ENV: set[str] = set()


def load_hack(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules(name: str) -> list[dict[str, Any]]:
    loaded = yaml.safe_load((CHART / "files" / name).read_text())
    assert isinstance(loaded, list), f"files/{name} must be a YAML list of PolicyRules"
    return loaded


def grants(rule_list: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rule_list
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# ---------------------------------------------------------------------------- the files alone


@pytest.mark.parametrize(
    "name",
    [
        "operator-rules.yaml",
        "operator-cluster-rules.yaml",
        "shim-rules.yaml",
        "shim-cluster-rules.yaml",
    ],
)
def test_rules_files_are_explicit_policy_rules(name: str) -> None:
    for rule in rules(name):
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert rule["verbs"] and set(rule["verbs"]) <= VERBS, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        scoped = {r.split("/")[0] in CLUSTER_SCOPED for r in rule["resources"]}
        assert scoped == {"cluster" in name}, f"{name}: {rule} is in the wrong file"


def shim_api_calls() -> set[str]:
    """Names of the kubernetes client methods the shim's kubernetes backend calls."""
    tree = ast.parse((REPO / "operator" / "wasinn_operator" / "shim" / "kubernetes.py").read_text())
    calls = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("_custom", "_core")
        ):
            calls.add(node.attr)
    return calls


# Each client method the shim calls and the grant it needs.
SHIM_METHOD_GRANTS = {
    "get_namespaced_custom_object": ("wasinn.dev", "wasinntasks", "get"),
    "list_namespaced_custom_object": ("wasinn.dev", "wasinntasks", "list"),
    "create_namespaced_custom_object": ("wasinn.dev", "wasinntasks", "create"),
    "patch_namespaced_custom_object": ("wasinn.dev", "wasinntasks", "patch"),
    "delete_namespaced_custom_object": ("wasinn.dev", "wasinntasks", "delete"),
    "patch_namespaced_custom_object_status": ("wasinn.dev", "wasinntasks/status", "patch"),
    "list_node": ("", "nodes", "list"),
}


def test_shim_rules_are_exactly_what_its_kubernetes_backend_calls() -> None:
    if not (REPO / "operator" / "wasinn_operator" / "shim" / "kubernetes.py").is_file():
        pytest.skip("the shim has no kubernetes backend yet")
    calls = shim_api_calls()
    unknown = calls - set(SHIM_METHOD_GRANTS)
    assert not unknown, (
        f"the shim calls {sorted(unknown)}: add the RBAC it needs to "
        "charts/wasinn-operator/files/shim-*rules.yaml and to SHIM_METHOD_GRANTS"
    )
    needed = {SHIM_METHOD_GRANTS[c] for c in calls}
    granted = grants(rules("shim-rules.yaml")) | grants(rules("shim-cluster-rules.yaml"))
    assert granted == needed, f"granted but unused: {granted - needed}; missing: {needed - granted}"


def test_templates_take_rules_only_from_the_files() -> None:
    for template in (CHART / "templates").glob("*"):
        text = template.read_text()
        assert not re.search(r"^\s*-?\s*verbs:", text, re.M), f"{template.name} restates rules"
    rbac = (CHART / "templates" / "operator-rbac.yaml").read_text()
    assert "operator-rules.yaml" in rbac and "operator-cluster-rules.yaml" in rbac


def test_values_security_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert values["shim"]["auth"]["enabled"] is True
    assert values["mosquitto"]["enabled"] is False


def crd_validator(version: str = "v1alpha1") -> jsonschema.Validator:
    convert = load_hack("openapi2jsonschema")
    crd = yaml.safe_load(CRD.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = convert.crd_node(served["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_the_crd_schema(example: Path) -> None:
    validator = crd_validator()
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert docs, f"{example} is empty"
    for doc in docs:
        if doc["kind"] != "WasiNNTask":  # e.g. the models claim (checked by the API server)
            assert doc["apiVersion"] == "v1" and doc["kind"] == "PersistentVolumeClaim", doc
            continue
        assert doc["apiVersion"] == "wasinn.dev/v1alpha1"
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{example.name}: {errors}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["wasm"]["configMapKeyRef"].pop("key"), "'key' is a required property"),
        (lambda s: s.update(engine="wasmer"), "is not one of"),
        (lambda s: s["wasm"].update(digest="sha256:xyz"), "does not match"),
        (lambda s: s.update(timeoutSeconds=0), "less than the minimum"),
        (lambda s: s.update(unknownField=1), "Additional properties"),
        (lambda s: s.update(nodeFeatures=["kubernetes.io/hostname=n1"]), "does not match"),
        (lambda s: s.update(nodeFeatures=["feature.node.kubernetes.io/x"] * 17), "is too long"),
    ],
)
def test_crd_schema_check_rejects_bad_tasks(change: Any, expected: str) -> None:
    doc = yaml.safe_load((REPO / "examples" / "task.yaml").read_text())
    change(doc["spec"])
    messages = [e.message for e in crd_validator().iter_errors(doc)]
    assert any(expected in m for m in messages), messages


# ------------------------------------------------------------------- helm and kubeconform


def tools_script(command: str) -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "tools.sh"), command],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return Path(out.stdout.strip())


@cache
def tool(name: str) -> str:
    path = tools_script("bindir") / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    missing(f"{name} is not installed: run hack/tools.sh (make test does)")
    raise AssertionError("unreachable")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def value_args(values: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(values)] if values else []
    for item in sets:
        args += ["--set", item]
    return args


def template(values: Path | None = None, *sets: str, crds: bool = False) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += value_args(values, sets)
    return helm(*args, *(["--include-crds"] if crds else [])).stdout


def render(values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template(values, *sets)) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found in {names(objects)}"
    return matches[0]


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


VALUE_SETS = [None, *CI_VALUES]


@pytest.mark.parametrize("values", VALUE_SETS, ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values: Path | None) -> None:
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *value_args(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


def run_kubeconform(manifests: str, crd_dir: Path) -> tuple[int, dict[str, Any]]:
    k8s = tools_script("schemadir")
    if not (k8s / ".complete").is_file():
        missing(f"Kubernetes JSON schemas missing in {k8s}: run hack/tools.sh")
    proc = subprocess.run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-schema-location",
            str(k8s / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            "-schema-location",
            str(crd_dir / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            # The prometheus-operator CRD is not available offline: checked by hand below.
            "-skip",
            "ServiceMonitor",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.stdout.startswith("{"), f"kubeconform: {proc.stdout}\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def kubeconform(manifests: str, *, crd_dir: Path) -> dict[str, Any]:
    code, report = run_kubeconform(manifests, crd_dir)
    bad = [r for r in report.get("resources", []) if r["status"] not in ("statusValid",)]
    bad = [r for r in bad if r["status"] != "statusSkipped"]
    assert code == 0 and not bad, f"kubeconform:\n{json.dumps(bad, indent=1)}"
    return report


@pytest.fixture(scope="module")
def crd_schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crd-schemas")
    convert = load_hack("openapi2jsonschema")
    assert convert.main(["--crd", str(CRD), str(out)]) == 0
    return out


@pytest.mark.parametrize("values", VALUE_SETS, ids=lambda p: p.name if p else "defaults")
def test_every_rendered_object_matches_the_kubernetes_schemas(
    values: Path | None, crd_schemas: Path
) -> None:
    manifests = template(values, crds=True)
    report = kubeconform(manifests, crd_dir=crd_schemas)
    summary = report["summary"]
    rendered = [d for d in yaml.safe_load_all(manifests) if d]
    monitors = sum(d["kind"] == "ServiceMonitor" for d in rendered)
    assert summary["valid"] == len(rendered) - monitors > 0, summary
    assert summary["skipped"] == monitors, summary


def test_kubeconform_rejects_what_the_api_server_would(crd_schemas: Path) -> None:
    """The validator is not vacuous: an unknown field and a wrong type are reported."""
    objects = render()
    deployment = find(objects, "Deployment", f"{RELEASE}-operator")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Never"
    service = find(objects, "Service", f"{RELEASE}-shim")
    service["spec"]["ports"][0]["port"] = "eighty"
    code, report = run_kubeconform(yaml.safe_dump_all([deployment, service]), crd_schemas)
    assert code != 0 and report["summary"]["invalid"] == 2, report
    messages = " ".join(r["msg"] for r in report["resources"])
    assert "imagePullPolcy" in messages and "/spec/ports/0/port" in messages, messages


def test_examples_match_the_crd_schema_in_kubeconform(crd_schemas: Path) -> None:
    text = "\n---\n".join(p.read_text() for p in EXAMPLES)
    report = kubeconform(text, crd_dir=crd_schemas)
    assert report["summary"]["valid"] == len(EXAMPLES), report["summary"]


def test_defaults_render_a_secure_operator_and_shim() -> None:
    objects = render()
    operator = find(objects, "Deployment", f"{RELEASE}-operator")
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    assert operator["spec"]["replicas"] == 1
    op = container(operator)
    assert op["args"] == ["operator"]  # cluster-wide
    assert op["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in op["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    operator_env = env(operator)
    assert operator_env["WASINN_NAMESPACES"] == ""
    assert operator_env["WASINN_MODELS_CLAIM"] == "models"
    assert operator_env["WASINN_OPENVINO_LABEL"] == "wasinn.dev/openvino=true"
    assert operator_env["WASINN_PROPLET_IMAGE"] == "localhost/wasinn-proplet:dev"
    assert "WASINN_NODE_FEATURES" not in operator_env
    assert (operator_env["WASINN_GPU_RESOURCE"], operator_env["WASINN_NPU_RESOURCE"]) == (
        "gpu.intel.com/i915",
        "npu.intel.com/accel",
    )
    assert not set(operator_env) & PENDING_OPERATOR_ENV

    sh = container(shim)
    assert sh["args"][0] == "shim" and "--backend=kubernetes" in sh["args"]
    assert "--token-file=/var/run/secrets/wasinn/token/token" in sh["args"]
    assert [p["containerPort"] for p in sh["ports"]] == [7070]
    # /livez: a dependency down (MQTT, disk) must not take the REST API out of the Service.
    assert sh["readinessProbe"]["httpGet"]["path"] == "/livez"
    assert sh["livenessProbe"]["httpGet"]["path"] == "/livez"
    service = find(objects, "Service", f"{RELEASE}-shim")
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [7070, 8080]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}

    for deployment in (operator, shim):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is True
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container(deployment)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        tmp = [v for v in spec["volumes"] if v["name"] == mounts["/tmp"]]
        assert "emptyDir" in tmp[0]
    for account in [o for o in objects if o["kind"] == "ServiceAccount"]:
        assert account["automountServiceAccountToken"] is False

    token = find(objects, "Secret", f"{RELEASE}-shim-token")
    assert len(token["data"]["token"]) >= 48
    assert sorted(o["kind"] for o in objects if o["kind"] not in ("Secret",)) == sorted(
        ["ClusterRole", "ClusterRoleBinding"] * 2
        + ["PriorityClass"] * 3
        + ["Role", "RoleBinding"]
        + ["Deployment"] * 2
        + ["Service"] * 2
        + ["ServiceAccount"] * 2
    )


@pytest.mark.parametrize("values", VALUE_SETS, ids=lambda v: v.name if v else "defaults")
def test_every_chart_pod_meets_the_restricted_profile(values: Path | None) -> None:
    """So the release namespace can enforce `restricted` too (docs/security.md)."""
    for deployment in [o for o in render(values) if o["kind"] == "Deployment"]:
        pod = {"spec": deployment["spec"]["template"]["spec"]}
        assert restricted_violations(pod) == [], deployment["metadata"]["name"]


def rbac_rules(objects: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str, str]]:
    return grants(find(objects, kind, name)["rules"])


def test_cluster_wide_rbac_is_the_rules_files() -> None:
    objects = render()
    cluster_role = f"{RELEASE}-{NAMESPACE}-operator"
    assert rbac_rules(objects, "ClusterRole", cluster_role) == grants(
        rules("operator-rules.yaml")
    ) | grants(rules("operator-cluster-rules.yaml"))
    binding = find(objects, "ClusterRoleBinding", cluster_role)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]
    assert not [o for o in objects if o["kind"] == "Role" and "operator" in o["metadata"]["name"]]
    assert rbac_rules(objects, "Role", f"{RELEASE}-shim") == grants(rules("shim-rules.yaml"))
    assert rbac_rules(objects, "ClusterRole", f"{RELEASE}-{NAMESPACE}-shim") == grants(
        rules("shim-cluster-rules.yaml")
    )


def test_namespaced_rbac_scopes_the_operator_to_the_release_namespace() -> None:
    objects = render(CHART / "ci" / "namespaced-values.yaml")
    role = find(objects, "Role", f"{RELEASE}-operator")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role["rules"]) == grants(rules("operator-rules.yaml"))
    assert rbac_rules(objects, "ClusterRole", f"{RELEASE}-{NAMESPACE}-operator") == grants(
        rules("operator-cluster-rules.yaml")
    )
    operator = find(objects, "Deployment", f"{RELEASE}-operator")
    # kopf is scoped by the flag (WASINN_NAMESPACES alone would leave it cluster-wide).
    assert container(operator)["args"] == ["operator", f"--namespace={NAMESPACE}"]
    assert env(operator)["WASINN_NAMESPACES"] == NAMESPACE


def test_watch_namespaces_get_a_role_each_and_include_the_shims() -> None:
    objects = render(CHART / "ci" / "full-values.yaml", "rbac.watchNamespaces={ml-team}")
    roles = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator")
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(["ml-team", NAMESPACE])
    operator = find(objects, "Deployment", f"{RELEASE}-operator")
    assert container(operator)["args"][1:3] == ["--namespace=ml-team", f"--namespace={NAMESPACE}"]


def test_auth_off_has_no_token() -> None:
    objects = render(CHART / "ci" / "auth-off-values.yaml")
    assert not [o for o in objects if o["kind"] == "Secret"]
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    assert not [a for a in container(shim)["args"] if a.startswith("--token-file")]
    assert "token" not in {v["name"] for v in shim["spec"]["template"]["spec"]["volumes"]}


def test_a_given_token_and_an_existing_secret() -> None:
    objects = render(CHART / "ci" / "full-values.yaml")
    secret = find(objects, "Secret", f"{RELEASE}-shim-token")
    assert secret["data"]["token"] == "YS10b2tlbi1naXZlbi1pbi12YWx1ZXM="  # a-token-given-in-values
    objects = render(CHART / "ci" / "local-backend-values.yaml")
    assert not [o for o in objects if o["kind"] == "Secret"]
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    (volume,) = [v for v in shim["spec"]["template"]["spec"]["volumes"] if v["name"] == "token"]
    assert volume["secret"]["secretName"] == "my-shim-token"
    assert "--token-file=/var/run/secrets/wasinn/token/api-token" in container(shim)["args"]


def test_generated_token_differs_per_render_without_a_cluster() -> None:
    """Without a cluster `lookup` finds nothing: a fresh random token each time."""
    tokens = {find(render(), "Secret", f"{RELEASE}-shim-token")["data"]["token"] for _ in range(2)}
    assert len(tokens) == 2


def test_mqtt_with_the_bundled_broker() -> None:
    objects = render(CHART / "ci" / "mqtt-values.yaml")
    shim_env = env(find(objects, "Deployment", f"{RELEASE}-shim"))
    assert shim_env["PROPLET_MQTT_ADDRESS"] == f"tcp://{RELEASE}-mosquitto.{NAMESPACE}.svc:1883"
    # Propeller's proplet names (proplet/src/config.rs).
    assert shim_env["PROPLET_TENANT_ID"] == "d0c2a3f1-0000-4000-8000-000000000001"
    assert shim_env["PROPLET_API_KEY"] == {
        "secretKeyRef": {"name": f"{RELEASE}-mqtt", "key": "client-key"}
    }
    mosquitto = find(objects, "Deployment", f"{RELEASE}-mosquitto")
    assert mosquitto["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    find(objects, "Service", f"{RELEASE}-mosquitto")
    config = find(objects, "ConfigMap", f"{RELEASE}-mosquitto")
    assert "listener 1883" in config["data"]["mosquitto.conf"]
    # Task Pods never get broker credentials: only the shim publishes.
    assert not [k for k in env(find(objects, "Deployment", f"{RELEASE}-operator")) if "MQTT" in k]


def test_mqtt_with_an_existing_secret_and_results_only() -> None:
    objects = render(CHART / "ci" / "mqtt-existing-secret-values.yaml")
    assert not [o for o in objects if o["metadata"]["name"].endswith("-mosquitto")]
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    assert env(shim)["PROPLET_ENTITY_ID"] == {
        "secretKeyRef": {"name": "supermq-credentials", "key": "id"}
    }
    assert "--no-proplet" in container(shim)["args"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("mqtt.enabled=true",), "mqtt.address"),
        (("mqtt.enabled=true", "mqtt.address=tcp://b:1883"), "mqtt.domainId is required"),
        (("shim.backend=sqlite",), "shim.backend must be kubernetes or local"),
        (("operator.serviceAccount.create=false",), "operator.serviceAccount.name is required"),
    ],
)
def test_bad_values_fail_with_a_message(sets: tuple[str, ...], message: str) -> None:
    args = ["template", RELEASE, str(CHART), *value_args(None, sets)]
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_claims_existing_and_created() -> None:
    objects = render(CHART / "ci" / "existing-claim-values.yaml")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert env(find(objects, "Deployment", f"{RELEASE}-operator"))["WASINN_MODELS_CLAIM"] == (
        "shared-models"
    )
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    (data,) = [v for v in shim["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"] == {"claimName": "shim-artifacts"}

    objects = render(CHART / "ci" / "created-claim-values.yaml")
    models = find(objects, "PersistentVolumeClaim", "models")
    assert models["spec"]["storageClassName"] == "standard"
    assert models["spec"]["accessModes"] == ["ReadWriteMany"]
    assert models["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert models["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    find(objects, "PersistentVolumeClaim", f"{RELEASE}-shim-data")


def test_full_values_reach_the_pods() -> None:
    objects = render(CHART / "ci" / "full-values.yaml")
    operator = find(objects, "Deployment", f"{RELEASE}-operator")
    pod = operator["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert pod["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert container(operator)["image"] == "registry.example.com/wasinn/operator:0.1.0"
    operator_env = env(operator)
    assert operator_env["WASINN_PROPLET_IMAGE"] == "registry.example.com/wasinn/proplet:0.1.0"
    assert operator_env["WASINN_PULL_POLICY"] == "Always"
    assert operator_env["WASINN_OPENVINO_LABEL"] == "intel.feature.node.kubernetes.io/gpu=true"
    assert operator_env["WASINN_RESULTS_CAP"] == "65536"
    assert operator_env["WASINN_PROPLET_SERVICE_ACCOUNT"] == "wasinn-proplet"
    assert json.loads(operator_env["WASINN_PROPLET_RESOURCES"])["limits"] == {"memory": "2Gi"}
    assert operator_env["WASINN_PROPLET_TIMEOUT_SECONDS"] == "600"
    assert operator_env["WASINN_PROPLET_ENGINE"] == "wasmtime-cli"
    assert operator_env["WASINN_MODEL_CACHE_CLAIM"] == "model-cache"
    assert operator_env["WASINN_MODEL_CACHE_BYTES"] == "20Gi"
    settings = OperatorSettings.from_env(operator_env)
    assert settings.model_cache_bytes == 20 << 30
    assert settings.node_features == (
        ("feature.node.kubernetes.io/cpu-cpuid.AVX512BF16", "true"),
        ("feature.node.kubernetes.io/cpu-model.vendor_id", "Intel"),
    )
    assert (settings.gpu_resource, settings.npu_resource) == (
        "gpu.intel.com/xe",
        "npu.intel.com/accel",
    )
    shim = find(objects, "Deployment", f"{RELEASE}-shim")
    policy = TaskPolicy(
        allow_host_dirs=("/data/shared", "/scratch"),
        default_timeout=120,
        max_timeout=7200,
        default_max_memory=256 << 20,
        max_memory=2 << 30,
        max_field_bytes=16384,
        allow_model_origins=("https://models.example/", "oci://registry.example/models", "pvc://"),
        max_model_bytes=2 << 30,
    )
    # The operator and the shim read the same task policy.
    assert policy_from_settings(operator_env) == policy
    assert policy_from_settings(env(shim)) == policy
    assert "--public-url=https://wasinn.example.com" in container(shim)["args"]
    assert "--max-wasm-bytes=52428800" in container(shim)["args"]
    service = find(objects, "Service", f"{RELEASE}-shim")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    assert set(monitors) == {f"{RELEASE}-operator", f"{RELEASE}-shim"}
    # Each ServiceMonitor scrapes a named port of a Service it selects.
    for component, monitor in ((c, monitors[f"{RELEASE}-{c}"]) for c in ("operator", "shim")):
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (svc,) = [
            o
            for o in objects
            if o["kind"] == "Service"
            and selector.items() <= o["metadata"]["labels"].items()
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


def operator_env_names() -> set[str]:
    """WASINN_* names the operator's code reads (controller/run.py and settings.py, and the
    task policy's settings)."""
    found = set()
    for name in ("controller/run.py", "controller/settings.py", "controller/handlers.py",
                 "api/policyflags.py"):  # fmt: skip
        text = (REPO / "operator" / "wasinn_operator" / name).read_text()
        found |= set(re.findall(r"WASINN_[A-Z_]+", text))
        found |= {f"WASINN_{n}" for n in re.findall(r'get\("([A-Z_]+)"', text)}
    return found


def test_operator_env_is_what_the_operator_reads() -> None:
    objects = render(CHART / "ci" / "full-values.yaml")
    passed = {k for k in env(find(objects, "Deployment", f"{RELEASE}-operator")) if "WASINN" in k}
    unknown = passed - operator_env_names() - PENDING_OPERATOR_ENV
    assert not unknown, f"the chart sets {sorted(unknown)}, which the operator does not read"
    now_supported = PENDING_OPERATOR_ENV & operator_env_names()
    assert not now_supported, f"{sorted(now_supported)} are read now: update values.yaml docs"


def test_tools_script_is_quick_when_installed() -> None:
    """hack/tools.sh is idempotent: a second run only checks the stamps."""
    tool("helm")
    proc = subprocess.run(
        [str(REPO / "hack" / "tools.sh")], capture_output=True, text=True, timeout=20, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == str(tools_script("bindir"))


def test_priority_classes_are_created_and_handed_to_the_operator() -> None:
    """issue 14: a task's priority becomes its Pod's PriorityClass (controller/priority.py)."""
    objects = render()
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PriorityClass"}
    assert sorted(classes) == [f"{RELEASE}-high", f"{RELEASE}-low", f"{RELEASE}-normal"]
    assert [classes[f"{RELEASE}-{n}"]["value"] for n in ("low", "normal", "high")] == [
        1000,
        2000,
        3000,
    ]
    assert {c["preemptionPolicy"] for c in classes.values()} == {"Never"}
    assert not any(c["globalDefault"] for c in classes.values())
    operator = find(objects, "Deployment", f"{RELEASE}-operator")
    bands = env(operator)["WASINN_PRIORITY_CLASSES"]
    assert bands == f"{RELEASE}-low=0,{RELEASE}-normal=34,{RELEASE}-high=67"
    assert parse_bands(bands) == ((0, f"{RELEASE}-low"), (34, f"{RELEASE}-normal"),
                                  (67, f"{RELEASE}-high"))  # fmt: skip

    disabled = render(None, "priorityClasses.enabled=false")
    assert not [o for o in disabled if o["kind"] == "PriorityClass"]
    operator = find(disabled, "Deployment", f"{RELEASE}-operator")
    assert "WASINN_PRIORITY_CLASSES" not in env(operator)


def test_the_operators_pod_watch_selects_the_warm_workers() -> None:
    """The operator's Pod watch selects `app.kubernetes.io/part-of=wasinn` on the API server:
    a worker Pod without it would never reach the operator."""
    objects = render(None, "warmWorkers.enabled=true")
    worker = find(objects, "Deployment", f"{RELEASE}-warm-default")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    key, value = handlers.POD_SELECTOR.split("=")
    assert labels[key] == value and "wasinn.dev/warm-pool" in labels
