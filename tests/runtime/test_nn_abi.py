"""Every wasi-nn errno path, driven through a real guest (the WAT shim) on the real host."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from wasinn_operator.runtime import NNErrno, RunSpec, Runtime, RuntimeConfig, Session
from wasinn_operator.runtime.nn import ExecutionTarget

from .conftest import native_outputs, wat

pytestmark = pytest.mark.runtime

MODEL = "efficientnet-lite0"
NAME, GRAPH_OUT, CTX_OUT, WRITTEN, DIMS, TENSOR = 0x100, 0x200, 0x204, 0x208, 0x300, 0x400
DATA, OUTPUT = 0x10000, 0x100000
OUT_BYTES = 4000
BAD = 0xFFFFFFF0


@pytest.fixture(scope="module")
def chelsea(models_dir: Path) -> bytes:
    return (models_dir / MODEL / "tensors" / "chelsea.rgb.f32").read_bytes()


@pytest.fixture
def shim(runtime: Runtime, models_dir: Path) -> Session:
    return runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))


def u32(s: Session, ptr: int) -> int:
    return int(struct.unpack("<I", s.read(ptr, 4))[0])


def load_named(s: Session, name: bytes = MODEL.encode()) -> int:
    s.write(NAME, name)
    assert s.call("nn_load_by_name", NAME, len(name), GRAPH_OUT) == NNErrno.SUCCESS
    return u32(s, GRAPH_OUT)


def new_context(s: Session, graph: int = 0) -> int:
    assert s.call("nn_init_execution_context", graph, CTX_OUT) == NNErrno.SUCCESS
    return u32(s, CTX_OUT)


def put_tensor(
    s: Session,
    data: bytes,
    dims: tuple[int, ...] = (1, 3, 224, 224),
    ttype: int = 1,
    data_len: int | None = None,
    dims_ptr: int = DIMS,
    data_ptr: int = DATA,
) -> None:
    s.write(DIMS, struct.pack(f"<{len(dims)}I", *dims))
    s.write(DATA, data)
    length = len(data) if data_len is None else data_len
    s.write(TENSOR, struct.pack("<IIB3xII", dims_ptr, len(dims), ttype, data_ptr, length))


def infer(s: Session, data: bytes, **tensor: object) -> np.ndarray:
    ctx = new_context(s, load_named(s))
    put_tensor(s, data, **tensor)  # type: ignore[arg-type]
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, 1 << 20, WRITTEN) == NNErrno.SUCCESS
    return np.frombuffer(s.read(OUTPUT, u32(s, WRITTEN)), dtype=np.float32)


def test_named_model_inference_is_bitwise_native(
    shim: Session, chelsea: bytes, models_dir: Path
) -> None:
    got = infer(shim, chelsea)
    want = native_outputs(
        models_dir / MODEL / "model.xml",
        np.frombuffer(chelsea, np.float32).reshape(1, 3, 224, 224),
        "f32",
    )[0].ravel()
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert int(got.argmax()) == 282


def test_load_from_bytes_matches_named(shim: Session, chelsea: bytes, models_dir: Path) -> None:
    xml = (models_dir / MODEL / "model.xml").read_bytes()
    weights = (models_dir / MODEL / "model.bin").read_bytes()
    base = 0x200000
    shim.write(base, xml)
    shim.write(base + len(xml), weights)
    shim.write(0x1000, struct.pack("<4I", base, len(xml), base + len(xml), len(weights)))
    assert shim.call("nn_load", 0x1000, 2, 0, 0, GRAPH_OUT) == NNErrno.SUCCESS
    ctx = new_context(shim, u32(shim, GRAPH_OUT))
    put_tensor(shim, chelsea)
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert shim.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert shim.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.SUCCESS
    from_bytes = np.frombuffer(shim.read(OUTPUT, OUT_BYTES), np.float32).copy()
    assert from_bytes.view(np.uint32).tolist() == infer(shim, chelsea).view(np.uint32).tolist()


def test_autodetect_reads_onnx(shim: Session, models_dir: Path) -> None:
    onnx = (models_dir / "ppocr-cls-onnx" / "model.onnx").read_bytes()
    shim.write(0x200000, onnx)
    shim.write(0x1000, struct.pack("<2I", 0x200000, len(onnx)))
    assert shim.call("nn_load", 0x1000, 1, 5, 0, GRAPH_OUT) == NNErrno.SUCCESS


@pytest.mark.parametrize("encoding", [2, 3, 6, 99, -1])
def test_unsupported_or_unknown_encoding(shim: Session, encoding: int) -> None:
    shim.write(0x200000, b"\0" * 16)
    shim.write(0x1000, struct.pack("<2I", 0x200000, 16))
    assert shim.call("nn_load", 0x1000, 1, encoding, 0, GRAPH_OUT) == NNErrno.INVALID_ENCODING
    assert b"encoding" in shim.stderr


def test_load_argument_errors(shim: Session) -> None:
    shim.write(0x200000, b"not a model")
    shim.write(0x1000, struct.pack("<2I", 0x200000, 11))
    # IR needs two builders; garbage ONNX cannot be read; an unknown target; no builders.
    assert shim.call("nn_load", 0x1000, 1, 0, 0, GRAPH_OUT) == NNErrno.INVALID_ARGUMENT
    assert shim.call("nn_load", 0x1000, 1, 1, 0, GRAPH_OUT) == NNErrno.INVALID_ARGUMENT
    assert shim.call("nn_load", 0x1000, 1, 1, 7, GRAPH_OUT) == NNErrno.INVALID_ARGUMENT
    assert shim.call("nn_load", 0x1000, 0, 1, 0, GRAPH_OUT) == NNErrno.INVALID_ARGUMENT


def test_unknown_name_is_not_found(shim: Session) -> None:
    shim.write(NAME, b"resnet")
    assert shim.call("nn_load_by_name", NAME, 6, GRAPH_OUT) == NNErrno.NOT_FOUND
    assert b"no model named 'resnet' (known: " in shim.stderr
    shim.write(NAME, b"\xff\xfe")
    assert shim.call("nn_load_by_name", NAME, 2, GRAPH_OUT) == NNErrno.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "call",
    [
        ("nn_load_by_name", BAD, 8, GRAPH_OUT),  # name outside memory
        ("nn_load_by_name", NAME, 0x7FFFFFFF, GRAPH_OUT),  # name length past the end
        ("nn_load_by_name", NAME, 18, BAD),  # out-pointer outside memory
        ("nn_load", BAD, 1, 1, 0, GRAPH_OUT),  # builder array outside memory
        ("nn_load", 0x1000, 0x20000000, 1, 0, GRAPH_OUT),  # absurd builder count
        ("nn_load_by_name_with_config", NAME, 18, BAD, 4, GRAPH_OUT),  # config outside memory
        ("nn_init_execution_context", 0, -1),  # out-pointer 0xFFFFFFFF
    ],
)
def test_bad_pointers_are_invalid_argument(shim: Session, call: tuple[object, ...]) -> None:
    shim.write(NAME, MODEL.encode())
    name, *args = call
    assert shim.call(str(name), *args) == NNErrno.INVALID_ARGUMENT  # type: ignore[arg-type]
    assert shim.stderr.endswith(b"(invalid_argument)\n")


def test_bad_tensor_pointers(shim: Session, chelsea: bytes) -> None:
    ctx = new_context(shim, load_named(shim))
    assert shim.call("nn_set_input", ctx, 0, BAD) == NNErrno.INVALID_ARGUMENT
    put_tensor(shim, chelsea, dims_ptr=BAD)
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.INVALID_ARGUMENT
    put_tensor(shim, chelsea, data_ptr=BAD)
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.INVALID_ARGUMENT
    put_tensor(shim, chelsea)
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert shim.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert shim.call("nn_get_output", ctx, 0, BAD, OUT_BYTES, WRITTEN) == NNErrno.INVALID_ARGUMENT
    assert shim.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, BAD) == NNErrno.INVALID_ARGUMENT
    # The host survived every one of them and still infers.
    assert int(infer(shim, chelsea).argmax()) == 282


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"data_len": 602108}, b"tensor data is 602108 bytes"),
        ({"dims": (1, 3, 224, 223)}, b"need 599424"),
        ({"dims": (1, 3, 0, 224)}, b"contain 0"),
        ({"dims": (1,) * 9}, b"9 dimensions"),
        ({"ttype": 9}, b"unknown tensor type 9"),
        ({"dims": (3, 224, 224, 1)}, b"cannot take inputs"),
    ],
)
def test_tensor_checks(
    shim: Session, chelsea: bytes, tensor: dict[str, object], message: bytes
) -> None:
    ctx = new_context(shim, load_named(shim))
    put_tensor(shim, chelsea, **tensor)  # type: ignore[arg-type]
    errno = shim.call("nn_set_input", ctx, 0, TENSOR)
    if errno == NNErrno.SUCCESS:  # shape errors the model can only find when compiling
        errno = shim.call("nn_compute", ctx)
    assert errno == NNErrno.INVALID_ARGUMENT
    assert message in shim.stderr


def test_rank_mismatch_is_rejected_at_set_input(shim: Session, chelsea: bytes) -> None:
    ctx = new_context(shim, load_named(shim))
    put_tensor(shim, chelsea, dims=(3, 224, 224))
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.INVALID_ARGUMENT
    assert b"the model expects 4" in shim.stderr


def test_order_and_index_errors(shim: Session, chelsea: bytes) -> None:
    ctx = new_context(shim, load_named(shim))
    assert shim.call("nn_compute", ctx) == NNErrno.INVALID_ARGUMENT
    assert b"compute before set_input" in shim.stderr
    assert (
        shim.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.INVALID_ARGUMENT
    )
    assert b"get_output before compute" in shim.stderr
    put_tensor(shim, chelsea)
    assert shim.call("nn_set_input", ctx, 1, TENSOR) == NNErrno.INVALID_ARGUMENT
    assert b"input index 1 is out of range" in shim.stderr
    assert shim.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert shim.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert (
        shim.call("nn_get_output", ctx, 3, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.INVALID_ARGUMENT
    )
    assert shim.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES - 1, WRITTEN) == NNErrno.TOO_LARGE
    assert b"output 0 is 4000 bytes; the guest buffer holds 3999" in shim.stderr
    assert shim.call("nn_compute", 7) == NNErrno.INVALID_ARGUMENT
    assert shim.call("nn_init_execution_context", 5, CTX_OUT) == NNErrno.INVALID_ARGUMENT


def test_missing_memory(runtime: Runtime, models_dir: Path) -> None:
    s = runtime.session(RunSpec(wasm=wat("no_memory"), models_dir=models_dir))
    assert s.call("try_load") == NNErrno.MISSING_MEMORY


def test_config_json(shim: Session) -> None:
    shim.write(NAME, MODEL.encode())
    for config, errno in [
        (b"{not json", NNErrno.INVALID_ARGUMENT),
        (b"[1]", NNErrno.INVALID_ARGUMENT),
        (b'{"gpu_layers": 3}', NNErrno.INVALID_ARGUMENT),
        (b'{"target": "fpga"}', NNErrno.INVALID_ARGUMENT),
        (json.dumps({"target": "cpu", "PERFORMANCE_HINT": "LATENCY"}).encode(), NNErrno.SUCCESS),
    ]:
        shim.write(0x1000, config)
        got = shim.call(
            "nn_load_by_name_with_config", NAME, len(MODEL), 0x1000, len(config), GRAPH_OUT
        )
        assert got == errno, config


def test_target_without_device(shim: Session, models_dir: Path, runtime: Runtime) -> None:
    if "GPU" in runtime.backend.devices:
        pytest.skip("this host has an OpenVINO GPU device")
    config = b'{"target": "gpu"}'
    shim.write(NAME, MODEL.encode())
    shim.write(0x1000, config)
    errno = shim.call(
        "nn_load_by_name_with_config", NAME, len(MODEL), 0x1000, len(config), GRAPH_OUT
    )
    assert errno == NNErrno.UNSUPPORTED_OPERATION
    assert b"execution target gpu needs an OpenVINO GPU device; this host has: CPU" in shim.stderr


def test_target_fallback_when_configured(models_dir: Path, tmp_path: Path, chelsea: bytes) -> None:
    fallback = Runtime(
        RuntimeConfig(cache_dir=tmp_path, inference_precision="f32",
                      target_fallback=ExecutionTarget.CPU)
    )  # fmt: skip
    if "GPU" in fallback.backend.devices:
        pytest.skip("this host has an OpenVINO GPU device")
    s = fallback.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))
    config = b'{"target": "gpu"}'
    s.write(NAME, MODEL.encode())
    s.write(0x1000, config)
    errno = s.call("nn_load_by_name_with_config", NAME, len(MODEL), 0x1000, len(config), GRAPH_OUT)
    assert errno == NNErrno.SUCCESS
    assert b"falling back to cpu as configured" in s.stderr


def test_batch_of_eight_reshapes(shim: Session, chelsea: bytes) -> None:
    got = infer(shim, chelsea * 8, dims=(8, 3, 224, 224))
    assert got.size == 8000
    assert [int(row.argmax()) for row in got.reshape(8, 1000)] == [282] * 8


def test_u8_input_is_converted(shim: Session) -> None:
    image = np.full((1, 3, 224, 224), 127, dtype=np.uint8).tobytes()
    assert infer(shim, image, ttype=3).size == 1000
