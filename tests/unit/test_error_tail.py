"""A failed task's error carries the tail of the guest's stderr, as clean text."""

from __future__ import annotations

import pytest

from wasinn_operator.proplet.runner import failure, stderr_tail
from wasinn_operator.runtime import Outcome, RunResult

pytestmark = pytest.mark.unit


def result(stderr: bytes, error: str | None = "exited with code 1", code: int = 1) -> RunResult:
    outcome = Outcome.EXITED if error is None or error.startswith("exited") else Outcome.TRAPPED
    return RunResult(outcome=outcome, exit_code=code, digest="", error=error, stderr=stderr)


def test_the_last_line_explains_the_exit() -> None:
    stderr = b"loading\nclassify: cannot open /tensors/x.f32: No such file or directory\n"
    assert failure(result(stderr)) == (
        "exited with code 1: loading\nclassify: cannot open /tensors/x.f32: No such file or "
        "directory"
    )


def test_no_stderr_keeps_the_error() -> None:
    assert failure(result(b"")) == "exited with code 1"
    assert failure(result(b"\n \n")) == "exited with code 1"


def test_the_engines_own_line_is_not_repeated() -> None:
    stderr = b"wasi-nn: compute: inference failed (runtime_error)\nwasinn: wasm trap: unreachable\n"
    got = failure(result(stderr, "wasm trap: unreachable", 134))
    assert got == "wasm trap: unreachable: wasi-nn: compute: inference failed (runtime_error)"
    assert failure(result(b"wasinn: timed out after 1 s\n", "timed out after 1 s", 124)) == (
        "timed out after 1 s"
    )


def test_only_the_tail_is_kept() -> None:
    lines = b"".join(f"line {i}\n".encode() for i in range(1000))
    tail = stderr_tail(lines)
    assert tail.splitlines() == [f"line {i}" for i in range(992, 1000)]
    long_line = b"x" * 5000 + b"\nlast\n"
    assert stderr_tail(long_line) == "last"  # a line cut by the byte limit is dropped
    assert stderr_tail(b"y" * 5000) == "y" * 1024  # unless it is all there is


def test_control_characters_and_bad_utf8_are_cleaned() -> None:
    dirty = b"\x1b[31mred\x1b[0m\tend \xff\xfe ok\r\n\x00nul\n"
    assert stderr_tail(dirty) == "[31mred[0m end \ufffd\ufffd ok\nnul"
    assert all(c == "\n" or c.isprintable() for c in failure(result(dirty)))
