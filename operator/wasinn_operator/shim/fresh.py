"""`--fresh-process` runs: reading a `wasinn proplet run` child's output into an `Outcome`.

The child writes the guest's stdout and stderr to its own, its log lines (`wasinn proplet: ...`)
to stderr, and its RunSummary to a file. The results are the first `limit` bytes of stdout, flagged
truncated when there was more; a failed run's error gets the tail of the guest's stderr when the
summary's error does not carry it already, and a child that died without a summary is described
by its exit code and that tail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from ..api import RunSummary
from .store import Outcome, TaskPhase

STDERR_TAIL = 4096
PROPLET_LOG = "wasinn proplet: "


def spawn_proplet(env: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    """A `wasinn proplet run` child in its own session (so a stop can kill its whole group),
    with stdout and stderr piped for `drain`."""
    return subprocess.Popen(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def drain(child: subprocess.Popen[bytes], limit: int) -> tuple[bytes, bool, bytes]:
    """Read both pipes to the end: the first `limit` bytes of stdout, whether there was more,
    and the last `STDERR_TAIL` bytes of stderr."""
    assert child.stdout is not None and child.stderr is not None
    kept: dict[str, bytes] = {}
    over = False

    def read(name: str, stream: IO[bytes], head: bool) -> None:
        nonlocal over
        data = b""
        while chunk := stream.read(1 << 16):
            if not head:
                data = (data + chunk)[-STDERR_TAIL:]
            elif len(data) + len(chunk) > limit:
                over = True
                data = (data + chunk)[:limit]
            else:
                data += chunk
        kept[name] = data

    err = threading.Thread(target=read, args=("err", child.stderr, False), daemon=True)
    err.start()
    read("out", child.stdout, True)
    err.join()
    return kept["out"], over, kept.get("err", b"")


def guest_tail(stderr: bytes) -> str:
    """The end of the guest's stderr: the child's stderr without the proplet's own lines."""
    text = stderr.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if not line.startswith(PROPLET_LOG)]
    return "\n".join(lines).strip()


def outcome(summary_file: Path, stdout: bytes, over: bool, stderr: bytes, code: int) -> Outcome:
    """State, results and error of a finished child (`over`: `stdout` was cut)."""
    results = stdout.decode("utf-8", errors="replace")
    tail = guest_tail(stderr)
    try:
        summary = RunSummary.model_validate(json.loads(summary_file.read_text()))
    except (OSError, ValueError):
        error = f"the runner ended with code {code} without a summary" + (
            f": {tail}" if tail else ""
        )
        return Outcome(TaskPhase.FAILED, results or None, error, over)
    state = TaskPhase.COMPLETED if summary.state == "Completed" else TaskPhase.FAILED
    error = summary.error or ""
    if state is TaskPhase.FAILED and tail and tail.splitlines()[-1] not in error:
        error = f"{error}: {tail}" if error else tail
    # Not the summary's flag: it also says that its copy of stdout was cut to fit the
    # termination message. The pipe carries all of the guest's stdout, so `over` is exact.
    return Outcome(state, results, error, over)
