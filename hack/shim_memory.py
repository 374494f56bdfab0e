#!/usr/bin/env python3
"""Measure the shim's memory on large bodies: a listing of big results, uploads, big JSON.

Starts a local `wasinn shim` (as hack/load_shim.py does) and reports, for each request, the
growth of the shim's peak RSS (VmHWM, reset before each request through /proc/PID/clear_refs)
and the size of the answer:

- `GET /tasks?limit=100` over 100 finished tasks whose results are 1 MiB each;
- `PUT /tasks/{id}/upload` of a 100 MB module (multipart);
- `PUT /tasks/{id}` with the same module as base64 JSON (133 MB);
- `GET /tasks/{id}` of that task (its `file` is the module's base64).

usage: hack/shim_memory.py [--models-dir DIR] [--tasks 100] [--module-mb 100]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import wasmtime

from load_shim import ROOT, _shim

# Writes 64 KiB of "x" to stdout `count` times (16 = 1 MiB, the results limit).
FLOOD_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 16))))))
"""


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    raise KeyError(key)


def measure(pid: int, what: str, request: Callable[[], httpx.Response]) -> httpx.Response:
    """Print the peak RSS growth of `request` and its answer's size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status(pid, "VmRSS")
    response = request()
    peak = _status(pid, "VmHWM")
    after = _status(pid, "VmRSS")
    mib = 1 << 20
    print(
        f"{what}: {response.status_code}, body {len(response.content) / mib:.1f} MiB, "
        f"RSS {before / mib:.0f} -> peak {peak / mib:.0f} (+{(peak - before) / mib:.0f}) "
        f"-> {after / mib:.0f} MiB"
    )
    return response


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models"),
    )
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--module-mb", type=int, default=100)
    args = parser.parse_args()
    flood = base64.b64encode(wasmtime.wat2wasm(FLOOD_WAT)).decode()
    module = b"\0asm\1\0\0\0" + bytes(args.module_mb * 1_000_000 - 8)
    extra = ["--max-wasm-bytes", str(len(module) + 1024)]
    with (
        _shim(args.models_dir.resolve(), extra) as (url, pid),
        httpx.Client(base_url=url, timeout=600) as http,
    ):
        ids = []
        for i in range(args.tasks):
            task_id = http.post("/tasks", json={"name": f"flood{i}", "file": flood}).json()["id"]
            http.post(f"/tasks/{task_id}/start").raise_for_status()
            ids.append(task_id)
        for task_id in ids:
            while http.get(f"/tasks/{task_id}/results").json()["results"] is None:
                time.sleep(0.1)
        listing = f"/tasks?limit={args.tasks}"
        measure(pid, f"GET {listing}", lambda: http.get(listing))
        target = http.post("/tasks", json={"name": "big"}).json()["id"]
        files = {"file": ("big.wasm", module, "application/wasm")}
        measure(pid, "PUT upload", lambda: http.put(f"/tasks/{target}/upload", files=files))
        body = b'{"file": "' + base64.b64encode(module[:-1] + b"\1") + b'"}'
        headers = {"Content-Type": "application/json"}
        path = f"/tasks/{target}"
        measure(pid, "PUT JSON file", lambda: http.put(path, content=body, headers=headers))
        measure(pid, "GET task with file", lambda: http.get(f"/tasks/{target}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
