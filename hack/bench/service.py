"""Sections on the services: the local shim (tasks end to end, REST) and the cluster.

local: a real `wasinn shim` (local backend, warm workers) on 127.0.0.1; N classification tasks
at concurrency 1/4/16, start -> result measured by the client (POST start, then one GET that
waits for the end, `?wait=`), tasks/s, and the peak RSS of the shim and its worker processes;
the same task's run in the engine alone (in this process, warm, as a worker runs it, measured
before and after the concurrency-1 tasks), and at concurrency 1 the overhead: start -> result
p50 minus that run's median; then N more at concurrency 1 learnt of by polling (a GET every
2 ms, as a client that does not wait), and their overhead.
rest: bounded loops of `GET /tasks/{id}` and `POST /tasks` on the same shim.
cluster: only when `hack/cluster status` says the cluster runs (else a skip message); the
section itself is hack/bench/cluster.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from report import Row, row, summary

from cluster import KubectlError, cluster_rows
from wasinn_operator.api.lifecycle import TaskPhase
from wasinn_operator.kubeclient import KubeError

ROOT = Path(__file__).resolve().parent.parent.parent
CHELSEA = ["--model", "efficientnet-lite0", "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"]
FINISHED = tuple(p.state for p in TaskPhase if p.finished)
POLL = 0.002  # seconds between a polling client's GETs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class RssSampler:
    """Peak tree RSS of a process, sampled every 100 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, _tree_rss(pid)  # a run shorter than one period still counts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, _tree_rss(self.pid))

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _tree_rss(self.pid))


