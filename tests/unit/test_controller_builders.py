"""build_pod / build_wasm_configmap: every spec field's effect on the manifests."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.controller import (
    OperatorSettings,
    build_pod,
    build_wasm_configmap,
    pod_name,
    proplet_task,
)
from wasinn_operator.controller.builders import TaskTooLargeError
from wasinn_operator.controller.nodes import requirements

pytestmark = pytest.mark.unit
UID = "0b7c6f1e-1111-4222-8333-444455556666"
DIGEST = "sha256:" + "b" * 64


def task(
    spec: dict[str, Any], name: str = "cat", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "wasinn.dev/v1alpha1",
        "kind": "WasiNNTask",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "labels": labels or {}},
        "spec": spec,
    }


def pod_for(
    spec: dict[str, Any],
    attempt: int = 1,
    settings: OperatorSettings | None = None,
    **kw: Any,
) -> dict[str, Any]:
    body = task(spec, **kw)
    model = WasiNNTaskSpec.model_validate(spec)
    return build_pod(
        body,
        model,
        attempt,
        image="reg/proplet:1",
        pull_policy="Never",
        placement=requirements(model, settings or OperatorSettings()),
        claim="models",
    )


def container(pod: dict[str, Any]) -> dict[str, Any]:
    [c] = pod["spec"]["containers"]
    return dict(c)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(pod)["env"]}


def test_defaults() -> None:
    pod = pod_for({"wasm": {"url": "http://shim:8080/artifacts/sha256:x"}})
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "cat-1"
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["metadata"]["labels"]["wasinn.dev/task-uid"] == UID
    assert pod["metadata"]["labels"]["wasinn.dev/attempt"] == "1"
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "wasinn.dev/v1alpha1",
            "kind": "WasiNNTask",
            "name": "cat",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["restartPolicy"] == "Never"
    assert spec["nodeSelector"] == {"wasinn.dev/openvino": "true"}
    assert spec["automountServiceAccountToken"] is False
    assert "activeDeadlineSeconds" not in spec
    assert spec["volumes"][0] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    c = container(pod)
    assert (c["image"], c["imagePullPolicy"]) == ("reg/proplet:1", "Never")
    assert c["volumeMounts"][0] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    security = c["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"] == {}


def test_proplet_task_env_carries_the_spec() -> None:
    spec = {
        "wasm": {"image": "reg/wasm/classify:1", "digest": DIGEST},
        "cliArgs": ["-S", "nn"],
        "args": ["a", "b"],
        "env": {"MODEL_DIR": "/models/x"},
        "daemon": True,
        "timeoutSeconds": 30,
        "engine": "wasmtime-cli",
        "device": "AUTO",
    }
    pod = pod_for(spec, labels={"wasinn.dev/propeller-id": "p-1"})
    sent = json.loads(env_of(pod)["WASINN_TASK"])
    assert sent == {
        "id": "p-1",
        "name": "cat",
        "wasm": {"image": "reg/wasm/classify:1", "digest": DIGEST},
        "cliArgs": ["-S", "nn"],
        "args": ["a", "b"],
        "env": {"MODEL_DIR": "/models/x"},
        "daemon": True,
        "timeoutSeconds": 30,
        "engine": "wasmtime-cli",
        "device": "AUTO",
        "modelSources": [],
    }
    assert pod["spec"]["activeDeadlineSeconds"] == 30
    assert pod["metadata"]["labels"]["wasinn.dev/propeller-id"] == "p-1"
    # Task env goes in the task JSON for the guest, never into the container's environment.
    assert "MODEL_DIR" not in env_of(pod)


def test_models_volume_fields() -> None:
    spec = {
        "wasm": {"path": "/models/m.wasm"},
        "models": {"claimName": "zoo", "mountPath": "/data", "subPath": "v2", "readOnly": True},
    }
    pod = pod_for(spec)
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "zoo",
        "readOnly": True,
    }
    assert container(pod)["volumeMounts"][0] == {
        "name": "models",
        "mountPath": "/data",
        "readOnly": True,
        "subPath": "v2",
    }
    assert env_of(pod)["WASINN_MODELS_DIR"] == "/data"


@pytest.mark.parametrize(
    ("device", "resource"), [("GPU", "gpu.intel.com/i915"), ("NPU", "npu.intel.com/accel")]
)
def test_devices_request_plugin_resources(device: str, resource: str) -> None:
    spec = {
        "wasm": {"path": "/a"},
        "device": device,
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "500m"}},
    }
    pod = pod_for(spec)
    # A quantity string: what the API server returns, so the Pod compares equal after a read.
    resources = container(pod)["resources"]
    assert resources == {"limits": {"memory": "1Gi", resource: "1"}, "requests": {"cpu": "500m"}}
    assert pod["spec"]["tolerations"] == [
        {"key": resource, "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["spec"]["nodeSelector"] == {"wasinn.dev/openvino": "true"}
    assert "affinity" not in pod["spec"]


@pytest.mark.parametrize(
    ("args", "resource"),
    [
        (["--target", "gpu", "/t.f32"], "gpu.intel.com/xe"),
        (["--target=GPU", "/t.f32"], "gpu.intel.com/xe"),
        (["--model", "m", "--target", "tpu"], "npu.intel.com/accel"),
    ],
)
def test_a_guest_target_argument_requests_the_configured_device(
    args: list[str], resource: str
) -> None:
    settings = OperatorSettings(gpu_resource="gpu.intel.com/xe")
    pod = pod_for({"wasm": {"path": "/a"}, "args": args}, settings=settings)
    assert container(pod)["resources"] == {"limits": {resource: "1"}}


@pytest.mark.parametrize("args", [["--target", "cpu"], ["--target"], ["--targets", "gpu"]])
def test_no_device_without_a_device_target(args: list[str]) -> None:
    pod = pod_for({"wasm": {"path": "/a"}, "args": args, "device": "AUTO"})
    assert container(pod)["resources"] == {}
    assert pod["spec"]["tolerations"] == []


def test_a_task_may_ask_for_more_devices() -> None:
    spec = {
        "wasm": {"path": "/a"},
        "device": "GPU",
        "resources": {"requests": {"gpu.intel.com/i915": 2}},
        "tolerations": [{"key": "gpu.intel.com/i915", "operator": "Exists"}],
    }
    pod = pod_for(spec)
    assert container(pod)["resources"] == {
        "limits": {"gpu.intel.com/i915": "2"},
        "requests": {"gpu.intel.com/i915": "2"},
    }
    # The task's own toleration of the device taint is kept, not doubled.
    assert pod["spec"]["tolerations"] == [{"key": "gpu.intel.com/i915", "operator": "Exists"}]


def test_node_features_become_required_node_affinity() -> None:
    settings = OperatorSettings(
        node_features=(("feature.node.kubernetes.io/cpu-cpuid.AVX512BF16", "true"),)
    )
    spec = {
        "wasm": {"path": "/a"},
        "nodeFeatures": [
            "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
            "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16=true",  # the operator's already
            "intel.feature.node.kubernetes.io/gpu=true",
        ],
    }
    pod = pod_for(spec, settings=settings)
    node_affinity = pod["spec"]["affinity"]["nodeAffinity"]
    assert node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {
                        "key": "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
                        "operator": "In",
                        "values": ["true"],
                    },
                    {
                        "key": "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
                        "operator": "In",
                        "values": ["true"],
                    },
                    {
                        "key": "intel.feature.node.kubernetes.io/gpu",
                        "operator": "In",
                        "values": ["true"],
                    },
                ]
            }
        ]
    }
    # The OpenVINO label stays the selector.
    assert pod["spec"]["nodeSelector"] == {"wasinn.dev/openvino": "true"}


def test_selector_tolerations_and_label_wins() -> None:
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec = {
        "wasm": {"path": "/a"},
        "tolerations": [toleration],
        "nodeSelector": {"zone": "a", "wasinn.dev/openvino": "false"},
    }
    pod = pod_for(spec)
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "wasinn.dev/openvino": "true"}
    assert pod["spec"]["tolerations"] == [toleration]


def test_inline_module_goes_through_an_owned_configmap() -> None:
    wasm = base64.b64encode(b"\0asm\x01\0\0\0").decode()
    spec = {"wasm": {"inline": wasm, "digest": DIGEST}}
    body = task(spec)
    configmap = build_wasm_configmap(body, WasiNNTaskSpec.model_validate(spec))
    assert configmap is not None
    assert configmap["binaryData"] == {"module.wasm": wasm}
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == UID
    pod = pod_for(spec)
    assert {"name": "wasm", "configMap": {"name": "cat-wasm"}} in pod["spec"]["volumes"]
    assert {"name": "wasm", "mountPath": "/wasm", "readOnly": True} in container(pod)[
        "volumeMounts"
    ]
    sent = json.loads(env_of(pod)["WASINN_TASK"])
    assert sent["wasm"] == {"path": "/wasm/module.wasm", "digest": DIGEST}
    assert (
        build_wasm_configmap(
            task({"wasm": {"path": "/a"}}), WasiNNTaskSpec.model_validate({"wasm": {"path": "/a"}})
        )
        is None
    )


def test_configmap_key_ref_is_mounted_as_the_module() -> None:
    pod = pod_for({"wasm": {"configMapKeyRef": {"name": "guests", "key": "classify"}}})
    assert {
        "name": "wasm",
        "configMap": {"name": "guests", "items": [{"key": "classify", "path": "module.wasm"}]},
    } in pod["spec"]["volumes"]
    assert json.loads(env_of(pod)["WASINN_TASK"])["wasm"] == {"path": "/wasm/module.wasm"}


def test_names_stay_within_limits() -> None:
    long = "t" * 250
    assert len(pod_name(long, 12)) <= 63
    assert pod_name(long, 12).endswith("-12")
    assert pod_name(long, 1) != pod_name("t" * 249, 1)
    pod = pod_for({"wasm": {"path": "/a"}}, name=long)
    assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())


def test_too_large_task_is_refused() -> None:
    with pytest.raises(TaskTooLargeError, match="fit a Pod's environment"):
        pod_for({"wasm": {"path": "/a"}, "args": ["x" * 4000] * 30})


def test_service_account_setting() -> None:
    spec = {"wasm": {"path": "/a"}}
    pod = build_pod(
        task(spec),
        WasiNNTaskSpec.model_validate(spec),
        1,
        image="i",
        pull_policy="Always",
        placement=requirements(WasiNNTaskSpec.model_validate(spec), OperatorSettings()),
        claim="c",
        service_account="runner",
    )
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert proplet_task(task(spec), WasiNNTaskSpec.model_validate(spec))["id"] == UID


SOURCES = [
    {"name": "effnet", "uri": "oci://reg.example/models/effnet:v1", "sha256": DIGEST},
    {"name": "ocr", "uri": "https://models.example/ocr/model.onnx", "sha256": DIGEST},
    {"name": "shared", "uri": "pvc://team-models/detectors/v2"},
]


def test_model_sources_reach_the_proplet_and_its_volumes() -> None:
    spec = {"wasm": {"url": "http://shim/artifacts/x"}, "modelSources": SOURCES}
    pod = pod_for(spec)
    assert json.loads(env_of(pod)["WASINN_TASK"])["modelSources"] == SOURCES
    assert env_of(pod)["WASINN_MODEL_CACHE"] == "/var/cache/wasinn-models"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # Bounded disk by default: the emptyDir has the operator's model-cache size (20 GiB).
    assert volumes["model-cache"] == {
        "name": "model-cache",
        "emptyDir": {"sizeLimit": "21474836480"},
    }
    assert "WASINN_MODEL_CACHE_BYTES" not in env_of(pod)  # the Pod's own cache is not trimmed
    assert volumes["model-pvc-0"]["persistentVolumeClaim"] == {
        "claimName": "team-models",
        "readOnly": True,
    }
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": "/var/cache/wasinn-models"}
    assert mounts["model-pvc-0"] == {
        "name": "model-pvc-0",
        "mountPath": "/var/run/wasinn/model-pvcs/shared",
        "readOnly": True,
        "subPath": "detectors/v2",
    }
    # The models volume is unchanged: read-only at /models.
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_model_cache_claim_replaces_the_empty_dir() -> None:
    spec = {"wasm": {"url": "http://shim/artifacts/x"}, "modelSources": SOURCES[:1]}
    body = task(spec)
    pod = build_pod(
        body,
        WasiNNTaskSpec.model_validate(spec),
        1,
        image="reg/proplet:1",
        pull_policy="Never",
        placement=requirements(WasiNNTaskSpec.model_validate(spec), OperatorSettings()),
        claim="models",
        model_cache_claim="model-cache",
        model_cache_bytes=50 << 30,
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    # The shared claim outlives every Pod: each proplet trims it to the configured size.
    assert env_of(pod)["WASINN_MODEL_CACHE_BYTES"] == str(50 << 30)
    assert pod["spec"]["securityContext"]["fsGroup"] == 65532  # the proplet may write it
    assert not any(v["name"].startswith("model-pvc") for v in pod["spec"]["volumes"])


def test_no_sources_no_extra_volumes() -> None:
    pod = pod_for({"wasm": {"url": "http://shim/artifacts/x"}})
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["models", "tmp"]
    assert "fsGroup" not in pod["spec"]["securityContext"]
    assert "WASINN_MODEL_CACHE" not in env_of(pod)
