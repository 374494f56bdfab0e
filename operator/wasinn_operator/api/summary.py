"""The proplet's result summary: what it writes to the Pod's termination message.

It is the contract between the process that ran a task (the proplet, in a Pod or a local
worker) and those that report it (the operator, the shim): how the run ended is a typed
`reason`, never a message to be matched, and the exit codes of runs that did not end by the
guest's own exit are fixed here.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINATION_MESSAGE_LIMIT = 4096
# Bytes of a guest's stdout (and stderr) a run keeps; what streams to a log is never cut.
OUTPUT_LIMIT = 1 << 20

# Exit codes for runs that did not end by the guest's own exit, chosen to match what shell users
# know: 124 like timeout(1), 125 like `docker run` failing before the program started, 134 like
# wasmtime's CLI on a trap (128 + SIGABRT); 1 for a task the proplet could not run at all.
EXIT_TASK_ERROR = 1
EXIT_TIMEOUT = 124
EXIT_HOST_ERROR = 125
EXIT_TRAP = 134


class FailureReason(StrEnum):
    """Why a run failed, in words a user can act on (also the operator's condition reasons)."""

    INVALID_TASK = "InvalidTask"  # the task document or its cli_args are malformed
    POLICY_VIOLATION = "PolicyViolation"  # the task policy refuses what the task asks for
    FETCH_FAILED = "FetchFailed"  # the module could not be downloaded or pulled (may pass)
    INVALID_WASM = "InvalidWasm"  # not wasm, does not compile, wrong digest, unreadable file
    START_FAILED = "StartFailed"  # compiled but could not start: a missing import, no _start
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # the run outlasted its timeout
    OUT_OF_MEMORY = "OutOfMemory"  # linear memory hit its limit, or wasi-nn graphs theirs
    MODEL_NOT_FOUND = "ModelNotFound"  # the guest asked for a model the host does not have
    TRAP = "Trap"  # the guest trapped (unreachable, out-of-bounds access, stack overflow)
    EXIT_CODE = "ExitCode"  # the guest exited with a non-zero code
    INTERRUPTED = "Interrupted"  # the proplet was stopped (SIGTERM: Pod deleted, suspended)
    ENGINE_ERROR = "EngineError"  # the engine itself failed (a missing wasmtime binary, a bug)


class RunSummary(BaseModel):
    """How a task ended, small enough for a termination message."""

    model_config = ConfigDict(populate_by_name=True)
    state: Literal["Completed", "Failed"]
    exit_code: int = Field(alias="exitCode")
    error: str | None = None
    reason: FailureReason | None = Field(
        default=None, description="Why a Failed run failed; None when it Completed."
    )
    stdout: str = ""
    stdout_truncated: bool = Field(default=False, alias="stdoutTruncated")
    digest: str | None = None
    engine: str = "embedded"
    task_id: str = Field(default="", alias="taskId")
    fetch_seconds: float = Field(default=0.0, alias="fetchSeconds")
    compile_seconds: float = Field(default=0.0, alias="compileSeconds")
    run_seconds: float = Field(default=0.0, alias="runSeconds")

    def to_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """JSON of at most `limit` bytes: stdout, then the error, is cut to fit (and flagged)."""
        summary = self.model_copy()
        text = summary._json()
        for field in ("stdout", "error"):
            while len(text.encode()) > limit and getattr(summary, field):
                summary.stdout_truncated = summary.stdout_truncated or field == "stdout"
                value: str = getattr(summary, field)
                # Each raw byte removed shrinks the JSON by at least one byte (escapes are longer).
                overflow = len(text.encode()) - limit
                setattr(summary, field, _cut(value, len(value.encode()) - overflow))
                text = summary._json()
        return text

    def _json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True), ensure_ascii=False, separators=(",", ":"))


def _cut(text: str, size: int) -> str:
    """At most `size` bytes of `text`, on a character boundary."""
    return text.encode()[: max(size, 0)].decode("utf-8", errors="ignore")
