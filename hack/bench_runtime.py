#!/usr/bin/env python3
"""Benchmark the embedded engine against native OpenVINO.

Latency: the median of one inference (input, infer, output copied out) natively and through
the wasm classify guest (which times its set_input, compute and get_output calls with the WASI
monotonic clock), at batch 1 and 8, in one process. Both use the engine's Core and compile
properties and one reused infer request; the native input is a shared tensor set once (as an
application reusing its buffer does). Native and wasm run in short alternating rounds; the ratio
is the median of the rounds' ratios, so drift and a busy neighbour on a shared machine affect
both sides alike (its quartiles over the rounds are shown too).

Component: the same ratio for the component guest (wasi:nn@0.2.0-rc-2024-10-28, which times
its tensor, compute and data calls) next to its preview1 twin, classify-rust, in fewer rounds
(a component's tensor crosses into the host one value per byte: tens of times slower).

Start: the wall time of a whole classification task as the product runs one. The local shim
runs tasks on warm workers (`wasinn proplet serve`, one engine kept across tasks), driven here
through the same pipe protocol: cold is the first task on a new worker with empty caches, warm
the worker's next task on the same module and model. "fresh" is a task in a new process with
the on-disk caches populated, as `wasinn shim --fresh-process` and a Pod per task run one. The
start of a process (interpreter, imports, engine) is shown apart.

usage: hack/bench_runtime.py [--models-dir DIR] [--guest build/guests/classify-c.wasm]
                             [--iterations 10] [--rounds 40] [--starts 3] [--precision f32]
                             [--component-rounds 6] [--only latency|component|start]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov

from wasinn_operator.runtime import DirMount, RunSpec, Runtime, RuntimeConfig
from wasinn_operator.shim.workers import Worker

ROOT = Path(__file__).resolve().parent.parent
MODEL = "efficientnet-lite0"
TENSOR = "chelsea.rgb.f32"
WARMUP = 5


class Native:
    """OpenVINO called directly on the engine's own Core, with the engine's properties."""

    def __init__(self, runtime: Runtime, models_dir: Path, batch: int) -> None:
        core = runtime.backend.core
        model = core.read_model(str(models_dir / MODEL / "model.xml"))
        if batch != 1:
            model.reshape([batch, 3, 224, 224])
        compiled = core.compile_model(model, "CPU", runtime.backend.compile_properties())
        self.request = compiled.create_infer_request()
        data = np.fromfile(models_dir / MODEL / "tensors" / TENSOR, dtype=np.float32)
        self.data = np.tile(data, batch).reshape(batch, 3, 224, 224)
        self.request.set_input_tensor(0, ov.Tensor(self.data, shared_memory=True))
        self.out = np.empty(batch * 1000, dtype=np.float32)

    def latencies(self, iterations: int) -> list[float]:
        """Seconds per inference: infer, copy the output out."""
        samples = []
        for i in range(WARMUP + iterations):
            start = time.perf_counter()
            self.request.infer()
            np.copyto(self.out, self.request.get_output_tensor(0).data.reshape(-1))
            if i >= WARMUP:
                samples.append(time.perf_counter() - start)
        return samples


def guest_spec(models_dir: Path, guest: Path, batch: int, repeat: int) -> RunSpec:
    return RunSpec(
        wasm=guest.read_bytes(),
        args=["--model", MODEL, "--batch", str(batch), "--repeat", str(repeat),
              f"/tensors/{TENSOR}"],
        dirs=[DirMount(models_dir / MODEL / "tensors", "/tensors", read_only=True)],
        models_dir=models_dir,
        program_name=guest.name,
    )  # fmt: skip


def wasm_latencies(
    runtime: Runtime, models_dir: Path, guest: Path, batch: int, iterations: int
) -> list[float]:
    """Seconds per inference as the guest measured them (set_input, compute, get_output)."""
    result = runtime.run(guest_spec(models_dir, guest, batch, WARMUP + iterations))
    if not result.ok:
        sys.exit(f"guest failed: {result.error}\n{result.stderr.decode()}")
    runs = [
        int(line.split()[2]) / 1e6
        for line in result.stderr.decode().splitlines()
        if line.startswith("run ")
    ]
    if len(runs) != WARMUP + iterations:
        sys.exit(f"expected {WARMUP + iterations} timing lines, got {len(runs)}")
    return runs[WARMUP:]


def start_seconds(
    models_dir: Path,
    guest: Path,
    precision: str | None,
    cache: Path,
    runtime: Runtime | None = None,
) -> float:
    """Wall time of one whole classification run, on a fresh engine unless one is given."""
    started = time.perf_counter()
    if runtime is None:
        runtime = Runtime(RuntimeConfig(cache_dir=cache, inference_precision=precision))
    result = runtime.run(guest_spec(models_dir, guest, 1, 1))
    elapsed = time.perf_counter() - started
    if not result.ok:
        sys.exit(f"guest failed: {result.error}")
    return elapsed


def child_times(
    models_dir: Path, guest: Path, precision: str | None, cache: Path
) -> tuple[float, float]:
    """(seconds the process spent outside the task: start, imports, exit; seconds of the task)
    for one task in a new interpreter."""
    command = [sys.executable, __file__, "--models-dir", str(models_dir), "--guest", str(guest)]
    if precision:
        command += ["--precision", precision]
    began = time.perf_counter()
    out = subprocess.run(
        [*command, "--child-start", str(cache)], check=True, capture_output=True, text=True
    ).stdout
    task = float(out)
    return time.perf_counter() - began - task, task


def ratio_row(
    runtime: Runtime, models_dir: Path, guest: Path, batch: int, rounds: int, iterations: int
) -> tuple[float, float, float, float, float]:
    """(native s, wasm s, ratio q1, median ratio, ratio q3) for one guest at one batch size."""
    baseline = Native(runtime, models_dir, batch)
    native: list[float] = []
    wasm: list[float] = []
    ratios: list[float] = []
    for round_ in range(rounds):
        # Short rounds, alternating which side goes first: the ratio of each round's medians
        # compares the two under the same load, and their median discards the rounds a
        # neighbour on this shared machine disturbed.
        if round_ % 2:
            w_round = wasm_latencies(runtime, models_dir, guest, batch, iterations)
            n_round = baseline.latencies(iterations)
        else:
            n_round = baseline.latencies(iterations)
            w_round = wasm_latencies(runtime, models_dir, guest, batch, iterations)
        native += n_round
        wasm += w_round
        ratios.append(statistics.median(w_round) / statistics.median(n_round))
    q1, ratio, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(native), statistics.median(wasm), q1, ratio, q3


def print_row(label: str, row: tuple[float, float, float, float, float]) -> None:
    n, w, q1, ratio, q3 = row
    print(f"{label:>5} {n * 1e3:>10.2f} {w * 1e3:>10.2f} {ratio:>12.3f} "
          f"{f'{q1:.3f}-{q3:.3f}':>15}")  # fmt: skip


HEADER = (
    f"{'batch':>5} {'native ms':>10} {'wasm ms':>10} {'wasm/native':>12} {'(rounds q1-q3)':>15}"
)


def latency_table(args: argparse.Namespace, models_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(RuntimeConfig(cache_dir=Path(tmp), inference_precision=args.precision))
        print(f"model {MODEL}, guest {args.guest.name}, precision {args.precision or 'default'}, "
              f"{args.rounds} rounds x {args.iterations} iterations")  # fmt: skip
        print(HEADER)
        for batch in (1, 8):
            row = ratio_row(runtime, models_dir, args.guest, batch, args.rounds, args.iterations)
            print_row(str(batch), row)


def component_table(
    models_dir: Path,
    guests: Path,
    precision: str | None = None,
    rounds: int = 6,
    iterations: int = 3,
) -> None:
    """wasm/native of the component guest next to its preview1 twin (classify-rust), each
    against native OpenVINO on the same engine, at batch 1 and 8."""
    pair = [guests / "classify-rust.wasm", guests / "classify-component.wasm"]
    missing = [str(p) for p in pair if not p.is_file()]
    if missing:
        sys.exit(f"not built: {', '.join(missing)} (hack/build-guests.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(RuntimeConfig(cache_dir=Path(tmp), inference_precision=precision))
        print(f"component vs preview1 guest, precision {precision or 'default'}, "
              f"{rounds} rounds x {iterations} iterations")  # fmt: skip
        for guest in pair:
            print(f"{guest.name}:")
            print(HEADER)
            for batch in (1, 8):
                row = ratio_row(runtime, models_dir, guest, batch, rounds, iterations)
                print_row(str(batch), row)


def worker_times(
    models_dir: Path, guest: Path, precision: str | None, cache: Path
) -> tuple[float, float, float]:
    """(seconds until a new worker is ready, its first task, its next task on the same module
    and model), each task from sending it to reading its result."""
    env = {**os.environ, "WASINN_MODELS_DIR": str(models_dir), "WASINN_CACHE_DIR": str(cache)}
    env.pop("WASINN_INFERENCE_PRECISION", None)
    if precision:
        env["WASINN_INFERENCE_PRECISION"] = precision
    args = ["--model", MODEL, f"/models/{MODEL}/tensors/{TENSOR}"]
    task = json.dumps({"wasm": {"path": str(guest.resolve())}, "engine": "embedded", "args": args})
    began = time.perf_counter()
    worker = Worker(env, str(cache))
    try:
        worker.ready()
        times = [time.perf_counter() - began]
        for _ in range(2):
            began = time.perf_counter()
            summary = worker.run(task)
            times.append(time.perf_counter() - began)
            if summary["state"] != "Completed":
                sys.exit(f"guest failed: {summary['error']}")
    finally:
        worker.close()
    return times[0], times[1], times[2]


def start_table(args: argparse.Namespace, models_dir: Path) -> None:
    # cold: a new worker, empty caches (the first task on a new machine); warm: that worker's
    # next task (the product's every later task); fresh: a new process, on-disk caches populated
    # (--fresh-process, or a Pod per task).
    cold, warm, fresh, starts, imports = [], [], [], [], []
    for _ in range(args.starts):
        with tempfile.TemporaryDirectory() as tmp:
            start, first, second = worker_times(models_dir, args.guest, args.precision, Path(tmp))
            starts.append(start)
            cold.append(first)
            warm.append(second)
            overhead, task = child_times(models_dir, args.guest, args.precision, Path(tmp))
            fresh.append(task)
            imports.append(overhead)
    c, w, f, s, i = (statistics.median(v) for v in (cold, warm, fresh, starts, imports))
    print(f"start of one classification task (median of {args.starts}):")
    print(f"  cold  {c * 1e3:7.1f} ms  new worker, empty caches")
    print(f"  warm  {w * 1e3:7.1f} ms  warm worker's next task, same module and model"
          f"   cold/warm  {c / w:5.1f}x")  # fmt: skip
    print(f"  fresh {f * 1e3:7.1f} ms  new process per task, on-disk caches (--fresh-process)"
          f"   cold/fresh {c / f:5.1f}x")  # fmt: skip
    print(f"  (not in the times above: a new worker's start, {s * 1e3:.0f} ms: Python, imports,"
          " engine;")  # fmt: skip
    print(f"   a fresh process's start and exit, {i * 1e3:.0f} ms: Python, imports)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--guest", type=Path, default=ROOT / "build/guests/classify-c.wasm")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--precision", default=None, help="f32, bf16 or f16 (default: device's)")
    parser.add_argument("--component-rounds", type=int, default=6)
    parser.add_argument("--only", choices=["latency", "component", "start"], help="one table")
    parser.add_argument("--child-start", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir = args.models_dir.resolve()
    if args.child_start is not None:
        print(f"{start_seconds(models_dir, args.guest, args.precision, args.child_start):.6f}")
        # As `wasinn run` does (cli._exit_now): no interpreter teardown under wasmtime's threads.
        sys.stdout.flush()
        os._exit(0)
    if args.only in (None, "latency"):
        latency_table(args, models_dir)
    if args.only in (None, "component"):
        component_table(models_dir, args.guest.parent, args.precision, args.component_rounds)
    if args.only in (None, "start"):
        start_table(args, models_dir)


if __name__ == "__main__":
    main()
