"""The embedded wasm engine: wasmtime + WASI preview1 + the wasi-nn host over OpenVINO.

Public surface: `Runtime` (one per process), `RunSpec` / `RunResult`, and `parse_wasm_args`
for wasmtime-style command lines.
"""

from ..cachedir import default_cache_dir
from .cliargs import WasmArgs, parse_wasm_args, resolve
from .engine import Runtime, RuntimeConfig, Session, fd_sink
from .nn import ExecutionTarget, ModelError, NamedModel, NNErrno, scan_models_dir
from .spec import (
    EXIT_HOST_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    MODELS_GUEST_DIR,
    DirMount,
    FailureReason,
    Outcome,
    RunResult,
    RunSpec,
)

__all__ = [
    "EXIT_HOST_ERROR",
    "EXIT_TIMEOUT",
    "EXIT_TRAP",
    "MODELS_GUEST_DIR",
    "DirMount",
    "ExecutionTarget",
    "FailureReason",
    "ModelError",
    "NNErrno",
    "NamedModel",
    "Outcome",
    "RunResult",
    "RunSpec",
    "Runtime",
    "RuntimeConfig",
    "Session",
    "WasmArgs",
    "default_cache_dir",
    "fd_sink",
    "parse_wasm_args",
    "resolve",
    "scan_models_dir",
]
