"""A guest's inference loop is computed by the C host (`_nncache.c`) once Python has run it:
the outputs stay exact, the input is read afresh, an inference that fails or an output that
changes size goes back to Python, and the run's deadline still cancels the inference."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from wasinn_operator.runtime import NNErrno, RunSpec, Runtime, Session
from wasinn_operator.runtime.nn import context as context_module
from wasinn_operator.runtime.nn.host import NNHost

from ..conftest import loop_model
from .conftest import wait_for_lingering, wat
from .test_fast_paths import context, images, load_ir, native, nonzero_model, put_tensor, run
from .test_nn_abi import DATA, DIMS, OUTPUT, TENSOR, WRITTEN, u32

pytestmark = pytest.mark.runtime
__all__ = ["images"]  # a fixture


@pytest.fixture
def computes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The contexts of every compute Python answers (the C host answers the rest)."""
    seen: list[int] = []
    python_compute = NNHost.compute

    def counted(self: NNHost, mem: object, ctx: int) -> None:
        seen.append(ctx)
        python_compute(self, mem, ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(NNHost, "compute", counted)
    yield seen


@pytest.mark.parametrize("timeout", [None, 600.0])
def test_a_loop_reads_its_buffer_afresh_without_python(
    runtime: Runtime, models_dir: Path, images: list[bytes], computes: list[int],
    timeout: float | None,
) -> None:  # fmt: skip
    s = runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir, timeout=timeout))
    ctx = context(s)
    for image in (images[0], images[0], images[1], images[0], images[1]):
        put_tensor(s, image)  # the same buffer, new values: the binding reads it at compute
        np.testing.assert_array_equal(run(s, ctx), native(models_dir, image))
    assert computes == [ctx]  # the first; its repeats were the C host's


def put_nonzero(s: Session, values: list[float]) -> None:
    s.write(DATA, struct.pack("<4f", *values))
    s.write(DIMS, struct.pack("<I", 4))
    s.write(TENSOR, struct.pack("<IIB3xII", DIMS, 1, 1, DATA, 16))


def nonzero(s: Session, ctx: int) -> list[int]:
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
    assert s.call("nn_get_output", ctx, 0, OUTPUT, 64, WRITTEN) == NNErrno.SUCCESS
    return list(struct.unpack(f"<{u32(s, WRITTEN) // 4}i", s.read(OUTPUT, u32(s, WRITTEN))))


def nonzero_loop(runtime: Runtime, models_dir: Path, tmp_path: Path) -> tuple[Session, int]:
    """A NonZero context whose loop ran three times: its output has a buffer of its own, and
    its compute is remembered by the C host."""
    s = runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))
    ctx = load_ir(s, *nonzero_model(tmp_path))
    put_nonzero(s, [0, 5, 0, 7])
    for _ in range(3):
        assert nonzero(s, ctx) == [1, 3]
    return s, ctx


def test_an_output_outgrowing_its_buffer_goes_back_to_python(
    runtime: Runtime, models_dir: Path, tmp_path: Path, computes: list[int]
) -> None:
    """The repeat's inference fails on the buffer the output was given (too small): Python runs
    it again on a request that leaves the output to OpenVINO, and its answer is exact."""
    s, ctx = nonzero_loop(runtime, models_dir, tmp_path)
    repeated = len(computes)
    put_nonzero(s, [1, 2, 3, 4])
    assert nonzero(s, ctx) == [0, 1, 2, 3]
    assert len(computes) == repeated + 1  # the C host's attempt failed: Python's answered
    put_nonzero(s, [0, 0, 9, 0])
    for _ in range(3):
        assert nonzero(s, ctx) == [2]
    assert repeated < 3  # the loop above was repeated in C


def test_an_output_shrinking_in_a_repeat_is_settled(
    runtime: Runtime, models_dir: Path, tmp_path: Path, computes: list[int]
) -> None:
    s, ctx = nonzero_loop(runtime, models_dir, tmp_path)
    repeated = len(computes)
    put_nonzero(s, [1, 0, 0, 0])  # fits the buffer: the C host's inference succeeds
    assert nonzero(s, ctx) == [0]
    assert len(computes) == repeated
    assert nonzero(s, ctx) == [0]


def test_a_repeated_compute_past_the_deadline_ends_the_run(
    runtime: Runtime,
    models_dir: Path,
    tmp_path: Path,
    computes: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context_module, "CANCEL_GRACE_MS", 300)
    s = runtime.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir, timeout=2.0))
    xml = loop_model(tmp_path)
    ctx = load_ir(s, xml.read_bytes(), xml.with_suffix(".bin").read_bytes())
    s.write(DIMS, struct.pack("<II", 1, 4))
    s.write(TENSOR, struct.pack("<IIB3xII", DIMS, 2, 1, DATA, 16))
    for count in (1, 2):
        s.write(DATA, struct.pack("<4f", count, 0, 0, 0))
        assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
        assert s.call("nn_compute", ctx) == NNErrno.SUCCESS
        assert s.call("nn_get_output", ctx, 0, OUTPUT, 16, WRITTEN) == NNErrno.SUCCESS
        assert struct.unpack("<4f", s.read(OUTPUT, 16)) == (2 * count, count, count, count)
    s.write(DATA, struct.pack("<4f", 4_000_000, 0, 0, 0))  # ~1-2 us an iteration here
    assert s.call("nn_set_input", ctx, 0, TENSOR) == NNErrno.SUCCESS
    with pytest.raises(wasmtime.WasmtimeError, match="deadline passed during compute"):
        s.call("nn_compute", ctx)
    assert computes == [ctx]
    wait_for_lingering()  # the Loop runs on past the deadline: not into the next tests
