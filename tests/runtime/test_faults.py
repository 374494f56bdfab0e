"""Guest faults end only their own run, with a clear error; the engine carries on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from wasinn_operator.runtime import (
    EXIT_HOST_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    FailureReason,
    NNErrno,
    Outcome,
    RunSpec,
    Runtime,
    RuntimeConfig,
)

from .conftest import wat

pytestmark = pytest.mark.runtime


def assert_next_run_is_fine(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("hello")))
    assert result.ok, result.error
    assert result.stdout == b"hello from wasm\n"


def test_trap(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("trap")))
    assert (result.outcome, result.exit_code) == (Outcome.TRAPPED, EXIT_TRAP)
    assert result.reason is FailureReason.TRAP
    assert result.error is not None and "wasm trap" in result.error
    assert "unreachable" in result.error
    assert b"wasinn: wasm trap" in result.stderr
    assert_next_run_is_fine(runtime)


def test_endless_loop_times_out(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("spin"), timeout=0.3))
    assert (result.outcome, result.exit_code) == (Outcome.TIMED_OUT, EXIT_TIMEOUT)
    assert result.reason is FailureReason.DEADLINE_EXCEEDED
    assert result.error == "timed out after 0.3 s"
    assert_next_run_is_fine(runtime)


def test_memory_bomb_hits_the_limit(runtime: Runtime) -> None:
    limit = 64 << 20
    result = runtime.run(RunSpec(wasm=wat("grow"), max_memory=limit))
    assert result.outcome is Outcome.TRAPPED
    assert result.reason is FailureReason.OUT_OF_MEMORY
    assert result.error is not None
    assert "(linear memory 63.1 MiB of the 64.0 MiB limit; a memory.grow past the limit" in (
        result.error
    )
    assert_next_run_is_fine(runtime)


def test_stack_overflow(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("recurse")))
    assert result.outcome is Outcome.TRAPPED
    assert result.reason is FailureReason.TRAP
    assert result.error is not None and "stack" in result.error
    assert_next_run_is_fine(runtime)


def test_exit_code_is_the_guests(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("exit7")))
    assert (result.outcome, result.exit_code, result.error) == (
        Outcome.EXITED,
        7,
        "exited with code 7",
    )
    assert result.reason is FailureReason.EXIT_CODE


def test_a_clean_exit_has_no_reason(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("hello")))
    assert result.ok and result.reason is None


def test_initial_memory_above_limit(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("big_memory"), max_memory=16 << 20))
    assert result.outcome is Outcome.ERROR
    assert result.exit_code == EXIT_HOST_ERROR
    assert result.reason is FailureReason.START_FAILED
    assert result.error is not None and "cannot instantiate the module" in result.error
    assert "memory" in result.error
    assert_next_run_is_fine(runtime)


def test_unknown_import(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("unknown_import")))
    assert result.outcome is Outcome.ERROR
    assert result.reason is FailureReason.START_FAILED
    assert result.error is not None and "env::mystery" in result.error


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        (b"", "not a WebAssembly binary"),
        (b"PK\x03\x04zip", "not a WebAssembly binary"),
        (b"\0asm\x01\0\0\0\xff", "invalid WebAssembly module"),
    ],
)
def test_not_wasm(runtime: Runtime, wasm: bytes, message: str) -> None:
    result = runtime.run(RunSpec(wasm=wasm))
    assert result.outcome is Outcome.ERROR
    assert result.reason is FailureReason.INVALID_WASM
    assert result.error is not None and message in result.error
    assert_next_run_is_fine(runtime)


def test_nn_disabled_explicitly(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("nn_shim"), nn=False))
    assert result.error is not None and "wasi_ephemeral_nn::load" in result.error


def test_output_is_capped_and_flagged(runtime: Runtime) -> None:
    streamed: list[bytes] = []
    result = runtime.run(RunSpec(wasm=wat("hello"), stdout_limit=5), stdout=streamed.append)
    assert result.stdout == b"hello"
    assert result.stdout_truncated
    assert b"".join(streamed) == b"hello from wasm\n"


# Cores destroyed out of order used to leave the thread on the signal stack a CPU plugin had
# freed: the next trap killed the process (see runtime/nn/altstack.py). In a child process, so
# that a regression fails this test rather than the whole session.
CORES_THEN_TRAP = """
import gc, sys, tempfile
from pathlib import Path
import wasmtime
from wasinn_operator.runtime import Runtime, RuntimeConfig, RunSpec
trap = wasmtime.wat2wasm('(module (func (export "_start") unreachable))')
tmp = Path(tempfile.mkdtemp())
runner = Runtime(RuntimeConfig(cache_dir=tmp / "r"))
print(runner.run(RunSpec(wasm=trap)).outcome.value)
a = Runtime(RuntimeConfig(cache_dir=tmp / "a")); a.backend.devices
b = Runtime(RuntimeConfig(cache_dir=tmp / "b")); b.backend.devices
del a; gc.collect()
del b; gc.collect()
print(runner.run(RunSpec(wasm=trap)).outcome.value)
"""


def test_a_trap_after_engines_come_and_go_is_still_a_trap() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CORES_THEN_TRAP],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"the process died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["trapped", "trapped"], proc.stdout


def test_bad_pointers_to_every_nn_function(runtime: Runtime, models_dir: Path) -> None:
    result = runtime.run(RunSpec(wasm=wat("nn_bad_pointers"), models_dir=models_dir))
    assert result.ok, (result.error, result.stderr[-2000:])
    for call in ("load", "load_by_name", "load_by_name_with_config", "init_execution_context",
                 "set_input", "compute", "get_output"):  # fmt: skip
        assert f"wasi-nn: {call}: ".encode() in result.stderr
    assert result.stderr.count(b"is outside guest memory") >= 8
    assert_next_run_is_fine(runtime)


def test_memory_grown_to_the_limit_then_load(runtime: Runtime, models_dir: Path) -> None:
    spec = RunSpec(wasm=wat("grow_then_load"), models_dir=models_dir, max_memory=64 << 20)
    result = runtime.run(spec)
    assert (result.outcome, result.exit_code) == (Outcome.EXITED, 0), result.stderr[-2000:]
    assert b"could not be read" in result.stderr  # the last 4096 bytes: zeros, not onnx
    assert b"graph builder 0: range [0x3fff000, 0x4000001) is outside guest memory" in (
        result.stderr
    )
    assert_next_run_is_fine(runtime)


def test_a_trap_inside_a_host_call(runtime: Runtime) -> None:
    # The deadline passes while the guest sleeps in poll_oneoff: the host call traps.
    result = runtime.run(RunSpec(wasm=wat("sleep"), timeout=0.2))
    assert result.outcome is Outcome.TIMED_OUT
    assert_next_run_is_fine(runtime)


def test_a_host_failure_is_an_errno(
    runtime: Runtime, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise MemoryError("simulated")

    engine = Runtime(RuntimeConfig())
    monkeypatch.setattr(engine.backend, "load_named", broken)
    result = engine.run(RunSpec(wasm=wat("nn_bad_pointers"), models_dir=models_dir))
    assert result.outcome is Outcome.TRAPPED  # the guest traps on the unexpected errno
    assert b"wasi-nn: load_by_name: internal error: MemoryError('simulated') (runtime_error)" in (
        result.stderr
    )
    assert_next_run_is_fine(engine)


def test_a_thousand_loads_in_a_loop(
    runtime: Runtime, c_guest: Callable[[str], bytes], models_dir: Path
) -> None:
    for mode in ("same", "named"):
        spec = RunSpec(wasm=c_guest("nn_hog"), args=[mode, "1000"], models_dir=models_dir)
        result = runtime.run(spec)
        assert result.ok, result.error
        errnos = [int(line.split()[2]) for line in result.stdout.decode().splitlines()[:-1]]
        assert errnos == [0] * 16 + [NNErrno.BUSY] * 984  # max_graphs: 16 by default
    assert_next_run_is_fine(runtime)


def test_a_missing_model_is_named_as_the_reason(
    runtime: Runtime, models_dir: Path, guest_path: Callable[[str], Path]
) -> None:
    tensor = "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"
    spec = RunSpec(
        wasm=guest_path("classify-c").read_bytes(),
        args=["--model", "no-such-model", tensor],
        models_dir=models_dir,
    )
    result = runtime.run(spec)
    assert result.outcome is Outcome.EXITED and result.exit_code != 0
    assert result.reason is FailureReason.MODEL_NOT_FOUND
    assert b"no model named 'no-such-model'" in result.stderr


def test_a_graph_over_the_host_memory_limit_is_out_of_memory(
    runtime: Runtime, models_dir: Path, guest_path: Callable[[str], Path]
) -> None:
    tensor = "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"
    spec = RunSpec(
        wasm=guest_path("classify-c").read_bytes(),
        args=["--model", "efficientnet-lite0", tensor],
        models_dir=models_dir,
        max_graph_memory=1 << 20,
    )
    result = runtime.run(spec)
    assert result.outcome is Outcome.EXITED and result.exit_code != 0
    assert result.reason is FailureReason.OUT_OF_MEMORY
    assert b"(max_graph_memory) (too_large)" in result.stderr
