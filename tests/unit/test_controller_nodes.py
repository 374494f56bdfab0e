"""Placement by node features and device plugins: the requirements of a task, what no node has,
the settings and spec fields that feed them, and the Unschedulable condition they give."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.nodefeatures import FEATURE_MAX, MAX_FEATURES, parse_feature
from wasinn_operator.controller import Facts, OperatorSettings, reconcile
from wasinn_operator.controller.nodes import explain_shortfall, requested_targets, requirements

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
OPENVINO = {"wasinn.dev/openvino": "true"}
AMX = "feature.node.kubernetes.io/cpu-cpuid.AMXBF16"
GPU = "gpu.intel.com/i915"
VENDOR_ID = "feature.node.kubernetes.io/cpu-model.vendor_id"


def node(
    name: str,
    labels: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
    *,
    ready: bool = True,
    taints: list[dict[str, str]] | None = None,
    cordoned: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": cordoned},
        "status": {
            "allocatable": {"cpu": "4", **(allocatable or {})},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def needs(spec: dict[str, Any], settings: OperatorSettings | None = None) -> Any:
    model = WasiNNTaskSpec.model_validate({"wasm": {"path": "/a"}, **spec})
    return requirements(model, settings or OperatorSettings())


def test_a_node_meeting_everything_leaves_nothing_to_explain() -> None:
    req = needs({"device": "GPU", "nodeFeatures": [AMX]})
    nodes = [node("cpu", OPENVINO), node("gpu", {**OPENVINO, AMX: "true"}, {GPU: "1"})]
    assert explain_shortfall(nodes, req) is None


def test_each_missing_thing_is_named() -> None:
    req = needs({"device": "GPU", "nodeFeatures": [AMX]})
    message = explain_shortfall([node("cpu", OPENVINO)], req)
    assert message == f"no node has label {AMX}=true; no node has {GPU}"


def test_things_no_single_node_has_together() -> None:
    req = needs({"device": "GPU", "nodeFeatures": [AMX]})
    nodes = [node("amx", {**OPENVINO, AMX: "true"}), node("gpu", OPENVINO, {GPU: "2"})]
    assert explain_shortfall(nodes, req) == (
        f"no node has all of label wasinn.dev/openvino=true, label {AMX}=true, {GPU}"
    )


def test_more_devices_than_any_node_offers() -> None:
    req = needs({"device": "GPU", "resources": {"limits": {GPU: "2"}}})
    assert explain_shortfall([node("gpu", OPENVINO, {GPU: "1"})], req) == f"no node has 2 {GPU}"
    assert explain_shortfall([node("gpu", OPENVINO, {GPU: "2"})], req) is None


@pytest.mark.parametrize(
    "unusable",
    [
        node("n", OPENVINO, ready=False),
        node("n", OPENVINO, cordoned=True),
        node("n", OPENVINO, taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]),
        node(
            "n", OPENVINO, taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
        ),
    ],
)
def test_nodes_that_cannot_take_pods_do_not_count(unusable: dict[str, Any]) -> None:
    message = explain_shortfall([unusable], needs({}))
    assert message == (
        "no node has label wasinn.dev/openvino=true (1 node(s) not counted: not Ready, "
        "cordoned, or tainted NoSchedule/NoExecute without a toleration)"
    )


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "ml"},  # Equal is the default; any effect
        {"key": "dedicated", "operator": "Exists"},
    ],
)
def test_a_tolerated_taint_does_not_exclude_a_node(toleration: dict[str, str]) -> None:
    tainted = node(
        "n", OPENVINO, taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    )
    assert explain_shortfall([tainted], needs({"tolerations": [toleration]})) is None
    wrong = {**toleration, "key": "other"}
    assert explain_shortfall([tainted], needs({"tolerations": [wrong]})) is not None


def test_device_nodes_tainted_with_the_resource_name_take_device_tasks() -> None:
    tainted = node("gpu", OPENVINO, {GPU: "1"}, taints=[{"key": GPU, "effect": "NoSchedule"}])
    assert explain_shortfall([tainted], needs({"device": "GPU"})) is None
    assert explain_shortfall([tainted], needs({})) is not None  # a CPU task is kept off


def test_prefer_no_schedule_taints_do_not_block() -> None:
    soft = node("n", OPENVINO, taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    assert explain_shortfall([soft], needs({})) is None


def test_targets_from_the_device_and_the_guest_arguments() -> None:
    def targets(**spec: Any) -> list[str]:
        return requested_targets(WasiNNTaskSpec.model_validate({"wasm": {"path": "/a"}, **spec}))

    assert targets() == []
    assert targets(device="AUTO", args=["--target", "auto"]) == []
    assert targets(device="GPU") == ["gpu"]
    assert targets(device="NPU", args=["--target=gpu"]) == ["tpu", "gpu"]
    assert targets(device="GPU", args=["--target", "gpu"]) == ["gpu"]


def test_the_operator_features_come_first_and_a_task_adds_its_own() -> None:
    settings = OperatorSettings(node_features=((AMX, "true"),))
    req = needs({"nodeFeatures": [f"{AMX}=true", "profile.node.kubernetes.io/ai=x"]}, settings)
    assert req.features == [(AMX, "true"), ("profile.node.kubernetes.io/ai", "x")]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (AMX, (AMX, "true")),
        (f"{VENDOR_ID}=Intel", (VENDOR_ID, "Intel")),
        ("intel.feature.node.kubernetes.io/gpu", ("intel.feature.node.kubernetes.io/gpu", "true")),
    ],
)
def test_node_feature_forms(text: str, parsed: tuple[str, str]) -> None:
    assert parse_feature(text) == parsed


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["wasinn.dev/openvino=true"], "not a Node Feature Discovery label"),
        (["kubernetes.io/hostname=n1"], "not a Node Feature Discovery label"),
        (["node-role.kubernetes.io/control-plane"], "not a Node Feature Discovery label"),
        (["feature.node.kubernetes.io/"], "not a Node Feature Discovery label"),
        ([f"{AMX}="], "not a Node Feature Discovery label"),
        ([f"{AMX}=a b"], "not a Node Feature Discovery label"),
        ([f"feature.node.kubernetes.io/{'x' * 64}"], "at most 63"),
        ([f"{AMX}={'x' * 64}"], "at most 63"),
        ([f"{'a.' * 120}feature.node.kubernetes.io/x"], "prefix is at most 253"),
        ([f"{'a' * 400}.feature.node.kubernetes.io/x"], f"at most {FEATURE_MAX}"),
        ([f"{AMX}{i}" for i in range(MAX_FEATURES + 1)], f"at most {MAX_FEATURES} are allowed"),
    ],
)
def test_bad_node_features_are_refused_naming_the_field(features: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        WasiNNTaskSpec.model_validate({"wasm": {"path": "/a"}, "nodeFeatures": features})
    assert caught.value.errors()[0]["loc"][0] == "nodeFeatures"


def test_settings_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "WASINN_NODE_FEATURES": f"{AMX}, feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
            "WASINN_GPU_RESOURCE": "gpu.intel.com/xe",
        }
    )
    assert settings.node_features == (
        (AMX, "true"),
        ("feature.node.kubernetes.io/cpu-cpuid.AVX512BF16", "true"),
    )
    assert (settings.gpu_resource, settings.npu_resource) == (
        "gpu.intel.com/xe",
        "npu.intel.com/accel",
    )
    assert OperatorSettings.from_env({}).node_features == ()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WASINN_NODE_FEATURES": "zone=a"}, "WASINN_NODE_FEATURES: 'zone=a' is not a Node"),
        ({"WASINN_GPU_RESOURCE": "i915"}, "WASINN_GPU_RESOURCE 'i915' is not a device-plugin"),
        ({"WASINN_NPU_RESOURCE": "cpu"}, "WASINN_NPU_RESOURCE 'cpu' is not"),
        ({"WASINN_GPU_RESOURCE": "kubernetes.io/gpu"}, "outside kubernetes.io"),
    ],
)
def test_bad_settings_are_refused_naming_them(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings.from_env(environ)


def run(spec: dict[str, Any], nodes: list[dict[str, Any]], **extra: Any) -> Any:
    body = {
        "metadata": {"name": "t", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"wasm": {"path": "/a"}, **spec},
        "status": extra.pop("status", {}),
    }
    facts = Facts(now=NOW, pods=extra.pop("pods", []), nodes=nodes, **extra)
    return reconcile(body, facts, OperatorSettings())


def scheduled(plan: Any) -> dict[str, Any]:
    return next(c for c in plan.status["conditions"] if c["type"] == "Scheduled")


def test_a_task_no_node_can_take_waits_unschedulable_naming_what_is_missing() -> None:
    plan = run({"device": "GPU", "nodeFeatures": [AMX]}, [node("cpu", OPENVINO)])
    assert plan.create_pod is None
    assert plan.status["phase"] == "Pending"
    condition = scheduled(plan)
    assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    assert condition["message"] == f"no node has label {AMX}=true; no node has {GPU}"
    # A node with both arrives: the task gets its Pod, placed there.
    ready = node("gpu", {**OPENVINO, AMX: "true"}, {GPU: "1"})
    plan = run({"device": "GPU", "nodeFeatures": [AMX]}, [ready], status=plan.status)
    assert plan.create_pod is not None
    assert plan.create_pod["spec"]["containers"][0]["resources"] == {"limits": {GPU: "1"}}


def test_a_pod_the_scheduler_cannot_place_says_what_no_node_has() -> None:
    started = run({"device": "GPU"}, [node("gpu", OPENVINO, {GPU: "1"})]).status
    said = "0/1 nodes are available: 1 Insufficient gpu.intel.com/i915."
    pending = {
        "metadata": {"name": "t-1", "labels": {"wasinn.dev/attempt": "1"}},
        "spec": {},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False",
                            "reason": "Unschedulable", "message": said}],
        },
    }  # fmt: skip
    # The GPU node went (or lost its device plugin): the condition names the resource.
    plan = run({"device": "GPU"}, [node("cpu", OPENVINO)], status=started, pods=[pending])
    assert plan.status["phase"] == "Pending"
    assert scheduled(plan)["reason"] == "Unschedulable"
    assert scheduled(plan)["message"] == f"no node has {GPU} (scheduler: {said})"
    # The device exists but is in use: only the scheduler can say so.
    plan = run({"device": "GPU"}, [node("gpu", OPENVINO, {GPU: "1"})], status=started,
               pods=[pending])  # fmt: skip
    assert scheduled(plan)["message"] == said


@pytest.mark.parametrize(
    ("given", "limit"),
    [("2", "2"), ("1500m", "2"), ("0", "1"), ("lots", "1"), ("9" * 30, "1000000")],
)
def test_a_task_device_count_is_whole_and_bounded(given: str, limit: str) -> None:
    assert needs({"device": "GPU", "resources": {"limits": {GPU: given}}}).devices == {GPU: limit}
