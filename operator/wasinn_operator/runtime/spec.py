"""What a run needs (`RunSpec`) and what it produced (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..api.summary import EXIT_HOST_ERROR, EXIT_TIMEOUT, EXIT_TRAP, OUTPUT_LIMIT, FailureReason
from ..api.task import sha256_digest
from .nn.abi import ExecutionTarget
from .nn.models import NamedModel, detect_encoding

MODELS_GUEST_DIR = "/models"
DEFAULT_OUTPUT_LIMIT = OUTPUT_LIMIT

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "EXIT_HOST_ERROR",
    "EXIT_TIMEOUT",
    "EXIT_TRAP",
    "MODELS_GUEST_DIR",
    "DirMount",
    "FailureReason",
    "Outcome",
    "RunResult",
    "RunSpec",
]


class Outcome(StrEnum):
    """How a run ended."""

    EXITED = "exited"
    TRAPPED = "trapped"
    TIMED_OUT = "timed_out"
    ERROR = "error"


@dataclass(frozen=True)
class DirMount:
    """A host directory preopened for the guest."""

    host: Path
    guest: str
    read_only: bool = False


@dataclass
class RunSpec:
    """One execution of a wasm module: the module, its WASI world, nn models and limits."""

    wasm: bytes
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dirs: list[DirMount] = field(default_factory=list)
    models: list[NamedModel] = field(default_factory=list)
    models_dir: Path | None = None
    nn: bool | None = None
    nn_target: ExecutionTarget = ExecutionTarget.CPU
    invoke: str | None = None
    # Without `invoke`: the export to call when the module has one (Propeller calls the
    # export named after the task), else the module runs as a command.
    export: str | None = None
    program_name: str = "main.wasm"
    timeout: float | None = None
    max_memory: int | None = None
    stdout_limit: int = DEFAULT_OUTPUT_LIMIT
    stderr_limit: int = DEFAULT_OUTPUT_LIMIT
    # wasi-nn host memory (see nn.budget); None: the runtime's default (RuntimeConfig).
    max_graph_bytes: int | None = None
    max_graph_memory: int | None = None
    max_graphs: int | None = None
    max_contexts: int | None = None
    # `sha256:<hex>` of `wasm` when the caller checked it against the bytes (the proplet's
    # fetch verifies the task's digest): hashing a module costs ~1 ms per MB, per run.
    verified_digest: str | None = None

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of the module bytes."""
        return self.verified_digest or sha256_digest(self.wasm)

    def add_model(self, name: str, directory: Path) -> None:
        """A fetched model source: `directory` preopened read-only at /models/NAME (the guest
        resolves paths there to this preopen, the longest matching one), and registered by
        name when it holds model files (it wins over a models-directory model of that name)."""
        self.dirs.append(DirMount(directory, f"{MODELS_GUEST_DIR}/{name}", read_only=True))
        encoding = detect_encoding(directory)
        if encoding is not None:
            self.models.append(NamedModel(name=name, encoding=encoding, path=directory))


@dataclass
class RunResult:
    """The outcome of a run: exit code, captured output (capped) and timings."""

    outcome: Outcome
    exit_code: int
    digest: str
    error: str | None = None
    reason: FailureReason | None = None  # why it failed; None when the guest exited with 0
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    module_cached: bool = False

    @property
    def ok(self) -> bool:
        """True when the guest exited with code 0."""
        return self.outcome is Outcome.EXITED and self.exit_code == 0
