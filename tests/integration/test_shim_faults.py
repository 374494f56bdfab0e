"""The fault suite (local backend): a full disk, a killed shim, a damaged database, a broker
that goes away. Each fault gives a clear error where it hits, /health names it while it lasts,
and the shim carries on by itself once it is gone; nothing stored is lost."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wasinn_operator.shim.taskfields import redact

from ..conftest import free_port
from .conftest import (
    CHELSEA,
    SHIM_BACKENDS,
    TOPIC_PREFIX,
    DurableSubscriber,
    PersistentBroker,
    Shim,
    ShimBackend,
    flood_wasm,
    mqtt_env,
)
from .test_local_workers import wait_workers, workers

pytestmark = pytest.mark.integration
MIB = 1 << 20


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    """The faults here are the local backend's own: its disk, its database, its process."""
    return SHIM_BACKENDS["local"](request)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted after the test (and after its shims: requested first)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed: cannot make a small filesystem")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free on `disk` (0: until the disk refuses)."""
    filler = disk / "filler"
    block = bytes(MIB)
    with contextlib.suppress(OSError), filler.open("wb") as f:
        remaining = shutil.disk_usage(disk).free - leave
        while remaining > 0 or not leave:
            f.write(block[: min(MIB, remaining)] if leave else block)
            f.flush()
            remaining -= MIB
    if not leave:
        with contextlib.suppress(OSError), filler.open("ab") as f:  # the last partial block
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    return filler


def health(shim: Shim) -> tuple[int, dict[str, Any]]:
    answer = shim.http.get("/health")
    return answer.status_code, dict(answer.json())


