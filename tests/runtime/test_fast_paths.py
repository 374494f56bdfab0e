"""The shortcuts of the wasi-nn host stay exact: input bindings reused across computes, memory
read fresh after growth, named models imported from the blob cache by a new engine."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from wasinn_operator.runtime import NNErrno, RunSpec, Runtime, RuntimeConfig, Session
from wasinn_operator.runtime.deadline import Deadline
from wasinn_operator.runtime.nn.abi import TensorType
from wasinn_operator.runtime.nn.blobs import file_identity
from wasinn_operator.runtime.nn.budget import Budget, GraphLimits
from wasinn_operator.runtime.nn.context import ExecutionContext, InputTensor
from wasinn_operator.runtime.nn.graph import Graph

from .conftest import native_outputs, wat
from .test_nn_abi import DATA, DIMS, MODEL, OUT_BYTES, OUTPUT, TENSOR, WRITTEN, put_tensor, u32

pytestmark = pytest.mark.runtime

NAME, GRAPH_OUT, CTX_OUT = 0x100, 0x200, 0x204


@pytest.fixture(scope="module")
def images(models_dir: Path) -> list[bytes]:
    tensors = sorted((models_dir / MODEL / "tensors").glob("*.f32"))[:2]
    assert len(tensors) == 2, "needs two example tensors"
    return [t.read_bytes() for t in tensors]


def native(models_dir: Path, data: bytes) -> np.ndarray:
    array = np.frombuffer(data, dtype=np.float32).reshape(1, 3, 224, 224)
    return native_outputs(models_dir / MODEL / "model.xml", array, "f32")[0].reshape(-1)


def context(s: Session) -> int:
    s.write(NAME, MODEL.encode())
    assert s.call("nn_load_by_name", NAME, len(MODEL), GRAPH_OUT) == NNErrno.SUCCESS
    assert s.call("nn_init_execution_context", u32(s, GRAPH_OUT), CTX_OUT) == NNErrno.SUCCESS
    return u32(s, CTX_OUT)


def run(s: Session, ctx: int, out: int = OUTPUT) -> np.ndarray:
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, out, OUT_BYTES, WRITTEN) == NNErrno.SUCCESS
    assert u32(s, WRITTEN) == OUT_BYTES
    return np.frombuffer(s.read(out, OUT_BYTES), dtype=np.float32)


def session(runtime: Runtime, models_dir: Path) -> Session:
    return runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))


def looping(runtime: Runtime, models_dir: Path, image: bytes) -> tuple[Session, int]:
    """A session and context whose inference loop ran twice: every call of it is now a
    remembered repeat (answered by the C host)."""
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, image)
    run(s, ctx)
    run(s, ctx)
    return s, ctx


def test_same_buffer_is_read_afresh_at_each_compute(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, images[0])
    first = run(s, ctx)
    s.write(DATA, images[1])  # same record, same buffer, new contents
    second = run(s, ctx)
    np.testing.assert_array_equal(first, native(models_dir, images[0]))
    np.testing.assert_array_equal(second, native(models_dir, images[1]))


def test_another_buffer_rebinds(runtime: Runtime, models_dir: Path, images: list[bytes]) -> None:
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, images[0])
    run(s, ctx)
    other = DATA + 0x100000
    s.write(other, images[1])
    s.write(TENSOR + 12, struct.pack("<I", other))  # data_ptr of the tensor record
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[1]))
    put_tensor(s, images[0])
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[0]))


def test_unaligned_input_is_a_private_copy(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, images[0], data_ptr=DATA + 0x40001)
    s.write(DATA + 0x40001, images[0])
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    s.write(DATA + 0x40001, images[1])  # after set_input: the copy was taken already
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.SUCCESS
    got = np.frombuffer(s.read(OUTPUT, OUT_BYTES), dtype=np.float32)
    np.testing.assert_array_equal(got, native(models_dir, images[0]))


def test_memory_grown_between_calls(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, images[0])
    size = s.memory.data_len(s.store)
    assert s.call("nn_get_output", ctx, 0, size, OUT_BYTES, WRITTEN) == NNErrno.INVALID_ARGUMENT
    s.memory.grow(s.store, 1)  # the output pointer below is valid only after the growth
    np.testing.assert_array_equal(run(s, ctx, out=size), native(models_dir, images[0]))


def test_new_engine_imports_the_named_blob(
    models_dir: Path, tmp_path: Path, images: list[bytes]
) -> None:
    results = []
    for _ in range(2):  # compile and export, then a new engine imports
        engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
        s = session(engine, models_dir)
        ctx = context(s)
        put_tensor(s, images[0])
        results.append(run(s, ctx))
    blobs = list((tmp_path / "openvino").glob("*.blob"))
    assert len(blobs) == 1
    for got in results:
        np.testing.assert_array_equal(got, native(models_dir, images[0]))
    # A graph imported from a blob still reads its model for a batch variant.
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
    s = session(engine, models_dir)
    ctx = context(s)
    put_tensor(s, images[0] * 8, dims=(8, 3, 224, 224))
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, 8 * OUT_BYTES, WRITTEN) == NNErrno.SUCCESS
    batch = np.frombuffer(s.read(OUTPUT, 8 * OUT_BYTES), dtype=np.float32).reshape(8, 1000)
    assert [int(row.argmax()) for row in batch] == [int(results[0].argmax())] * 8


def test_damaged_blob_is_recompiled(models_dir: Path, tmp_path: Path, images: list[bytes]) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
    context(session(engine, models_dir))
    (blob,) = (tmp_path / "openvino").glob("*.blob")
    blob.write_bytes(b"not a compiled model")
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
    s = session(engine, models_dir)
    ctx = context(s)
    put_tensor(s, images[0])
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[0]))
    assert blob.stat().st_size > 1000  # rewritten by the recompile


def test_blob_key_follows_the_model_files(models_dir: Path, tmp_path: Path) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path))
    files = []
    for name in ("model.xml", "model.bin"):
        copy = tmp_path / name
        copy.write_bytes((models_dir / MODEL / name).read_bytes())
        files.append(copy)
    blobs, core = engine.backend.blobs, engine.backend.core

    def key(props: dict[str, str]) -> bytes:
        return blobs.identity(core, "CPU", props, file_identity(files))

    assert key({}) == key({})
    assert key({"INFERENCE_PRECISION_HINT": "f32"}) != key({})
    before = key({})
    files[1].write_bytes(files[1].read_bytes() + b"\0")  # new weights: size and mtime change
    assert key({}) != before


def test_repeated_output_call_is_checked_again_when_it_changes(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s, ctx = looping(runtime, models_dir, images[0])
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    small = OUT_BYTES - 4  # same pointers, a smaller buffer: refused, not overrun
    assert s.call("nn_get_output", ctx, 0, OUTPUT, small, WRITTEN) == NNErrno.TOO_LARGE


def test_batch_size_changes_between_computes(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s = session(runtime, models_dir)
    ctx = context(s)
    put_tensor(s, images[0])
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[0]))
    put_tensor(s, images[0] + images[1], dims=(2, 3, 224, 224))
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    both, out_ptr = 2 * OUT_BYTES, 0x200000  # past the two images
    assert s.call("nn_get_output", ctx, 0, out_ptr, both, WRITTEN) == NNErrno.SUCCESS
    assert u32(s, WRITTEN) == both
    out = np.frombuffer(s.read(out_ptr, both), dtype=np.float32)
    np.testing.assert_allclose(out[: OUT_BYTES // 4], native(models_dir, images[0]), atol=1e-5)
    np.testing.assert_allclose(out[OUT_BYTES // 4 :], native(models_dir, images[1]), atol=1e-5)
    put_tensor(s, images[0])  # back to one image: the first request again
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[0]))


def test_a_repeated_set_input_makes_the_outputs_stale(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s, ctx = looping(runtime, models_dir, images[0])
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.INVALID_ARGUMENT
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, OUT_BYTES, WRITTEN) == NNErrno.SUCCESS


def test_a_record_changed_in_place_is_checked_again(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s, ctx = looping(runtime, models_dir, images[0])
    s.write(DIMS + 12, struct.pack("<I", 112))  # the dimensions, not the record: 1x3x224x112
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.INVALID_ARGUMENT
    put_tensor(s, images[0])
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[0]))
    s.write(TENSOR + 16, struct.pack("<I", 12))  # data_len in the record
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.INVALID_ARGUMENT
    assert s.call("nn_set_input", ctx, 0, 0xFFFFFFF0) == NNErrno.INVALID_ARGUMENT
    put_tensor(s, images[1])
    np.testing.assert_array_equal(run(s, ctx), native(models_dir, images[1]))


def test_contexts_keep_their_own_inputs_and_outputs(
    runtime: Runtime, models_dir: Path, images: list[bytes]
) -> None:
    s = session(runtime, models_dir)
    first, second = context(s), context(s)
    put_tensor(s, images[0])
    other_tensor, other_data, other_output = TENSOR + 0x20, 0x200000, OUTPUT + 0x1000
    s.write(other_data, images[1])
    s.write(other_tensor, s.read(TENSOR, 12) + struct.pack("<II", other_data, len(images[1])))
    expected = {first: native(models_dir, images[0]), second: native(models_dir, images[1])}
    calls = {first: (TENSOR, OUTPUT), second: (other_tensor, other_output)}
    for order in ([first, second], [first, second], [second, first]):
        for ctx in order:
            assert s.call("nn_set_input", ctx, 0, calls[ctx][0]) == NNErrno.SUCCESS
        for ctx in order:
            assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
        for ctx in reversed(order):
            out = calls[ctx][1]
            assert s.call("nn_get_output", ctx, 0, out, OUT_BYTES, WRITTEN) == NNErrno.SUCCESS
            got = np.frombuffer(s.read(out, OUT_BYTES), dtype=np.float32)
            np.testing.assert_array_equal(got, expected[ctx])


def nonzero_model(tmp_path: Path) -> tuple[bytes, bytes]:
    """IR of a model whose output shape depends on its input's values: the indices of the
    non-zero elements of an f32[4], as i32 (a data-dependent dynamic output)."""
    data = ops.parameter([4], ov.Type.f32, name="x")
    model = ov.Model([ops.non_zero(data, "i32")], [data], "nonzero")
    ov.save_model(model, tmp_path / "nonzero.xml", compress_to_fp16=False)
    return (tmp_path / "nonzero.xml").read_bytes(), (tmp_path / "nonzero.bin").read_bytes()


def load_ir(s: Session, xml: bytes, weights: bytes) -> int:
    """An execution context of an OpenVINO IR loaded by bytes (`load`)."""
    base = 0x200000
    s.write(base, xml)
    s.write(base + len(xml), weights)
    s.write(0x1000, struct.pack("<4I", base, len(xml), base + len(xml), len(weights)))
    assert s.call("nn_load", 0x1000, 2, 0, 0, GRAPH_OUT) == NNErrno.SUCCESS
    assert s.call("nn_init_execution_context", u32(s, GRAPH_OUT), CTX_OUT) == NNErrno.SUCCESS
    return u32(s, CTX_OUT)


def test_a_dynamic_output_that_changes_shape_stays_exact(
    runtime: Runtime, models_dir: Path, tmp_path: Path
) -> None:
    """A dynamic output is written into a buffer of the host's once its shape is known; when
    the shape changes (smaller, then larger than that buffer) every answer is still exact."""
    s = session(runtime, models_dir)
    ctx = load_ir(s, *nonzero_model(tmp_path))
    s.write(TENSOR, struct.pack("<IIB3xII", DIMS, 1, 1, DATA, 16))
    s.write(DIMS, struct.pack("<I", 4))
    for values in ([0, 5, 0, 7], [0, 5, 0, 7], [0, 5, 0, 7], [1, 0, 0, 0], [1, 2, 3, 4],
                   [1, 2, 3, 4], [0, 0, 9, 0], [3, 0, 3, 0]):  # fmt: skip
        s.write(DATA, struct.pack("<4f", *values))
        assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
        assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
        expected = [i for i, v in enumerate(values) if v]
        for out in (OUTPUT, OUTPUT + 64):  # asked twice: the same answer
            assert s.call("nn_get_output", ctx, 0, out, 64, WRITTEN) == NNErrno.SUCCESS
            assert u32(s, WRITTEN) == 4 * len(expected), values
            got = struct.unpack(f"<{len(expected)}i", s.read(out, 4 * len(expected)))
            assert list(got) == expected, values


def test_a_kept_output_reports_the_shape_of_the_last_compute() -> None:
    """An output reshaped by its input's values at the same byte size keeps its buffer; its
    shape (what the component interface reports) is the last compute's."""
    x = ops.parameter([4], ov.Type.f32, name="x")
    spec = ops.parameter([2], ov.Type.i64, name="spec")
    model = ov.Model([ops.reshape(x, spec, special_zero=False)], [x, spec], "reshape")
    core = ov.Core()
    graph = Graph(core.compile_model(model, "CPU"), lambda: model, core, "CPU", {})
    context = ExecutionContext(graph, Budget(GraphLimits()), Deadline(None))
    values = np.arange(4, dtype=np.float32)
    context.set_input(0, InputTensor((4,), TensorType.F32, values))
    for shape in ([1, 4], [1, 4], [1, 4], [4, 1], [2, 2], [2, 2]):
        target = np.array(shape, dtype=np.int64)
        context.set_input(1, InputTensor((2,), TensorType.I64, target))
        context.compute()
        assert context.output_shape(0) == shape
        np.testing.assert_array_equal(context.output(0).reshape(-1), values)
