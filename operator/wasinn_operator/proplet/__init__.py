"""The in-pod runner: fetch the module, verify it, run it, report the result."""

from ..api.task import sha256_digest
from .engines import (
    Outputs,
    TaskError,
    external_command,
    run_embedded,
    run_external,
    task_flags,
)
from .fetch import FetchError, fetch_wasm, verify_digest
from .runner import PropletConfig, load_task, main, report, run_task

__all__ = [
    "FetchError",
    "Outputs",
    "PropletConfig",
    "TaskError",
    "external_command",
    "fetch_wasm",
    "load_task",
    "main",
    "report",
    "run_embedded",
    "run_external",
    "run_task",
    "sha256_digest",
    "task_flags",
    "verify_digest",
]
