#!/usr/bin/env python3
"""Load the shim's REST API with classification tasks and print throughput and latency.

Each task is what a Propeller client does: `POST /tasks` with the module (base64) and the
tensor, `POST /tasks/{id}/start`, then `GET /tasks/{id}` until it has finished. The latency of
a task runs from its create to the poll that saw it finished. Without `--url` a `wasinn shim`
(local backend) is started on a free port over a temporary data directory and stopped at the
end; its peak RSS is printed too. A few warm-up tasks (not counted) start the workers first.

usage: hack/load_shim.py [--url URL] [--tasks 200] [--concurrency 16] [--warmup 4]
                         [--models-dir DIR] [--guest build/guests/classify-c.wasm]
                         [--shim-arg=--workers=4 ...]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from wasinn_operator.api.lifecycle import TaskPhase

ROOT = Path(__file__).resolve().parent.parent
FINISHED = tuple(p.state for p in TaskPhase if p.finished)
POLL = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _shim(models_dir: Path, extra: list[str]) -> Iterator[tuple[str, int]]:
    """A local shim on a free port: (URL, pid)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="load-shim-") as tmp:
        command = [
            sys.executable, "-m", "wasinn_operator.cli", "shim", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", tmp, "--models-dir", str(models_dir), *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPLET_")}
        log = Path(tmp) / "shim.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the shim did not start:\n{log.read_text()}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            yield url, process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _one(http: httpx.Client, body: dict[str, object]) -> tuple[float, str | None]:
    """Latency of one task, and an error (None when it completed)."""
    started = time.monotonic()
    created = http.post("/tasks", json=body)
    if created.status_code != 201:
        return time.monotonic() - started, f"create: {created.status_code} {created.text[:200]}"
    task_id = created.json()["id"]
    begun = http.post(f"/tasks/{task_id}/start")
    if begun.status_code != 200:
        return time.monotonic() - started, f"start: {begun.status_code} {begun.text[:200]}"
    while True:
        response = http.get(f"/tasks/{task_id}")
        if response.status_code != 200:
            return time.monotonic() - started, f"get: {response.status_code}"
        task = response.json()
        if task["state"] in FINISHED:
            elapsed = time.monotonic() - started
            if task["state"] != 3:
                return elapsed, f"state {task['state']}: {task.get('error')}"
            return elapsed, None
        time.sleep(POLL)


def _load(url: str, body: dict[str, object], count: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = iter(range(count))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                try:
                    latency, error = _one(http, body)
                except httpx.HTTPError as exc:
                    latency, error = 0.0, f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(latency)
                    if error:
                        errors.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}", file=sys.stderr)
    ordered = sorted(latencies)
    return {
        "tasks_per_s": count / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "errors": float(len(errors)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running shim (default: start a local one)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models"),
    )
    parser.add_argument("--guest", type=Path, default=ROOT / "build/guests/classify-c.wasm")
    parser.add_argument("--shim-arg", action="append", default=[], help="extra shim option")
    args = parser.parse_args()
    body: dict[str, object] = {
        "name": "load",
        "file": base64.b64encode(args.guest.read_bytes()).decode(),
        "inputs": [
            "--model",
            "efficientnet-lite0",
            "/models/efficientnet-lite0/tensors/chelsea.rgb.f32",
        ],
    }

    def run(url: str) -> None:
        if args.warmup:
            _load(url, body, args.warmup, min(args.warmup, args.concurrency))
        got = _load(url, body, args.tasks, args.concurrency)
        print(
            f"{args.tasks} tasks at concurrency {args.concurrency}: "
            f"{got['tasks_per_s']:.1f} tasks/s, p50 {got['p50']:.3f} s, "
            f"p99 {got['p99']:.3f} s, errors {got['errors']:.0f}"
        )

    if args.url:
        run(args.url)
        return 0
    with _shim(args.models_dir.resolve(), [a for arg in args.shim_arg for a in arg.split()]) as (
        url,
        pid,
    ):
        run(url)
        peak = _peak_rss_mib(pid)
        if peak is not None:
            print(f"shim peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
