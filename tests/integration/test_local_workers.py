"""The local shim's warm workers: `wasinn proplet serve` children reused by the next task;
stopped, killed and recycled workers, task env kept per task, a pool that endless guests do not
block, and what a run reports (truncated results, a failed guest's stderr)."""

from __future__ import annotations

import base64
import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wasinn_operator.api.lifecycle import STOPPED_ERROR

from ..conftest import loop_model
from .conftest import (
    CHELSEA,
    FAILED,
    SHIM_BACKENDS,
    Shim,
    ShimBackend,
    complain_wasm,
    flood_wasm,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    """Only the local backend has workers."""
    return SHIM_BACKENDS["local"](request)


@pytest.fixture
def shim(make_shim: Callable[..., Shim]) -> Shim:
    return make_shim("--workers", "1")


def workers(shim: Shim) -> list[int]:
    """Pids of the shim's live `proplet serve` children."""
    assert shim.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == shim.process.pid and stat[0] != "Z" and b"proplet\0serve" in command:
            found.append(int(entry.name))
    return found


def wait_workers(shim: Shim, predicate: Callable[[list[int]], bool]) -> list[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if predicate(pids := workers(shim)):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"workers never matched: {workers(shim)}")


def run(shim: Shim, file: str, state: int = 3, **fields: object) -> dict[str, object]:
    task_id = shim.create("t", file=file, **fields)
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    final = shim.wait_state(task_id)
    assert final["state"] == state, final
    return final


def started(shim: Shim, wasm: bytes) -> tuple[str, int]:
    """A never-ending task, running on a worker: (task id, worker pid)."""
    task_id = shim.create("spin", file=base64.b64encode(wasm).decode())
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    shim.wait_state(task_id, (2,))
    return task_id, wait_workers(shim, lambda pids: len(pids) == 1)[0]


def test_consecutive_tasks_share_a_worker(shim: Shim, classify_b64: str) -> None:
    assert workers(shim) == []  # started for the first task that needs one
    first = run(shim, classify_b64, inputs=CHELSEA)
    assert "1. tiger cat (282)" in str(first["results"])
    pid = workers(shim)
    assert len(pid) == 1
    second = run(shim, classify_b64, inputs=CHELSEA)
    assert second["results"] == first["results"]
    assert workers(shim) == pid


def test_task_env_does_not_reach_the_next_task(shim: Shim, classify_b64: str) -> None:
    # MODEL_NAME names a model that does not exist: the guest fails to load it.
    tensor = CHELSEA[-1:]  # no --model: the guest's model comes from its env, else its default
    failed = run(shim, classify_b64, 4, inputs=tensor, env={"MODEL_NAME": "no-such-model"})
    # The error ends with the tail of the guest's stderr, which names the model it missed.
    assert failed["error"].startswith("exited with code 1: ")
    assert "no-such-model" in failed["error"]
    pid = workers(shim)
    # Same worker, no env: the guest's default model, as if the first task had never run.
    final = run(shim, classify_b64, inputs=tensor)
    assert "1. tiger cat (282)" in str(final["results"])
    assert workers(shim) == pid


def test_stop_kills_the_worker(shim: Shim, spin_wasm: bytes, classify_b64: str) -> None:
    task_id, pid = started(shim, spin_wasm)
    assert shim.http.post(f"/tasks/{task_id}/stop").json() == {"stopped": True}
    assert shim.wait_state(task_id, (FAILED,))["error"] == STOPPED_ERROR
    wait_workers(shim, lambda pids: pid not in pids)
    run(shim, classify_b64, inputs=CHELSEA)
    replacement = workers(shim)
    assert len(replacement) == 1 and replacement != [pid]
    assert shim.task(task_id)["state"] == FAILED  # the stop stands


def test_killed_worker_fails_its_task(shim: Shim, spin_wasm: bytes, classify_b64: str) -> None:
    task_id, pid = started(shim, spin_wasm)
    os.kill(pid, signal.SIGKILL)
    failed = shim.wait_state(task_id)
    assert failed["state"] == 4
    assert str(failed["error"]).startswith("the proplet worker died (signal 9, SIGKILL)")
    run(shim, classify_b64, inputs=CHELSEA)
    assert pid not in workers(shim)


def test_worker_is_recycled_after_max_tasks(
    make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    shim = make_shim("--workers", "1", "--worker-max-tasks", "1")
    run(shim, classify_b64, inputs=CHELSEA)
    wait_workers(shim, lambda pids: pids == [])  # retired after its one task
    run(shim, classify_b64, inputs=CHELSEA)


def test_fresh_process_runs_no_worker(make_shim: Callable[..., Shim], classify_b64: str) -> None:
    shim = make_shim("--workers", "1", "--fresh-process")
    final = run(shim, classify_b64, inputs=CHELSEA)
    assert "1. tiger cat (282)" in str(final["results"])
    assert workers(shim) == []


@pytest.mark.parametrize(
    "options",
    [[], ["--workers", "2", "--long-task-seconds", "1"]],
    ids=["defaults", "two-slots-held"],
)
def test_endless_guests_do_not_hold_up_a_normal_task(
    make_shim: Callable[..., Shim], spin_wasm: bytes, classify_b64: str, options: list[str]
) -> None:
    """Two endless tasks, then a normal one: the normal one completes while both endless ones
    still run, whether a slot is free (the defaults: two per core) or both slots are held (the
    endless tasks then give theirs up once they count as long)."""
    shim = make_shim(*options)
    spins = [shim.create(f"spin{i}", file=base64.b64encode(spin_wasm).decode()) for i in (1, 2)]
    for task_id in spins:
        assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    for task_id in spins:
        shim.wait_state(task_id, (2,))
    final = run(shim, classify_b64, inputs=CHELSEA)
    assert "1. tiger cat (282)" in str(final["results"])
    assert [shim.task(t)["state"] for t in spins] == [2, 2]
    for task_id in spins:
        assert shim.http.post(f"/tasks/{task_id}/stop").json() == {"stopped": True}


@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh-process"])
def test_truncated_results_say_so(make_shim: Callable[..., Shim], fresh: bool) -> None:
    shim = make_shim("--workers", "1", *(["--fresh-process"] if fresh else []))
    final = run(shim, base64.b64encode(flood_wasm(32)).decode())  # 2 MiB printed
    assert final["results"] == "x" * (1 << 20)
    assert final["results_truncated"] is True
    [listed] = shim.tasks()
    assert listed["results_truncated"] is True and listed["results"] == final["results"]
    whole = run(shim, base64.b64encode(flood_wasm(1)).decode())
    assert "results_truncated" not in whole


def test_fresh_process_failure_carries_the_guest_stderr(make_shim: Callable[..., Shim]) -> None:
    shim = make_shim("--workers", "1", "--fresh-process")
    failed = run(shim, base64.b64encode(complain_wasm("boom: bad input", 3)).decode(), 4)
    assert str(failed["error"]).startswith("exited with code 3")
    assert str(failed["error"]).endswith("boom: bad input")


def test_a_worker_left_running_an_inference_is_replaced(
    make_shim: Callable[..., Shim], classify_b64: str, tmp_path: Path
) -> None:
    """A task whose inference OpenVINO would not stop fails at its deadline; its worker leaves
    with that inference, and the next task runs on a new worker."""
    models = tmp_path / "loop-models"
    loop_model(models / "loop")
    (models / "loop" / "long.f32").write_bytes(struct.pack("<4f", 3 * 10**7, 0, 0, 0))
    (models / "loop" / "short.f32").write_bytes(struct.pack("<4f", 3, 0, 0, 0))
    shim = make_shim("--workers", "1", "--models-dir", str(models), "--default-timeout", "5s")
    args = ["--model", "loop", "--dims", "1,4", "--classes", "4", "--top", "1"]
    failed = run(shim, classify_b64, FAILED, inputs=[*args, "/models/loop/long.f32"])
    assert "did not stop its inference" in str(failed["error"]), failed
    wait_workers(shim, lambda pids: pids == [])  # it left, taking the inference along
    done = run(shim, classify_b64, inputs=[*args, "/models/loop/short.f32"])
    assert "class 0" in str(done["results"]), done
