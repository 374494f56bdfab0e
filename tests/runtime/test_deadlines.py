"""A run's timeout holds even while the guest waits in a host call; limits by default."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from wasinn_operator.runtime import (
    EXIT_TIMEOUT,
    DirMount,
    Outcome,
    RunSpec,
    Runtime,
    RuntimeConfig,
    lingering,
)
from wasinn_operator.runtime.nn import context
from wasinn_operator.shim.workers import Worker

from ..conftest import loop_model
from .conftest import wait_for_lingering, wat
from .test_faults import assert_next_run_is_fine

pytestmark = pytest.mark.runtime

HOUR_NS = 3600 * 10**9


def test_a_guest_sleeping_for_an_hour_times_out(runtime: Runtime) -> None:
    result = runtime.run(RunSpec(wasm=wat("sleep"), timeout=0.5))
    assert (result.outcome, result.exit_code) == (Outcome.TIMED_OUT, EXIT_TIMEOUT)
    assert result.error == "timed out after 0.5 s"
    assert_next_run_is_fine(runtime)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("sleep_rel", (10**6,)),  # 1 ms, relative
        ("sleep_abs", (1, 10**6)),  # monotonic "now" + 1 ms, absolute
        ("sleep_abs", (0, 10**6)),  # realtime "now" + 1 ms, absolute
    ],
)
def test_short_sleeps_keep_their_meaning(
    runtime: Runtime, call: str, args: tuple[int, ...]
) -> None:
    s = runtime.session(RunSpec(wasm=wat("sleep"), timeout=60))
    assert s.call(call, *args) == 0
    assert struct.unpack("<I", s.read(128, 4)) == (1,)  # one event: the clock fired
    userdata, error, kind = struct.unpack("<QHB", s.read(64, 11))
    assert (userdata, error, kind) == (7, 0, 0)


def test_a_ready_descriptor_ends_the_poll_at_once(runtime: Runtime) -> None:
    s = runtime.session(RunSpec(wasm=wat("sleep"), timeout=60))
    assert s.call("poll_stdin_or_sleep", HOUR_NS) == 0
    assert struct.unpack("<I", s.read(128, 4)) == (1,)
    userdata, error, kind = struct.unpack("<QHB", s.read(64, 11))
    assert (userdata, error, kind) == (9, 0, 1)  # stdin is readable (at its end)


def test_an_absolute_sleep_past_the_deadline_times_out(runtime: Runtime) -> None:
    s = runtime.session(RunSpec(wasm=wat("sleep"), timeout=0.3))
    with pytest.raises(Exception, match="deadline passed during a WASI sleep"):
        s.call("sleep_abs", 1, HOUR_NS)


def test_endless_inference_times_out(
    runtime: Runtime, c_guest: Callable[[str], bytes], models_dir: Path
) -> None:
    wasm = c_guest("nn_hog")
    spec = RunSpec(wasm=wasm, args=["endless", "16"], models_dir=models_dir, timeout=3)
    result = runtime.run(spec)
    assert (result.outcome, result.exit_code) == (Outcome.TIMED_OUT, EXIT_TIMEOUT)
    assert result.stdout == b"computing\n"
    assert_next_run_is_fine(runtime)


def test_an_inference_that_will_not_stop_is_left_running(
    runtime: Runtime,
    guest_path: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Loop model runs its iterations to the end whatever the cancellation: the run ends at
    its deadline and a grace period, and the inference goes on holding the run's memory."""
    monkeypatch.setattr(context, "CANCEL_GRACE_MS", 300)
    loop_model(tmp_path / "models" / "loop")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.f32").write_bytes(struct.pack("<4f", 5_000_000, 0, 0, 0))
    spec = RunSpec(
        wasm=guest_path("classify-c").read_bytes(),
        args=["--model", "loop", "--dims", "1,4", "--classes", "4", "/in/x.f32"],
        dirs=[DirMount(tmp_path / "in", "/in", read_only=True)],
        models_dir=tmp_path / "models",
        timeout=2,
    )
    wait_for_lingering()  # an earlier test's
    result = runtime.run(spec)
    assert (result.outcome, result.exit_code) == (Outcome.TIMED_OUT, EXIT_TIMEOUT)
    assert result.error is not None and "did not stop its inference" in result.error
    assert lingering.count() == 1  # the run did not wait for the inference
    wait_for_lingering()  # its end releases the run
    assert_next_run_is_fine(runtime)


