"""Every task Pod meets the `restricted` Pod Security Standard, whatever its spec holds.

`restricted_violations` restates the profile's checks (Kubernetes v1.32, baseline included)
field by field, so a change to `build_pod` that a `pod-security.kubernetes.io/enforce=restricted`
namespace would reject fails here first; tests/cluster/test_pod_security.py has the API server
judge the same Pod.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.policy import TaskPolicy
from wasinn_operator.controller import OperatorSettings, build_pod
from wasinn_operator.controller.nodes import requirements

pytestmark = pytest.mark.unit
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the `restricted` profile finds wrong with `pod` (empty: admitted)."""
    spec = pod["spec"]
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"spec.{field}")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("hostProcess")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    found += _context_violations("pod", pod_sc)
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        found += _context_violations(name, sc)
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"{name}: runAsNonRoot is not true")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities add {capabilities['add']}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            found.append(f"{name}: hostPort")
    return found


def _context_violations(where: str, sc: dict[str, Any]) -> list[str]:
    found = []
    if sc.get("runAsUser") == 0:
        found.append(f"{where}: runAsUser 0")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append(f"{where}: seccompProfile Unconfined")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"{where}: seLinuxOptions")
    apparmor = (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault")
    if apparmor not in ("RuntimeDefault", "Localhost"):
        found.append(f"{where}: appArmorProfile {apparmor}")
    return found


def build(spec: dict[str, Any], **settings: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {"name": "t", "namespace": "ml", "uid": "u-1", "labels": {}},
        "spec": spec,
    }
    return build_pod(
        body,
        WasiNNTaskSpec.model_validate(spec),
        1,
        image="reg/proplet:1",
        pull_policy="IfNotPresent",
        placement=requirements(WasiNNTaskSpec.model_validate(spec), OperatorSettings()),
        claim="models",
        **settings,
    )


SPECS = [
    {"wasm": {"url": "http://shim/artifacts/sha256:x"}},
    {"wasm": {"inline": "AGFzbQEAAAA="}, "device": "GPU", "engine": "wasmtime-cli"},
    {"wasm": {"configMapKeyRef": {"name": "g", "key": "m.wasm"}}, "timeoutSeconds": 30},
    {
        "wasm": {"image": "reg/m:1"},
        "models": {"claimName": "zoo", "subPath": "v2"},
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "resources": {"limits": {"memory": "2Gi"}},
    },
]


@pytest.mark.parametrize("spec", SPECS)
def test_task_pods_meet_the_restricted_profile(spec: dict[str, Any]) -> None:
    pod = build(spec, service_account="runner", policy=TaskPolicy(allow_host_dirs=("/data",)))
    assert restricted_violations(pod) == []
    pod_spec = pod["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    [container] = pod_spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["securityContext"]["runAsUser"] != 0
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert (models["mountPath"], models["readOnly"]) == ("/models", True)


def test_the_checker_finds_what_the_profile_forbids() -> None:
    pod = build(SPECS[0])
    broken = copy.deepcopy(pod)
    broken["spec"]["hostNetwork"] = True
    broken["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    sc = broken["spec"]["containers"][0]["securityContext"]
    sc.update(allowPrivilegeEscalation=True, privileged=True, runAsNonRoot=False)
    sc["capabilities"] = {"add": ["SYS_ADMIN"]}
    sc["seccompProfile"] = {"type": "Unconfined"}
    assert restricted_violations(broken) == [
        "spec.hostNetwork",
        "volume h: ['hostPath']",
        "proplet: seccompProfile Unconfined",
        "proplet: privileged",
        "proplet: allowPrivilegeEscalation is not false",
        "proplet: runAsNonRoot is not true",
        "proplet: seccompProfile Unconfined",
        "proplet: capabilities do not drop ALL",
        "proplet: capabilities add ['SYS_ADMIN']",
    ]
    bare = copy.deepcopy(pod)
    del bare["spec"]["securityContext"]
    bare["spec"]["containers"][0]["securityContext"] = {}
    assert "proplet: runAsNonRoot is not true" in restricted_violations(bare)
    assert "proplet: seccompProfile None" in restricted_violations(bare)
