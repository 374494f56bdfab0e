"""Data models shared by the proplet, the operator and the shim."""

from .summary import RunSummary
from .task import ENV_NAME, TaskSpec, WasmSource

__all__ = ["ENV_NAME", "RunSummary", "TaskSpec", "WasmSource"]
