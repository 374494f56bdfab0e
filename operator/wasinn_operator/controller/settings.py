"""The operator's settings: from flags, with `WASINN_*` environment variables as defaults.

Parsed once, when `wasinn operator` starts (`OperatorSettings.from_args`), and handed to the
handlers in kopf's memo; nothing else reads the environment for them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api.nodefeatures import parse_features
from ..api.policy import TaskPolicy
from ..api.policyflags import add_policy_arguments, policy_env, policy_from_settings
from ..api.wasmflags import parse_size
from .priority import Bands, parse_bands

DEFAULT_LABEL = "wasinn.dev/openvino=true"
GPU_RESOURCE = "gpu.intel.com/i915"
NPU_RESOURCE = "npu.intel.com/accel"
# A device plugin's extended resource: VENDOR-DOMAIN/NAME, outside kubernetes.io.
RESOURCE_NAME = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True)
class OperatorSettings:
    """What every task's Pod gets, and how the operator runs."""

    openvino_label: str = DEFAULT_LABEL
    proplet_image: str = "localhost/wasinn-proplet:dev"
    pull_policy: str = "IfNotPresent"
    models_claim: str = "models"
    model_cache_claim: str | None = None  # None: each Pod fetches into an emptyDir
    model_cache_bytes: int = 20 << 30  # the emptyDir's sizeLimit, or what the claim is trimmed to
    results_cap: int = 16384
    resync_seconds: float = 10.0
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 300.0
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    metrics_port: int = 9090
    health_port: int = 8080
    service_account: str | None = None
    # Defaults for tasks that leave these unset (the chart's proplet.* values).
    proplet_resources: dict[str, Any] = field(default_factory=dict)
    proplet_timeout_seconds: int | None = None
    proplet_engine: str = "embedded"
    # What tenants' tasks may choose; every task Pod gets it too (WASINN_POLICY).
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    # Node Feature Discovery labels every task's node must carry, as (key, value).
    node_features: tuple[tuple[str, str], ...] = ()
    # The device-plugin resources a task asking for a GPU (gpu) or an NPU (tpu) gets one of.
    gpu_resource: str = GPU_RESOURCE
    npu_resource: str = NPU_RESOURCE
    # Warm execution (the chart's warmWorkers): off unless enabled; the execution mode of tasks
    # that name none; the worker pools (name -> node selector, the first is the default) and the
    # namespace their worker Pods run in.
    warm_enabled: bool = False
    default_execution: str = "pod"
    warm_pools: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (("default", ()),)
    warm_namespace: str = "default"
    # PriorityClasses by task priority (controller/priority.py); empty: no priorityClassName.
    priority_classes: Bands = ()

    def __post_init__(self) -> None:
        for name, value in (("GPU", self.gpu_resource), ("NPU", self.npu_resource)):
            domain = value.partition("/")[0]
            if len(value) > 253 or not RESOURCE_NAME.match(value) or _kubernetes_io(domain):
                raise ValueError(
                    f"WASINN_{name}_RESOURCE {value!r} is not a device-plugin resource name"
                    " (VENDOR-DOMAIN/NAME outside kubernetes.io, e.g. gpu.intel.com/i915)"
                )
        if self.default_execution not in ("pod", "warm"):
            raise ValueError(
                f"WASINN_DEFAULT_EXECUTION {self.default_execution!r} is not pod or warm"
            )
        if self.default_execution == "warm" and not self.warm_enabled:
            raise ValueError("WASINN_DEFAULT_EXECUTION is warm but WASINN_WARM_ENABLED is not true")
        if not self.warm_pools:
            raise ValueError("WASINN_WARM_POOLS names no pool")
        timeout = self.proplet_timeout_seconds
        if timeout is not None and timeout > self.policy.max_timeout:
            raise ValueError(
                f"the proplet default timeout ({timeout} s) is above the task policy's maximum "
                f"({self.policy.max_timeout:g} s)"
            )

    @property
    def label(self) -> tuple[str, str]:
        """The OpenVINO node label as (key, value)."""
        key, _, value = self.openvino_label.partition("=")
        return key, value or "true"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Settings from `WASINN_*` variables (used by the Helm chart), the task policy's
        (WASINN_ALLOW_HOST_DIRS, WASINN_DEFAULT_TIMEOUT, ...) included."""

        def get(name: str, default: str) -> str:
            return environ.get(f"WASINN_{name}") or default

        namespaces = tuple(n for n in get("NAMESPACES", "").split(",") if n)
        return cls(
            openvino_label=get("OPENVINO_LABEL", DEFAULT_LABEL),
            proplet_image=get("PROPLET_IMAGE", cls.proplet_image),
            pull_policy=get("PULL_POLICY", cls.pull_policy),
            models_claim=get("MODELS_CLAIM", cls.models_claim),
            model_cache_claim=environ.get("WASINN_MODEL_CACHE_CLAIM") or None,
            model_cache_bytes=parse_size(
                get("MODEL_CACHE_BYTES", str(cls.model_cache_bytes)), "WASINN_MODEL_CACHE_BYTES"
            ),
            results_cap=int(get("RESULTS_CAP", str(cls.results_cap))),
            resync_seconds=float(get("RESYNC_SECONDS", str(cls.resync_seconds))),
            backoff_base_seconds=float(get("BACKOFF_BASE_SECONDS", str(cls.backoff_base_seconds))),
            backoff_max_seconds=float(get("BACKOFF_MAX_SECONDS", str(cls.backoff_max_seconds))),
            namespaces=namespaces,
            metrics_port=int(get("METRICS_PORT", str(cls.metrics_port))),
            health_port=int(get("HEALTH_PORT", str(cls.health_port))),
            service_account=environ.get("WASINN_PROPLET_SERVICE_ACCOUNT") or None,
            proplet_resources=_json_object(environ.get("WASINN_PROPLET_RESOURCES") or "{}"),
            proplet_timeout_seconds=int(environ["WASINN_PROPLET_TIMEOUT_SECONDS"])
            if environ.get("WASINN_PROPLET_TIMEOUT_SECONDS")
            else None,
            proplet_engine=_engine(environ.get("WASINN_PROPLET_ENGINE") or "embedded"),
            policy=policy_from_settings(environ),
            node_features=_features(environ.get("WASINN_NODE_FEATURES") or ""),
            gpu_resource=get("GPU_RESOURCE", GPU_RESOURCE),
            npu_resource=get("NPU_RESOURCE", NPU_RESOURCE),
            warm_enabled=_flag("WASINN_WARM_ENABLED", environ.get("WASINN_WARM_ENABLED") or ""),
            default_execution=get("DEFAULT_EXECUTION", "pod"),
            warm_pools=_pools(environ.get("WASINN_WARM_POOLS") or ""),
            warm_namespace=get("WARM_NAMESPACE", cls.warm_namespace),
            priority_classes=parse_bands(environ.get("WASINN_PRIORITY_CLASSES") or ""),
        )

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ
    ) -> OperatorSettings:
        """Settings from `wasinn operator`'s flags; each flag left out falls back to its
        variable, then to the built-in default. ValueError names a bad setting."""
        given = {
            "WASINN_OPENVINO_LABEL": args.openvino_label,
            "WASINN_PROPLET_IMAGE": args.proplet_image,
            "WASINN_PULL_POLICY": args.pull_policy,
            "WASINN_MODELS_CLAIM": args.models_claim,
            "WASINN_MODEL_CACHE_CLAIM": args.model_cache_claim,
            "WASINN_MODEL_CACHE_BYTES": args.model_cache_bytes,
            "WASINN_RESULTS_CAP": _text(args.results_cap),
            "WASINN_RESYNC_SECONDS": _text(args.resync_seconds),
            "WASINN_METRICS_PORT": _text(args.metrics_port),
            "WASINN_HEALTH_PORT": _text(args.health_port),
            "WASINN_NAMESPACES": ",".join(args.namespace) if args.namespace else None,
            "WASINN_NODE_FEATURES": ",".join(args.node_feature) if args.node_feature else None,
            "WASINN_GPU_RESOURCE": args.gpu_resource,
            "WASINN_NPU_RESOURCE": args.npu_resource,
            "WASINN_PRIORITY_CLASSES": args.priority_classes,
            **policy_env(args),
        }
        merged = {**environ, **{k: v for k, v in given.items() if v}}
        if args.all_namespaces:
            merged.pop("WASINN_NAMESPACES", None)
        return cls.from_env(merged)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's flags; each defaults to a `WASINN_*` variable (`from_args`)."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="watch this namespace (repeatable; default: $WASINN_NAMESPACES, comma-separated, "
        "else all namespaces)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true")
    parser.add_argument(
        "--openvino-label",
        help=f"node label KEY=VALUE of OpenVINO-capable nodes ($WASINN_OPENVINO_LABEL, else "
        f"{DEFAULT_LABEL})",
    )
    parser.add_argument(
        "--node-feature",
        action="append",
        metavar="KEY[=VALUE]",
        help="a Node Feature Discovery label every task's node must carry (repeatable; "
        "$WASINN_NODE_FEATURES, comma-separated)",
    )
    parser.add_argument(
        "--gpu-resource",
        help=f"device-plugin resource of tasks asking for a GPU ($WASINN_GPU_RESOURCE, else "
        f"{GPU_RESOURCE}; gpu.intel.com/xe for the xe driver)",
    )
    parser.add_argument(
        "--npu-resource",
        help=f"device-plugin resource of tasks asking for an NPU ($WASINN_NPU_RESOURCE, else "
        f"{NPU_RESOURCE})",
    )
    parser.add_argument(
        "--priority-classes",
        metavar="NAME=FROM,...",
        help="PriorityClasses of task Pods by task priority (0-100), e.g. "
        "wasinn-low=0,wasinn-normal=34,wasinn-high=67 ($WASINN_PRIORITY_CLASSES; else none)",
    )
    parser.add_argument("--proplet-image", help="($WASINN_PROPLET_IMAGE)")
    parser.add_argument(
        "--pull-policy", choices=["Always", "IfNotPresent", "Never"], help="($WASINN_PULL_POLICY)"
    )
    parser.add_argument(
        "--models-claim",
        help="default models PersistentVolumeClaim ($WASINN_MODELS_CLAIM, else models)",
    )
    parser.add_argument(
        "--model-cache-claim",
        help="PersistentVolumeClaim where task Pods cache fetched model sources "
        "($WASINN_MODEL_CACHE_CLAIM, else an emptyDir per Pod)",
    )
    parser.add_argument(
        "--model-cache-bytes",
        help="disk for fetched model sources: each Pod's emptyDir size limit, or the size task "
        "Pods trim the cache claim to, least recently used first ($WASINN_MODEL_CACHE_BYTES, "
        "e.g. 50GiB; else 20GiB)",
    )
    parser.add_argument(
        "--results-cap",
        type=int,
        help="bytes of stdout kept in status.results ($WASINN_RESULTS_CAP, else 16384)",
    )
    parser.add_argument("--resync-seconds", type=float, help="($WASINN_RESYNC_SECONDS, else 10)")
    parser.add_argument("--metrics-port", type=int, help="($WASINN_METRICS_PORT, else 9090)")
    parser.add_argument("--health-port", type=int, help="($WASINN_HEALTH_PORT, else 8080)")
    add_policy_arguments(parser)  # WASINN_ALLOW_HOST_DIRS, WASINN_DEFAULT_TIMEOUT, ...


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _features(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_features([item.strip() for item in text.split(",") if item.strip()])
    except ValueError as exc:
        raise ValueError(f"WASINN_NODE_FEATURES: {exc}") from None


def _flag(name: str, text: str) -> bool:
    if text.lower() in ("", "false", "0", "no"):
        return False
    if text.lower() in ("true", "1", "yes"):
        return True
    raise ValueError(f"{name} {text!r} is not true or false")


def _pools(text: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """WASINN_WARM_POOLS: a JSON object, pool name -> its workers' node selector (labels)."""
    if not text:
        return (("default", ()),)
    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        for labels in value.values()
    ):
        raise ValueError(
            f"WASINN_WARM_POOLS must be a JSON object of pool name -> node labels, got {text!r}"
        )
    return tuple((str(name), tuple(sorted(labels.items()))) for name, labels in value.items())


def _kubernetes_io(domain: str) -> bool:
    return domain == "kubernetes.io" or domain.endswith(".kubernetes.io")


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"WASINN_PROPLET_RESOURCES must be a JSON object, got {text!r}")
    return value


def _engine(name: str) -> str:
    if name not in ("embedded", "wasmtime-cli"):
        raise ValueError(f"WASINN_PROPLET_ENGINE {name!r} is not embedded or wasmtime-cli")
    return name
