"""The component bridge's pure parts: which components get wrapped, and staged data."""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime

from wasinn_operator.runtime.component.bridge import wrap
from wasinn_operator.runtime.component.staging import MARKER, Staging
from wasinn_operator.runtime.nn.abi import NNErrno, NNError

pytestmark = pytest.mark.unit


def array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


def test_staged_buffers_replace_the_marker_once() -> None:
    staging = Staging(limit=100)
    staging.push(0, b"ab")
    staging.push(1, b"xyz")
    staging.push(0, b"cd")
    got = staging.take([array(MARKER)])
    assert [g.tobytes() for g in got] == [b"abcd", b"xyz"]
    assert got[0].flags.writeable
    # Emptied: the marker now stands for itself.
    assert staging.take([array(MARKER)])[0].tobytes() == MARKER


def test_other_data_passes_and_empties_the_staging() -> None:
    staging = Staging(limit=100)
    staging.push(0, b"ab")
    assert staging.take([array(b"data")])[0].tobytes() == b"data"
    assert staging.take([array(MARKER)])[0].tobytes() == MARKER


def test_limits_and_numbering() -> None:
    staging = Staging(limit=4)
    staging.push(0, b"abc")
    with pytest.raises(NNError) as too_large:
        staging.push(0, b"de")
    assert too_large.value.errno is NNErrno.TOO_LARGE
    staging.push(1, b"x")
    with pytest.raises(NNError, match="numbered 0 to n-1"):
        staging.take([array(MARKER)])


def test_components_without_wasi_nn_are_not_wrapped() -> None:
    command = wasmtime.wat2wasm("""
        (component
          (core module $m (func (export "run") (result i32) i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $r (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $r)))
    """)
    assert wrap(command) is None
    assert wrap(b"\0asm\x0d\x00\x01\x00\x07\x05garbage") is None
