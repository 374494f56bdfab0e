"""Where a task may run: its node requirements, the Pod fields that express them, and what no
node has when none meets them.

A task's node must carry the OpenVINO label (with the task's own nodeSelector), the Node Feature
Discovery labels the operator and the task require (required node affinity), and one of the
device-plugin resources for the wasi-nn target it asks for: `gpu` one GPU, `tpu` one NPU (a
container limit, with the toleration the ExtendedResourceToleration admission plugin would add,
for clusters that taint device nodes by resource name). Pure: nodes are the API's JSON.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..api import WasiNNTaskSpec
from ..api.nodefeatures import parse_features
from .settings import OperatorSettings

# wasi-nn execution targets that need a device, and the `device` values that name them.
DEVICE_TARGETS = {"GPU": "gpu", "NPU": "tpu"}
TARGET_ARG = "--target"  # the example guests' option (classify --target gpu)
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
NodeTest = Callable[[dict[str, Any]], bool]
# Kubernetes quantity suffixes (resource.Quantity): binary, then decimal.
SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}
QUANTITY = re.compile(
    r"^([+-]?[0-9.]{1,40}(?:[eE][+-]?[0-9]{1,3})?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$"
)
MAX_DEVICES = 1_000_000  # bounds a tenant's count before it becomes an int


@dataclass
class Requirements:
    """What a task's node must have."""

    labels: dict[str, str]  # nodeSelector: the task's, with the OpenVINO label winning
    features: list[tuple[str, str]] = field(default_factory=list)  # NFD labels: node affinity
    devices: dict[str, str] = field(default_factory=dict)  # resource name -> quantity (limits)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


def requested_targets(spec: WasiNNTaskSpec) -> list[str]:
    """The device targets (`gpu`, `tpu`) a task asks for: its `device`, and a guest argument
    `--target gpu|tpu` (`--target=...`), how a Propeller task (inputs) picks one."""
    targets = [DEVICE_TARGETS[spec.device]] if spec.device in DEVICE_TARGETS else []
    args = spec.args
    for i, arg in enumerate(args):
        if arg == TARGET_ARG and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(TARGET_ARG + "="):
            value = arg.partition("=")[2]
        else:
            continue
        if value.lower() in DEVICE_TARGETS.values() and value.lower() not in targets:
            targets.append(value.lower())
    return targets


def requirements(spec: WasiNNTaskSpec, settings: OperatorSettings) -> Requirements:
    """The task's node requirements under the operator's settings."""
    key, value = settings.label
    features = list(settings.node_features)
    features += [f for f in parse_features(spec.node_features) if f not in features]
    resource_of = {"gpu": settings.gpu_resource, "tpu": settings.npu_resource}
    devices = {
        resource_of[target]: _task_quantity(spec.resources, resource_of[target])
        for target in requested_targets(spec)
    }
    tolerations = copy.deepcopy(spec.tolerations)
    tolerations += [
        {"key": name, "operator": "Exists", "effect": "NoSchedule"}
        for name in devices
        if not any(t.get("key") == name for t in tolerations)
    ]
    return Requirements(
        labels={**spec.node_selector, key: value},
        features=features,
        devices=devices,
        tolerations=tolerations,
    )


def affinity(req: Requirements) -> dict[str, Any] | None:
    """The Pod's affinity: every required node feature, or None when there is none."""
    if not req.features:
        return None
    expressions = [{"key": k, "operator": "In", "values": [v]} for k, v in req.features]
    terms = [{"matchExpressions": expressions}]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms}}}  # fmt: skip


def resources(task_resources: dict[str, Any], req: Requirements) -> dict[str, Any]:
    """The container's resources: the task's, with each device as a limit (and as a request
    where the task set one: an extended resource's request must equal its limit)."""
    result = copy.deepcopy(task_resources)
    for name, quantity in req.devices.items():
        result.setdefault("limits", {})[name] = quantity
        if name in (result.get("requests") or {}):
            result["requests"][name] = quantity
    return result


def explain_shortfall(nodes: list[dict[str, Any]], req: Requirements) -> str | None:
    """None when some Ready, schedulable node whose taints the task tolerates meets every
    requirement; else what no such node has, e.g. `no node has gpu.intel.com/i915; no node has
    label feature.node.kubernetes.io/cpu-cpuid.AMXBF16=true`."""
    usable = [n for n in nodes if _usable(n, req.tolerations)]
    checks = [(f"label {k}={v}", _has_label(k, v)) for k, v in req.labels.items()]
    checks += [(f"label {k}={v}", _has_label(k, v)) for k, v in req.features]
    checks += [(_device_text(name, q), _has_device(name, q)) for name, q in req.devices.items()]
    if any(all(test(node) for _, test in checks) for node in usable):
        return None
    missing = [what for what, test in checks if not any(test(node) for node in usable)]
    if missing:
        message = "; ".join(f"no node has {what}" for what in missing)
    else:
        message = "no node has all of " + ", ".join(what for what, _ in checks)
    left_out = len(nodes) - len(usable)
    if left_out:
        message += (
            f" ({left_out} node(s) not counted: not Ready, cordoned, or tainted"
            " NoSchedule/NoExecute without a toleration)"
        )
    return message


def _usable(node: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    if spec.get("unschedulable"):
        return False
    conditions = status.get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return False
    taints = [t for t in spec.get("taints") or [] if t.get("effect") in BLOCKING_EFFECTS]
    return all(any(_tolerates(t, taint) for t in tolerations) for taint in taints)


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' rule: effects match (an empty one matches all), and the key matches with
    Exists (an empty key matches all) or key and value match with Equal (the default)."""
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration.get("key") == taint.get("key")
    return bool(
        toleration.get("key") == taint.get("key")
        and (toleration.get("value") or "") == (taint.get("value") or "")
    )


def _has_label(key: str, value: str) -> NodeTest:
    return lambda node: ((node.get("metadata") or {}).get("labels") or {}).get(key) == value


def _has_device(name: str, quantity: str) -> NodeTest:
    wanted = _amount(quantity)
    return lambda node: (
        _amount(((node.get("status") or {}).get("allocatable") or {}).get(name)) >= wanted
    )


def _device_text(name: str, quantity: str) -> str:
    amount = _amount(quantity)
    return name if amount <= 1 else f"{amount:g} {name}"


def _amount(quantity: Any) -> Decimal:
    """A quantity as a number; 0 when absent or not a quantity."""
    match = QUANTITY.match(str(quantity)) if quantity is not None else None
    if match is None:
        return Decimal(0)
    try:
        amount = Decimal(match[1]) * SUFFIXES[match[2]]
    except InvalidOperation:
        return Decimal(0)
    return amount if amount.is_finite() else Decimal(0)


def _task_quantity(task_resources: dict[str, Any], name: str) -> str:
    """The task's own limit (or request) of a device, else one; whole units, as the API wants
    for extended resources, written as a quantity string."""
    for section in ("limits", "requests"):
        value = (task_resources.get(section) or {}).get(name)
        if value is not None:
            return str(max(1, math.ceil(min(_amount(value), Decimal(MAX_DEVICES)))))
    return "1"
