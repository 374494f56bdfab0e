"""Pure builders: a task becomes a Pod (and, for inline modules, a ConfigMap).

Nothing here talks to the API; every function takes the task body and settings and returns
manifests, so each spec field's effect is unit-tested alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ..api import (
    GROUP,
    KIND,
    PROPELLER_ID_LABEL,
    PROPELLER_NAME_ANNOTATION,
    VERSION,
    WasiNNTaskSpec,
    WasmSource,
)
from ..api.modelsource import PVC_SOURCES_DIR
from ..api.policy import POLICY_ENV, TaskPolicy
from .nodes import Requirements, affinity, resources

CONTAINER = "proplet"
PROPLET_UID = 65532
WASM_DIR = "/wasm"
WASM_FILE = "module.wasm"
TERMINATION_LOG = "/dev/termination-log"
# Where the proplet fetches model sources (an emptyDir, or the cache claim); the guest sees each
# model read-only at /models/NAME, never this directory.
MODEL_CACHE_DIR = "/var/cache/wasinn-models"
MAX_TASK_ENV_BYTES = 100_000
TASK_LABEL = "wasinn.dev/task"
TASK_UID_LABEL = "wasinn.dev/task-uid"
ATTEMPT_LABEL = "wasinn.dev/attempt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "wasinn-operator"}
# On every Pod the operator watches (task Pods here, warm workers in the chart): its Pod watch
# selects them server-side, so the cluster's other Pods cost it nothing.
PART_OF = ("app.kubernetes.io/part-of", "wasinn")


class TaskTooLargeError(ValueError):
    """The task's args and env do not fit a Pod's environment."""


def label_value(text: str) -> str:
    """`text` if it is a valid label value length, else a stable 63-character form."""
    if len(text) <= 63:
        return text
    return f"{text[:46]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def pod_name(task_name: str, attempt: int) -> str:
    """`<task>-<attempt>`, shortened with a hash when the task name is long."""
    suffix = f"-{attempt}"
    if len(task_name) + len(suffix) <= 63:
        return task_name + suffix
    digest = hashlib.sha256(task_name.encode()).hexdigest()[:10]
    return f"{task_name[: 63 - len(suffix) - 11]}-{digest}{suffix}"


def wasm_configmap_name(task_name: str) -> str:
    """The ConfigMap that carries an inline module."""
    return label_value(f"{task_name}-wasm")


def task_labels(task: dict[str, Any]) -> dict[str, str]:
    """Labels that tie a child to its task."""
    meta = task["metadata"]
    labels = {
        **MANAGED_BY,
        PART_OF[0]: PART_OF[1],
        TASK_LABEL: label_value(meta["name"]),
        TASK_UID_LABEL: meta["uid"],
    }
    propeller_id = (meta.get("labels") or {}).get(PROPELLER_ID_LABEL)
    if propeller_id:
        labels[PROPELLER_ID_LABEL] = propeller_id
    return labels


def module(spec: WasiNNTaskSpec) -> WasmSource:
    """The task's module source; only a suspended task, which gets no Pod, may lack one."""
    if spec.wasm is None:
        raise ValueError("spec.wasm is required unless the task is suspended")
    return spec.wasm


def proplet_task(task: dict[str, Any], spec: WasiNNTaskSpec) -> dict[str, Any]:
    """The JSON the proplet reads from WASINN_TASK: the spec, with the module made reachable."""
    source = module(spec)
    wasm: dict[str, Any] = {}
    if source.inline is not None or source.config_map_key_ref is not None:
        wasm["path"] = f"{WASM_DIR}/{WASM_FILE}"
    else:
        wasm[source.kind] = getattr(source, source.kind)
    if source.digest:
        wasm["digest"] = source.digest
    meta = task["metadata"]
    return {
        "id": (meta.get("labels") or {}).get(PROPELLER_ID_LABEL) or meta["uid"],
        # Propeller's name where the shim wrote one: runtimes call the export named after it.
        "name": (meta.get("annotations") or {}).get(PROPELLER_NAME_ANNOTATION) or meta["name"],
        "wasm": wasm,
        "cliArgs": spec.cli_args,
        "args": spec.args,
        "env": spec.env,
        "daemon": spec.daemon,
        "timeoutSeconds": spec.timeout_seconds,
        "engine": spec.engine,
        "device": spec.device,
        "modelSources": [s.model_dump(exclude_none=True) for s in spec.model_sources],
    }


def build_wasm_configmap(task: dict[str, Any], spec: WasiNNTaskSpec) -> dict[str, Any] | None:
    """The ConfigMap holding an inline module (a Pod's environment cannot carry it)."""
    source = module(spec)
    if source.inline is None:
        return None
    meta = task["metadata"]
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": wasm_configmap_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": task_labels(task),
            "ownerReferences": [owner_reference(task)],
        },
        "binaryData": {WASM_FILE: source.inline},
        "immutable": True,
    }
    return configmap


