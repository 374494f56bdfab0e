"""The kopf operator: WasiNNTask objects become proplet Pods, and Pods report back.

`builders`, `reconcile`, `plan` and `intents` are pure (manifests, and each task's next step,
whose phase changes are `api.lifecycle` events; `intents` carries out the shim's run requests,
start errors and stops); `handlers` wires them to kopf; `kube` is the API access; `run` starts
it all.
"""

from .builders import build_pod, build_wasm_configmap, pod_name, proplet_task
from .phases import ConditionType, Reason, TaskPhase
from .reconcile import Facts, Plan, reconcile
from .settings import OperatorSettings

__all__ = [
    "ConditionType",
    "Facts",
    "OperatorSettings",
    "Plan",
    "Reason",
    "TaskPhase",
    "build_pod",
    "build_wasm_configmap",
    "pod_name",
    "proplet_task",
    "reconcile",
]
