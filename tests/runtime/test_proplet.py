"""`wasinn proplet run` as a Pod runs it: every wasm source, digest checks, failures, reports."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import free_port
from .conftest import wat

pytestmark = pytest.mark.runtime
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str, bytes], str]]:
    """Serve files over http on 127.0.0.1; returns a function that publishes one."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_port}/{name}"

    yield publish
    server.shutdown()


def proplet(
    task: dict[str, object], models_dir: Path, tmp_path: Path, via_file: bool = False, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """Run the proplet on `task`, given in WASINN_TASK or (for big tasks) WASINN_TASK_FILE."""
    termination = tmp_path / "termination-log"
    if via_file:
        (tmp_path / "task.json").write_text(json.dumps(task))
        env["WASINN_TASK_FILE"] = str(tmp_path / "task.json")
    else:
        env["WASINN_TASK"] = json.dumps(task)
    proc = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={
            **os.environ,
            "WASINN_MODELS_DIR": str(models_dir),
            "WASINN_TERMINATION_LOG": str(termination),
            "WASINN_CACHE_DIR": str(tmp_path / "cache"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    summary = json.loads(termination.read_text())
    assert len(termination.read_bytes()) <= 4096
    return proc, summary


@pytest.mark.parametrize("guest", ["classify-c", "classify-rust"])
def test_url_with_digest(
    guest: str,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
    serve: Callable[[str, bytes], str],
) -> None:
    wasm = guest_path(guest).read_bytes()
    task = {"id": "t-url", "wasm": {"url": serve("g.wasm", wasm), "digest": sha(wasm)},
            "args": CHELSEA}  # fmt: skip
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].strip().startswith("1. tiger cat (282)")
    assert summary["state"] == "Completed"
    assert summary["exitCode"] == 0
    assert summary["digest"] == sha(wasm)
    assert summary["taskId"] == "t-url"
    assert "tiger cat" in str(summary["stdout"])


def test_file_and_inline(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    path = guest_path("classify-c")
    for source in ({"path": str(path)}, {"inline": base64.b64encode(path.read_bytes()).decode()}):
        # A 250 KB module inline is too big for one environment variable: use the file.
        proc, summary = proplet({"wasm": source, "args": CHELSEA}, models_dir, tmp_path, True)
        assert proc.returncode == 0, proc.stderr
        assert summary["state"] == "Completed"


def test_task_env_reaches_only_the_guest(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    task = {"wasm": {"path": str(guest_path("classify-c"))},
            "env": {"MODEL_DIR": "/models/efficientnet-lite0", "LD_PRELOAD": "/nonexistent.so"},
            "args": ["/models/efficientnet-lite0/tensors/coffee.rgb.f32"]}  # fmt: skip
    # The loader's variables are reserved: the proplet refuses the task before it runs.
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 1
    assert str(summary["error"]).startswith("env: LD_PRELOAD: reserved name (names starting LD_")
    assert proc.stdout == ""
    task["env"] = {"MODEL_DIR": "/models/efficientnet-lite0"}
    proc, _ = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1. espresso (967)" in proc.stdout


def test_models_dir_is_read_only_for_the_guest(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    task = {"wasm": {"path": str(guest_path("classify-c"))},
            "args": [*CHELSEA[:2], "--dump", "/models", CHELSEA[2]]}  # fmt: skip
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 1
    assert summary["state"] == "Failed"
    assert not (models_dir / "efficientnet-lite0" / "tensors" / "chelsea.rgb.f32.out").exists()


@pytest.mark.parametrize(
    ("make_source", "error", "reason"),
    [
        (lambda url, wasm: {"url": url, "digest": sha(b"other")}, "digest mismatch: expected",
         "InvalidWasm"),
        (lambda url, wasm: {"url": f"http://127.0.0.1:{free_port()}/x.wasm"}, "Connection refused",
         "FetchFailed"),
        (lambda url, wasm: {"url": url.replace("g.wasm", "missing.wasm")}, "HTTP 404",
         "FetchFailed"),
        (lambda url, wasm: {"inline": base64.b64encode(b"MZ not wasm").decode()},
         "not a WebAssembly binary", "InvalidWasm"),
        (lambda url, wasm: {"path": "/proc/none/x.wasm"}, "cannot read /proc/none/x.wasm",
         "InvalidWasm"),
    ],
)  # fmt: skip
def test_fetch_failures(
    make_source: Callable[[str, bytes], dict[str, str]],
    error: str,
    reason: str,
    models_dir: Path,
    tmp_path: Path,
    serve: Callable[[str, bytes], str],
) -> None:
    wasm = wat("hello")
    task = {"wasm": make_source(serve("g.wasm", wasm), wasm)}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode != 0
    assert summary["state"] == "Failed"
    assert error in str(summary["error"])
    assert summary["reason"] == reason
    assert error in proc.stderr


def test_trapping_guest(models_dir: Path, tmp_path: Path) -> None:
    task = {"wasm": {"inline": base64.b64encode(wat("trap")).decode()}}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 134
    assert summary["state"] == "Failed"
    assert summary["exitCode"] == 134
    assert summary["reason"] == "Trap"
    assert "wasm trap" in str(summary["error"])


def test_timeout(models_dir: Path, tmp_path: Path) -> None:
    task = {"wasm": {"inline": base64.b64encode(wat("spin")).decode()}, "timeoutSeconds": 1}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 124
    assert summary["reason"] == "DeadlineExceeded"
    # Every proplet run has a memory limit now (the policy's default), so the runtime adds
    # linear memory's use to a timeout's error.
    assert str(summary["error"]).startswith("timed out after 1 s")


def test_a_failed_task_says_why(
    models_dir: Path, tmp_path: Path, guest_path: Callable[[str], Path]
) -> None:
    task = {"wasm": {"path": str(guest_path("classify-c"))}, "args": ["/models/nope.f32"]}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 1
    assert summary["error"] == (
        "exited with code 1: classify: cannot read /models/nope.f32: No such file or directory"
    )
    assert summary["reason"] == "ExitCode"


def test_bad_cli_args(models_dir: Path, tmp_path: Path) -> None:
    task = {"wasm": {"inline": base64.b64encode(wat("hello")).decode()}, "cliArgs": ["--nope"]}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 1
    assert summary["error"] == "cliArgs: unknown flag '--nope'"
    assert summary["reason"] == "InvalidTask"


def test_large_output_is_cut_to_fit(
    models_dir: Path, tmp_path: Path, guest_path: Callable[[str], Path]
) -> None:
    tensors = "/models/efficientnet-lite0/tensors"
    task = {"wasm": {"path": str(guest_path("classify-c"))},
            "args": ["--top", "1000", f"{tensors}/chelsea.rgb.f32",
                     f"{tensors}/coffee.rgb.f32"]}  # fmt: skip
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 0
    assert len(proc.stdout) > 4096  # the log has it all
    assert summary["stdoutTruncated"] is True
    assert str(summary["stdout"]).startswith(f"{tensors}/chelsea.rgb.f32\n  1. tiger cat")


def test_sigterm_interrupts_promptly(models_dir: Path, tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    task = {"wasm": {"inline": base64.b64encode(wat("print_spin")).decode()}}
    process = subprocess.Popen(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={**os.environ, "WASINN_TASK": json.dumps(task), "WASINN_MODELS_DIR": str(models_dir),
             "WASINN_TERMINATION_LOG": str(termination), "WASINN_CACHE_DIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"  # the guest is spinning now
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
    finally:
        process.kill()
        process.wait()
    summary = json.loads(termination.read_text())
    assert summary["state"] == "Failed"
    assert summary["exitCode"] == 143
    assert "interrupted" in summary["error"]


def test_exits_when_the_parent_that_started_it_dies(models_dir: Path, tmp_path: Path) -> None:
    """A shim that dies without ending its tasks (SIGKILL) must not leave guests running."""
    task = {"wasm": {"inline": base64.b64encode(wat("print_spin")).decode()}}
    (tmp_path / "task.json").write_text(json.dumps(task))
    # A parent shell starts the proplet, reports its PID, and is then killed.
    script = (
        f"WASINN_PARENT_PID=$$ WASINN_TASK_FILE={tmp_path / 'task.json'} "
        f"WASINN_MODELS_DIR={models_dir} WASINN_TERMINATION_LOG={tmp_path / 'term'} "
        f"{sys.executable} -m wasinn_operator.cli proplet run > {tmp_path / 'out'} & "
        "echo $!; wait"
    )
    (tmp_path / "out").write_bytes(b"")
    parent = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while b"started" not in (tmp_path / "out").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"started" in (tmp_path / "out").read_bytes()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the proplet outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