@contextlib.contextmanager
def local_shim(models_dir: Path, workers: int) -> Iterator[tuple[Any, subprocess.Popen[bytes]]]:
    """A `wasinn shim` on 127.0.0.1 with its own data and cache directories; yields an httpx
    client on it and the process."""
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "shim.log"
        command = [sys.executable, "-m", "wasinn_operator.cli", "shim", "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", f"{tmp}/data", "--models-dir",
                   str(models_dir), "--workers", str(workers)]  # fmt: skip
        env = {**os.environ, "WASINN_CACHE_DIR": f"{tmp}/cache"}
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the shim exited:\n{log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the shim never became healthy")
                time.sleep(0.1)
            yield client, process
        finally:
            client.close()
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _create(client: Any, wasm_b64: str) -> str:
    response = client.post("/tasks", json={"name": "bench", "file": wasm_b64, "inputs": CHELSEA})
    if response.status_code != 201:
        raise RuntimeError(f"POST /tasks: {response.status_code} {response.text}")
    return str(response.json()["id"])


def _run_task(client: Any, task_id: str, poll: float | None = None) -> float:
    """Seconds from POST start to the task's finished state, as the client learns of it: by a
    GET that waits for the end (`?wait=`), or with `poll`, by GETs `poll` seconds apart (a
    Propeller client's way)."""
    began = time.perf_counter()
    response = client.post(f"/tasks/{task_id}/start")
    if response.status_code != 200:
        raise RuntimeError(f"start: {response.status_code} {response.text}")
    params = None if poll is not None else {"wait": 60}
    while True:
        task = client.get(f"/tasks/{task_id}", params=params).json()
        if task["state"] in FINISHED:
            if task["state"] != 3:
                raise RuntimeError(f"task failed: {task.get('error')}")
            return time.perf_counter() - began
        if poll is not None:
            time.sleep(poll)


def task_run_seconds(models_dir: Path, guest: Path, count: int = 20) -> list[float]:
    """Seconds of the classification task's runs in a warm engine configured as a worker's
    (tenant limits), without the shim: what start -> result adds to is this."""
    from wasinn_operator.runtime import RunSpec, Runtime, RuntimeConfig

    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(RuntimeConfig.for_tenants(cache_dir=Path(tmp)))
        spec = RunSpec(wasm=guest.read_bytes(), args=CHELSEA, models_dir=models_dir,
                       program_name=guest.name)  # fmt: skip
        times = []
        for i in range(count + 3):  # the first runs compile and load
            began = time.perf_counter()
            if not runtime.run(spec).ok:
                raise RuntimeError("the classification task failed in the engine")
            if i >= 3:
                times.append(time.perf_counter() - began)
    return times


def local_section(models_dir: Path, guest: Path, tasks: int) -> list[Row]:
    """tasks at concurrency 1, 4, 16 on one shim (2 warm workers: this machine's cores)."""
    wasm_b64 = base64.b64encode(guest.read_bytes()).decode()
    runs = task_run_seconds(models_dir, guest)  # again after concurrency 1: the load drifts
    rows: list[Row] = []
    with local_shim(models_dir, workers=os.cpu_count() or 2) as (client, process):
        _run_task(client, _create(client, wasm_b64))  # warm the workers and caches
        for concurrency in (1, 4, 16):
            ids = [_create(client, wasm_b64) for _ in range(tasks)]
            sampler = RssSampler(process.pid)
            began = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = list(pool.map(lambda i: _run_task(client, i), ids))
            elapsed = time.perf_counter() - began
            peak = sampler.close()
            s = summary(latencies)
            name = f"{tasks} tasks c{concurrency}"
            rows += [
                row("local", name, "p50", s["median"] * 1e3, "ms"),
                row("local", name, "p99", s["p99"] * 1e3, "ms"),
                row("local", name, "tasks_per_s", tasks / elapsed, "tasks/s"),
                row("local", name, "peak_rss", peak / 2**20, "MiB"),
            ]
            if concurrency == 1:
                polled = [_run_task(client, _create(client, wasm_b64), POLL) for _ in range(tasks)]
                runs += task_run_seconds(models_dir, guest)
                run, by_poll = summary(runs)["median"], summary(polled)["median"]
                rows += [
                    row("local", name, "overhead_p50", (s["median"] - run) * 1e3, "ms"),
                    row("local", name, "polled_p50", by_poll * 1e3, "ms"),
                    row("local", name, "polled_overhead_p50", (by_poll - run) * 1e3, "ms"),
                ]
    run = summary(runs)["median"]
    return [row("local", "task run (engine alone)", "median", run * 1e3, "ms"), *rows]


def _loop(call: Callable[[], None], count: int) -> tuple[float, list[float]]:
    latencies = []
    began = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return count / (time.perf_counter() - began), latencies


def rest_section(models_dir: Path, guest: Path, quick: bool) -> list[Row]:
    """Requests/s and p99 of GET /tasks/{id} and POST /tasks, one client, sequential."""
    count = 100 if quick else 1000
    wasm_b64 = base64.b64encode(guest.read_bytes()).decode()
    rows: list[Row] = []
    with local_shim(models_dir, workers=1) as (client, _):
        task_id = _create(client, wasm_b64)

        def get() -> None:
            if client.get(f"/tasks/{task_id}").status_code != 200:
                raise RuntimeError("GET /tasks/{id} failed")

        for name, call in (
            ("GET /tasks/{id}", get),
            ("POST /tasks", lambda: _create(client, wasm_b64)),
        ):
            rate, latencies = _loop(call, count)
            rows += [
                row("rest", name, "requests_per_s", rate, "req/s"),
                row("rest", name, "p99", summary(latencies)["p99"] * 1e3, "ms"),
            ]
    return rows


def cluster_up() -> tuple[bool, str]:
    """(whether `hack/cluster status` says everything runs, its last line)."""
    script = ROOT / "hack" / "cluster"
    try:
        done = subprocess.run(
            [str(script), "status"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return done.returncode == 0, last[0]


def is_operator(cmdline: bytes) -> bool:
    """Whether a /proc cmdline is `wasinn operator` (console script or `-m wasinn_operator.cli`)."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    runner = any(a.endswith("/wasinn") or a in ("wasinn", "wasinn_operator.cli") for a in args)
    return runner and "operator" in args


def _operator_rss() -> float:
    """MiB resident of the operator process on this (single) node; NaN when not found."""
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and is_operator(Path(f"/proc/{entry}/cmdline").read_bytes()):
                return _tree_rss(int(entry)) / 2**20
    return float("nan")


def cluster_section(guest: Path, quick: bool) -> tuple[list[Row], str | None]:
    """(rows, a skip message when the cluster is not up)."""
    up, status = cluster_up()
    if not up:
        return [], f"cluster: skipped, `hack/cluster status` says it is not up ({status})"
    env = subprocess.run(
        [str(ROOT / "hack" / "cluster"), "env"], capture_output=True, text=True, check=False
    )
    for line in env.stdout.splitlines():
        if line.startswith("export KUBECONFIG="):
            os.environ["KUBECONFIG"] = line.split("=", 1)[1].strip("'\"")
    try:
        return cluster_rows(guest, quick, _operator_rss), None
    except (KubectlError, KubeError, OSError, subprocess.TimeoutExpired) as exc:
        return [], f"cluster: stopped, {exc}"