def build_pod(
    task: dict[str, Any],
    spec: WasiNNTaskSpec,
    attempt: int,
    *,
    image: str,
    pull_policy: str,
    placement: Requirements,
    claim: str,
    service_account: str | None = None,
    policy: TaskPolicy | None = None,
    model_cache_claim: str | None = None,
    model_cache_bytes: int = 20 << 30,
    priority_class: str | None = None,
) -> dict[str, Any]:
    """The Pod for one attempt of a task, placed by `placement` (nodes.requirements), of
    PriorityClass `priority_class` when given (controller/priority.py); its
    proplet applies `policy` (default: the strict one) to the task again. The Pod meets the
    `restricted` Pod Security Standard whatever the spec holds: non-root, no privilege
    escalation, every capability dropped, RuntimeDefault seccomp, only claim, emptyDir and
    ConfigMap volumes, no API token, a read-only root filesystem. Model sources are fetched by
    the proplet into an emptyDir of `model_cache_bytes` (or `model_cache_claim`, which the
    proplet trims to that size); each `pvc://` source is its claim's subPath, read-only."""
    meta = task["metadata"]
    task_json = json.dumps(proplet_task(task, spec), separators=(",", ":"))
    if len(task_json.encode()) > MAX_TASK_ENV_BYTES:
        raise TaskTooLargeError(
            f"the task's args and env take {len(task_json.encode())} bytes; at most "
            f"{MAX_TASK_ENV_BYTES} fit a Pod's environment"
        )
    models = spec.models
    volumes: list[dict[str, Any]] = [
        {
            "name": "models",
            "persistentVolumeClaim": {
                "claimName": models.claim_name or claim,
                "readOnly": models.read_only,
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": models.mount_path, "readOnly": models.read_only},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if models.sub_path:
        mounts[0]["subPath"] = models.sub_path
    source_volumes, source_mounts, source_env = _model_source_volumes(
        spec, model_cache_claim, model_cache_bytes
    )
    volumes += source_volumes
    mounts += source_mounts
    wasm_volume = _wasm_volume(task, spec)
    if wasm_volume is not None:
        volumes.append(wasm_volume)
        mounts.append({"name": "wasm", "mountPath": WASM_DIR, "readOnly": True})
    labels = {**task_labels(task), ATTEMPT_LABEL: str(attempt)}
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(meta["name"], attempt),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(task)],
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "nodeSelector": dict(placement.labels),
            "tolerations": copy.deepcopy(placement.tolerations),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": PROPLET_UID,
                "runAsGroup": PROPLET_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": CONTAINER,
                    "image": image,
                    "imagePullPolicy": pull_policy,
                    "command": ["wasinn", "proplet", "run"],
                    "env": [
                        {"name": "WASINN_TASK", "value": task_json},
                        {"name": "WASINN_MODELS_DIR", "value": models.mount_path},
                        {"name": "WASINN_CACHE_DIR", "value": "/tmp/wasinn-cache"},
                        {"name": "WASINN_TERMINATION_LOG", "value": TERMINATION_LOG},
                        {"name": "HOME", "value": "/tmp"},
                        {"name": POLICY_ENV, "value": (policy or TaskPolicy()).to_json()},
                        *source_env,
                    ],
                    "resources": resources(spec.resources, placement),
                    "volumeMounts": mounts,
                    "terminationMessagePath": TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "runAsUser": PROPLET_UID,
                        "runAsGroup": PROPLET_UID,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                }
            ],
            "volumes": volumes,
        },
    }
    node_affinity = affinity(placement)
    if node_affinity is not None:
        pod["spec"]["affinity"] = node_affinity
    if spec.timeout_seconds is not None:
        pod["spec"]["activeDeadlineSeconds"] = spec.timeout_seconds
    if service_account:
        pod["spec"]["serviceAccountName"] = service_account
    if priority_class:
        pod["spec"]["priorityClassName"] = priority_class
    if model_cache_claim and any(v["name"] == "model-cache" for v in volumes):
        # The proplet (non-root) writes the shared cache claim: make its files the group's.
        pod["spec"]["securityContext"]["fsGroup"] = PROPLET_UID
    return pod


def owner_reference(task: dict[str, Any]) -> dict[str, Any]:
    """The controller reference that makes the garbage collector delete children with the task."""
    meta = task["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _wasm_volume(task: dict[str, Any], spec: WasiNNTaskSpec) -> dict[str, Any] | None:
    source = module(spec)
    if source.inline is not None:
        name = wasm_configmap_name(task["metadata"]["name"])
        return {"name": "wasm", "configMap": {"name": name}}
    ref = source.config_map_key_ref
    if ref is not None:
        items = [{"key": ref.key, "path": WASM_FILE}]
        return {"name": "wasm", "configMap": {"name": ref.name, "items": items}}
    return None


def _model_source_volumes(
    spec: WasiNNTaskSpec, cache_claim: str | None, cache_bytes: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """Volumes, mounts and env for the task's model sources: one cache for the fetched ones
    (a claim the proplet trims to `cache_bytes`, or an emptyDir that size), one read-only claim
    volume per `pvc://` source (at PVC_SOURCES_DIR/NAME)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, str]] = []
    fetched = [s for s in spec.model_sources if s.location.scheme != "pvc"]
    if fetched:
        cache: dict[str, Any] = (
            {"persistentVolumeClaim": {"claimName": cache_claim}}
            if cache_claim
            else {"emptyDir": {"sizeLimit": str(cache_bytes)}}
        )
        volumes.append({"name": "model-cache", **cache})
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
        env.append({"name": "WASINN_MODEL_CACHE", "value": MODEL_CACHE_DIR})
        if cache_claim:  # shared and long-lived: each proplet trims it after its fetches
            env.append({"name": "WASINN_MODEL_CACHE_BYTES", "value": str(cache_bytes)})
    for index, source in enumerate(s for s in spec.model_sources if s not in fetched):
        location = source.location
        name = f"model-pvc-{index}"
        claim = {"claimName": location.host, "readOnly": True}
        volumes.append({"name": name, "persistentVolumeClaim": claim})
        mount = {"name": name, "mountPath": f"{PVC_SOURCES_DIR}/{source.name}", "readOnly": True}
        if location.path:
            mount["subPath"] = location.path
        mounts.append(mount)
    return volumes, mounts, env
