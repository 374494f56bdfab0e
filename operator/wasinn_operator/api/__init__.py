"""Data models shared by the proplet, the operator and the shim."""

from .crd import GROUP, KIND, PLURAL, PROPELLER_ID_LABEL, VERSION, ModelsVolume, WasiNNTaskSpec
from .propeller import Task, TaskInput, TaskState, from_task_spec, to_task_spec, wasm_source
from .summary import RunSummary
from .task import ENV_NAME, TaskSpec, WasmSource

__all__ = [
    "ENV_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "PROPELLER_ID_LABEL",
    "VERSION",
    "ModelsVolume",
    "RunSummary",
    "Task",
    "TaskInput",
    "TaskSpec",
    "TaskState",
    "WasiNNTaskSpec",
    "WasmSource",
    "from_task_spec",
    "to_task_spec",
    "wasm_source",
]
