"""The preview1 `wasi_ephemeral_nn` ABI: numeric codes, errors and guest-memory access.

Every pointer and length a guest hands the host goes through `GuestMemory`, which masks it to
u32 (host functions get i32 parameters as signed ints) and bounds-checks it against the current
memory size before any raw copy, so a bad pointer becomes `invalid_argument`, never a crash.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from enum import IntEnum

import numpy as np
import numpy.typing as npt

U32_MASK = 0xFFFFFFFF
TENSOR_RECORD_SIZE = 20
BUILDER_ENTRY_SIZE = 8


class NNErrno(IntEnum):
    """`nn_errno` values returned by every wasi-nn function."""

    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8


class GraphEncoding(IntEnum):
    """`graph_encoding` values of the preview1 ABI."""

    OPENVINO = 0
    ONNX = 1
    TENSORFLOW = 2
    PYTORCH = 3
    TENSORFLOWLITE = 4
    AUTODETECT = 5


class ExecutionTarget(IntEnum):
    """`execution_target` values (AUTO is sent by the 0.6 crate and WasmEdge)."""

    CPU = 0
    GPU = 1
    TPU = 2
    AUTO = 3


class TensorType(IntEnum):
    """`tensor_type` values since the 2023-08 ABI."""

    F16 = 0
    F32 = 1
    F64 = 2
    U8 = 3
    I32 = 4
    I64 = 5


NUMPY_DTYPES: dict[TensorType, np.dtype[np.generic]] = {
    TensorType.F16: np.dtype(np.float16),
    TensorType.F32: np.dtype(np.float32),
    TensorType.F64: np.dtype(np.float64),
    TensorType.U8: np.dtype(np.uint8),
    TensorType.I32: np.dtype(np.int32),
    TensorType.I64: np.dtype(np.int64),
}

# Names accepted in `nn-graph=ENCODING::DIR` and model configs.
ENCODING_NAMES: dict[str, GraphEncoding] = {
    "openvino": GraphEncoding.OPENVINO,
    "onnx": GraphEncoding.ONNX,
    "tensorflowlite": GraphEncoding.TENSORFLOWLITE,
    "tflite": GraphEncoding.TENSORFLOWLITE,
    "autodetect": GraphEncoding.AUTODETECT,
}


class NNError(Exception):
    """A wasi-nn call failed: `errno` goes to the guest, the message to the task's stderr."""

    def __init__(self, errno: NNErrno, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class GuestMemory:
    """Bounds-checked access to the guest's linear memory as one host call sees it.

    `base` is the host address of guest offset 0 and `size` the memory's current length. Every
    access is checked against `size` first, so the raw copies below never touch host memory
    outside the guest's.
    """

    __slots__ = ("_grown", "base", "size")

    def __init__(self, base: int, size: int, grown: Callable[[], int] | None = None) -> None:
        self.base = base
        self.size = size  # a lower bound when `grown` is given: memory only grows
        self._grown = grown

    def check(self, ptr: int, length: int, what: str) -> tuple[int, int]:
        """Masked `(ptr, length)` if the range lies inside memory, else `invalid_argument`."""
        ptr &= U32_MASK
        length &= U32_MASK
        if ptr + length > self.size and self._grown is not None:
            self.size = self._grown()
        if ptr + length > self.size:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"{what}: range [{ptr:#x}, {ptr + length:#x}) is outside guest memory "
                f"({self.size} bytes)",
            )
        return ptr, length

    def view(self, ptr: int, length: int, what: str) -> npt.NDArray[np.uint8]:
        """A zero-copy uint8 view of guest memory (valid while the memory does not move)."""
        ptr, length = self.check(ptr, length, what)
        if length == 0:
            return np.empty(0, dtype=np.uint8)
        buffer = memoryview((ctypes.c_uint8 * length).from_address(self.base + ptr)).cast("B")
        return np.frombuffer(buffer, np.uint8)

    def address(self, ptr: int) -> int:
        """The host address of guest offset `ptr` (check the range first)."""
        return self.base + (ptr & U32_MASK)

    def read(self, ptr: int, length: int, what: str) -> bytes:
        """A copy of `length` bytes at `ptr`."""
        ptr, length = self.check(ptr, length, what)
        return ctypes.string_at(self.base + ptr, length)

    def read_u32s(self, ptr: int, count: int, what: str) -> tuple[int, ...]:
        """`count` little-endian u32 values at `ptr`."""
        count &= U32_MASK
        if count > U32_MASK // 4:  # more bytes than a wasm32 memory can hold
            raise NNError(NNErrno.INVALID_ARGUMENT, f"{what}: count {count} is impossibly large")
        return struct.unpack(f"<{count}I", self.read(ptr, count * 4, what))

    def write(self, ptr: int, data: bytes, what: str) -> None:
        """Copy `data` into guest memory at `ptr`."""
        ptr, length = self.check(ptr, len(data), what)
        ctypes.memmove(self.base + ptr, data, length)

    def copy_in(self, ptr: int, source: int, length: int, what: str) -> None:
        """Copy `length` bytes from host address `source` (a live buffer) to guest `ptr`."""
        ptr, length = self.check(ptr, length, what)
        ctypes.memmove(self.base + ptr, source, length)

    def write_u32(self, ptr: int, value: int, what: str) -> None:
        """Store a little-endian u32 (a result out-pointer)."""
        ptr, _ = self.check(ptr, 4, what)
        # One ctypes store; wasm32 is little-endian, as is every host OpenVINO runs on.
        ctypes.c_uint32.from_address(self.base + ptr).value = value & U32_MASK