def test_tenant_defaults_bound_runs_that_ask_for_nothing() -> None:
    config = RuntimeConfig.for_tenants(default_timeout=0.3, default_max_memory=32 << 20)
    engine = Runtime(config)
    result = engine.run(RunSpec(wasm=wat("spin")))
    assert result.outcome is Outcome.TIMED_OUT
    assert result.error == "timed out after 0.3 s"
    result = engine.run(RunSpec(wasm=wat("grow")))
    assert result.outcome is Outcome.TRAPPED
    assert result.error is not None and "of the 32.0 MiB limit" in result.error
    # What a run asks for wins over the defaults.
    result = engine.run(RunSpec(wasm=wat("grow"), max_memory=16 << 20, timeout=30))
    assert result.error is not None and "of the 16.0 MiB limit" in result.error
    assert RuntimeConfig.for_tenants().default_timeout == 300.0
    assert RuntimeConfig.for_tenants().default_max_memory == 512 << 20
    assert RuntimeConfig().default_timeout is None  # `wasinn run`: unbounded unless asked
    assert RuntimeConfig().default_max_memory is None


@pytest.mark.parametrize(
    ("subs", "events", "count", "errno"),
    [
        (0, 64, 0, 28),  # no subscriptions: EINVAL
        (0xFFFFFFF0, 64, 1, 21),  # subscriptions outside memory: EFAULT
        (0, 0xFFFFFFF0, 1, 21),  # events outside memory
        (0, 64, 0x5555556, 21),  # a count whose byte size wraps around 32 bits
        (0, 64, -1, 21),
    ],
)
def test_bad_poll_arguments_are_errnos(
    runtime: Runtime, subs: int, events: int, count: int, errno: int
) -> None:
    s = runtime.session(RunSpec(wasm=wat("sleep"), timeout=60))
    assert s.call("poll", subs, events, count, 128) == errno


def test_a_worker_leaves_when_an_inference_outlives_its_task(
    guest_path: Callable[[str], Path], tmp_path: Path
) -> None:
    """`wasinn proplet serve` answers the task and exits, taking the inference with it, so that
    the shim's next task gets a fresh worker with every core."""
    loop_model(tmp_path / "models" / "loop")
    # ~1-2 us an iteration here: far past the task's 5 s and the 2 s cancellation grace (a
    # fresh process's first inference loads OpenVINO's plugin: not within a short deadline).
    (tmp_path / "models" / "loop" / "x.f32").write_bytes(struct.pack("<4f", 3 * 10**7, 0, 0, 0))
    env = {
        **os.environ,
        "WASINN_MODELS_DIR": str(tmp_path / "models"),
        "WASINN_CACHE_DIR": str(tmp_path / "cache"),
    }
    worker = Worker(env, str(tmp_path))
    task = {
        "id": "loop",
        "wasm": {"inline": base64.b64encode(guest_path("classify-c").read_bytes()).decode()},
        "args": ["--model", "loop", "--dims", "1,4", "--classes", "4", "/models/loop/x.f32"],
        "timeoutSeconds": 5,
    }
    try:
        summary = worker.run(json.dumps(task))
        assert (summary["state"], summary["reason"]) == ("Failed", "DeadlineExceeded")
        assert "did not stop its inference" in str(summary["error"])
        assert worker.retiring
        assert worker.process.wait(60) == 0
    finally:
        worker.kill()