def wait_health(shim: Shim, done: Callable[[int, dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = health(shim)
        if done(status, body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"/health never changed: {health(shim)}")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def data_args(disk: Path) -> list[str]:
    return ["--data-dir", str(disk), "--db", str(disk / "tasks.db")]


def test_full_disk_fails_the_task_clearly_and_the_shim_recovers(
    small_disk: Path, make_shim: Callable[..., Shim]
) -> None:
    shim = make_shim(*data_args(small_disk), "--min-free-mib", "4")
    assert health(shim)[0] == 200
    flood = shim.create("flood", file=base64.b64encode(flood_wasm(16)).decode())  # 1 MiB out
    filler = fill(small_disk, leave=256 << 10)  # room for small writes, not for 1 MiB
    body = wait_health(shim, lambda status, _: status == 503)  # answers are reused for 1 s
    assert body["status"] == "fail", body
    assert body["checks"]["disk"]["status"] == "fail"
    assert "below the 4 MiB minimum" in body["checks"]["disk"]["output"]
    assert set(body) >= {"version", "commit", "description", "build_time", "instance_id"}

    assert shim.http.post(f"/tasks/{flood}/start").status_code == 200
    failed = shim.wait_state(flood)
    assert failed["state"] == 4, failed
    assert failed["error"].startswith("the result could not be stored: the task database ")
    assert "database or disk is full" in failed["error"]

    big = {"file": ("big.wasm", b"\0asm\1\0\0\0" + bytes(MIB), "application/wasm")}
    refused = shim.http.put(f"/tasks/{flood}/upload", files=big)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"].startswith("the artifact store ")
    assert refused.json()["error"].endswith("failed: No space left on device")
    assert shim.http.get("/tasks").status_code == 200  # reads go on

    filler.unlink()
    wait_health(shim, lambda status, _: status == 200)  # by itself, no restart
    assert shim.http.post(f"/tasks/{flood}/start").status_code == 200
    done = shim.wait_state(flood)
    assert done["state"] == 3, done
    assert done["results"] == "x" * MIB
    assert "results_truncated" not in done


def test_a_result_waits_for_a_full_database(
    small_disk: Path, make_shim: Callable[..., Shim], spin_wasm: bytes
) -> None:
    shim = make_shim(*data_args(small_disk), "--min-free-mib", "1", "--workers", "1")
    spin = shim.create("spin", file=base64.b64encode(spin_wasm).decode())
    assert shim.http.post(f"/tasks/{spin}/start").status_code == 200
    shim.wait_state(spin, (2,))
    [pid] = wait_workers(shim, lambda pids: len(pids) == 1)
    filler = fill(small_disk, leave=0)
    for i in range(20_000):  # use up any room the database's journal still has
        answer = shim.http.post("/tasks", json={"name": f"{i}" * 500})
        if answer.status_code == 503:
            break
        assert answer.status_code == 201, answer.text
    assert answer.status_code == 503
    assert "database or disk is full" in answer.json()["error"]
    assert "tasks.db" in answer.json()["error"]

    os.kill(pid, signal.SIGKILL)  # the run ends while nothing can be written
    body = wait_health(
        shim, lambda _, b: "1 task(s) wait for it" in str(b["checks"]["database"].get("output"))
    )
    assert body["status"] == "fail"
    assert shim.task(spin)["state"] == 2  # not recorded yet, not lost either

    filler.unlink()
    failed = shim.wait_state(spin)
    assert failed["state"] == 4
    assert failed["error"].startswith("the proplet worker died (signal 9, SIGKILL)")
    wait_health(shim, lambda status, _: status == 200)
    assert shim.http.post("/tasks", json={"name": "after"}).status_code == 201


def test_killed_shim_loses_nothing_but_the_running_task(
    make_shim: Callable[..., Shim], classify_b64: str, spin_wasm: bytes
) -> None:
    shim = make_shim("--workers", "1", "--long-workers", "0")
    done = shim.create("done", file=classify_b64, inputs=CHELSEA)
    shim.http.post(f"/tasks/{done}/start").raise_for_status()
    finished = shim.wait_state(done)
    assert finished["state"] == 3, finished
    pending = shim.create("pending", env={"A": "1"})
    spin = shim.create("spin", file=base64.b64encode(spin_wasm).decode())
    shim.http.post(f"/tasks/{spin}/start").raise_for_status()
    shim.wait_state(spin, (2,))
    [worker] = wait_workers(shim, lambda pids: len(pids) == 1)
    queued = shim.create("queued", file=classify_b64, inputs=CHELSEA)
    shim.http.post(f"/tasks/{queued}/start").raise_for_status()  # waits: the slot is taken
    assert shim.task(queued)["state"] == 1
    before = {t["id"]: t for t in shim.tasks()}

    shim.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30  # its worker notices the shim is gone and ends
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived its shim"
    shim.start()

    after = {t["id"]: t for t in shim.tasks()}
    assert list(after) == list(before)
    assert after[done] == before[done] and after[pending] == before[pending]
    assert shim.task(done)["results"] == finished["results"]
    interrupted = shim.task(spin)
    assert interrupted["state"] == 4
    assert interrupted["error"] == "interrupted: the shim stopped while the task was running"
    assert interrupted["file"] == redact(base64.b64encode(spin_wasm).decode())
    ran = shim.wait_state(queued)  # queued before the kill: run after the restart
    assert ran["state"] == 3 and ran["results"] == finished["results"]


@pytest.mark.parametrize("damage", ["empty", "garbage header", "mid-file"])
def test_damaged_database_is_refused_at_start(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    module = b"\0asm\1\0\0\0"
    stored = data / "artifacts" / "sha256" / hashlib.sha256(module).hexdigest()
    stored.parent.mkdir(parents=True)
    stored.write_bytes(module)
    db = data / "tasks.db"
    if damage == "empty":
        db.touch()
    elif damage == "garbage header":
        db.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(8192))
    else:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE filler (x TEXT)")
            conn.executemany("INSERT INTO filler VALUES (?)", [("y" * 4000,)] * 500)
            conn.commit()
        content = bytearray(db.read_bytes())
        middle = len(content) // 2
        content[middle : middle + (256 << 10)] = os.urandom(256 << 10)
        db.write_bytes(content)
    command = [
        sys.executable, "-m", "wasinn_operator.cli", "shim", "--host", "127.0.0.1",
        "--port", str(free_port()), "--data-dir", str(data),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPLET_")}
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 2, ran.stderr
    expected = {
        "empty": "is empty (0 bytes)",
        "garbage header": "is not an SQLite database",
        "mid-file": "is damaged",
    }[damage]
    assert f"wasinn shim: the task database {db} {expected}" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    assert stored.read_bytes() == module  # the modules are untouched


def test_broker_down_results_wait_and_health_names_mqtt(
    make_shim: Callable[..., Shim], persistent_broker: PersistentBroker, classify_b64: str
) -> None:
    results = DurableSubscriber(persistent_broker.port, TOPIC_PREFIX + "control/proplet/results")
    try:
        shim = make_shim(**mqtt_env(persistent_broker))
        assert health(shim)[0] == 200
        persistent_broker.stop()
        body = wait_health(shim, lambda status, _: status == 503)
        mqtt = body["checks"]["mqtt"]
        assert mqtt["status"] == "fail"
        where = f"127.0.0.1:{persistent_broker.port}"
        assert mqtt["output"].startswith(f"not connected to the MQTT broker at {where}")
        task_id = shim.create("while-down", file=classify_b64, inputs=CHELSEA)
        shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
        final = shim.wait_state(task_id)  # REST goes on without the broker
        assert final["state"] == 3
        persistent_broker.start()
        payloads = results.wait_until(lambda got: any(p["task_id"] == task_id for p in got))
        wait_health(shim, lambda status, _: status == 200)
    finally:
        results.close()
    [published] = [p for p in payloads if p["task_id"] == task_id]
    assert published["results"] == final["results"]


def test_workers_of_a_full_disk_stay_alive(
    small_disk: Path, make_shim: Callable[..., Shim], classify_b64: str
) -> None:
    """Two slots, every task failing to record while the disk is full: afterwards both slots
    still run tasks (the pool threads did not die)."""
    shim = make_shim(*data_args(small_disk), "--min-free-mib", "1", "--workers", "2")
    ids = [shim.create(f"t{i}", file=classify_b64, inputs=CHELSEA) for i in range(4)]
    filler = fill(small_disk, leave=0)
    started = []
    for task_id in ids:
        answer = shim.http.post(f"/tasks/{task_id}/start")
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:
            started.append(task_id)
    with contextlib.suppress(OSError):
        filler.unlink()
    for task_id in started:
        assert shim.wait_state(task_id)["state"] in (3, 4)
    assert health(shim)[1]["checks"]["workers"] == {"status": "pass"}
    for task_id in ids:
        shim.http.post(f"/tasks/{task_id}/start").raise_for_status()
    assert all(shim.wait_state(t)["state"] == 3 for t in ids)
    assert len(workers(shim)) <= 2
