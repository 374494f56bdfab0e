"""The proplet's result summary: what it writes to the Pod's termination message."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINATION_MESSAGE_LIMIT = 4096


class RunSummary(BaseModel):
    """How a task ended, small enough for a termination message."""

    model_config = ConfigDict(populate_by_name=True)
    state: Literal["Completed", "Failed"]
    exit_code: int = Field(alias="exitCode")
    error: str | None = None
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
