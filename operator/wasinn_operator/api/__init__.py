"""Data models shared by the proplet, the operator and the shim."""

from .crd import (
    GROUP,
    KIND,
    PLURAL,
    PROPELLER_FIELDS_ANNOTATION,
    PROPELLER_ID_LABEL,
    PROPELLER_NAME_ANNOTATION,
    VERSION,
    ModelsVolume,
    WasiNNTaskSpec,
)
from .lifecycle import Event, Refusal, TaskPhase, transition
from .propeller import Task, TaskInput, from_task_spec, to_task_spec, wasm_source
from .summary import RunSummary
from .task import ENV_NAME, TaskSpec, WasmSource

__all__ = [
    "ENV_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "PROPELLER_FIELDS_ANNOTATION",
    "PROPELLER_ID_LABEL",
    "PROPELLER_NAME_ANNOTATION",
    "VERSION",
    "Event",
    "ModelsVolume",
    "Refusal",
    "RunSummary",
    "Task",
    "TaskInput",
    "TaskPhase",
    "TaskSpec",
    "WasiNNTaskSpec",
    "WasmSource",
    "from_task_spec",
    "to_task_spec",
    "transition",
    "wasm_source",
]
