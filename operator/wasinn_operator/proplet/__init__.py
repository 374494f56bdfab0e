"""The in-pod runner: fetch the module, verify it, run it, report the result."""

from .engines import Outputs, TaskError, external_command, run_embedded, run_external
from .fetch import FetchError, fetch_wasm, sha256_digest, verify_digest
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
    "verify_digest",
]
