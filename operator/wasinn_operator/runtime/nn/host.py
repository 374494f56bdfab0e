"""The host side of `wasi_ephemeral_nn` for one run: handles, argument decoding, errnos.

Each function decodes and checks guest arguments, calls the OpenVINO backend, and maps every
failure to the precise `nn_errno` with a message on the run's stderr. Nothing a guest passes can
raise out of a host function: unexpected exceptions become `runtime_error`.

Inputs are not copied: `set_input` records a view of guest memory and OpenVINO reads it during
`compute`. This is safe because the engine never moves linear memory (`memory_may_move` off),
the views live no longer than the run, and the guest is blocked inside `compute` while OpenVINO
reads. As with OpenVINO's own shared-memory tensors, the data read is what the buffer holds
when `compute` is called; a guest passing the same buffer again keeps its binding.

The functions are raw wasmtime callbacks (`hostcall`): a few microseconds per call instead of
wasmtime-py's generic trampoline, which cost more than the rest of an inference's host work.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import wasmtime

from ..deadline import Deadline, HostTrapError
from . import hostcall
from .abi import (
    BUILDER_ENTRY_SIZE,
    NUMPY_DTYPES,
    TENSOR_RECORD_SIZE,
    ExecutionTarget,
    GraphEncoding,
    GuestMemory,
    NNErrno,
    NNError,
    TensorType,
)
from .budget import Budget, GraphLimits
from .graph import ExecutionContext, Graph, InputTensor
from .models import NamedModel
from .openvino import Log, OpenVINOBackend

MODULE = "wasi_ephemeral_nn"
MAX_BUILDERS = 16
MAX_RANK = 8
TARGET_NAMES = {
    "cpu": ExecutionTarget.CPU,
    "gpu": ExecutionTarget.GPU,
    "tpu": ExecutionTarget.TPU,
    "npu": ExecutionTarget.TPU,
    "auto": ExecutionTarget.AUTO,
}
HostFn = Callable[..., None]
OutputSeen = tuple[npt.NDArray[Any], tuple[int, int, int, int], int, int]


def _enum(cls: type[Any], value: int, errno: NNErrno, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise NNError(errno, f"unknown {what} {value}") from None


class NNHost:
    """Per-run wasi-nn state: the guest's graphs and execution contexts, and their budget."""

    def __init__(
        self,
        backend: OpenVINOBackend,
        models: dict[str, NamedModel],
        log: Log,
        named_target: ExecutionTarget = ExecutionTarget.CPU,
        limits: GraphLimits | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        self._backend = backend
        self._models = models
        self._log = log
        self._named_target = named_target
        self.budget = Budget(limits or GraphLimits())
        self.missing_model: str | None = None  # a name the guest asked for and no model has
        self._deadline = deadline or Deadline(None)
        self._graphs: list[Graph] = []
        self._contexts: list[ExecutionContext] = []
        # The last validated set_input per (context, index) and get_output per context: a
        # guest's inference loop repeats the same call, which then skips decoding and checks
        # (the host's work right after an inference runs slow, beside OpenVINO's threads).
        self._inputs_seen: dict[tuple[int, int], tuple[tuple[bytes, bytes], InputTensor]] = {}
        # get_output: (the output array, the call's arguments, its address, its size).
        self._outputs_seen: dict[int, OutputSeen | None] = {}

    def define(self, linker: wasmtime.Linker) -> None:
        """Define every function of the module in `linker`."""
        functions: dict[str, tuple[HostFn, int]] = {
            "load": (self.load, 5),
            "load_by_name": (self.load_by_name, 3),
            "load_by_name_with_config": (self.load_by_name_with_config, 5),
            "init_execution_context": (self.init_execution_context, 2),
            "set_input": (self.set_input, 3),
            "compute": (self.compute, 1),
            "get_output": (self.get_output, 5),
        }
        memory = hostcall.RawMemory()
        for name, (fn, arity) in functions.items():
            hostcall.define(linker, MODULE, name, arity, self._guarded(name, fn), memory)

    def _guarded(self, name: str, fn: HostFn) -> Callable[..., int]:
        def call(memory: hostcall.RawMemory | None, *args: int) -> int:
            try:
                if memory is None:
                    raise NNError(
                        NNErrno.MISSING_MEMORY, "the module exports no linear memory 'memory'"
                    )
                fn(GuestMemory(memory.base, memory.size, memory.grown), *args)
            except NNError as exc:
                self._log(f"wasi-nn: {name}: {exc} ({exc.errno.name.lower()})")
                return int(exc.errno)
            except HostTrapError:
                raise  # ends the run (its deadline passed)
            except Exception as exc:  # a guest must never crash the host
                self._log(f"wasi-nn: {name}: internal error: {exc!r} (runtime_error)")
                return int(NNErrno.RUNTIME_ERROR)
            return 0

        return call

    # -- loading -----------------------------------------------------------------------------

    def load(
        self, mem: GuestMemory, builders_ptr: int, builders_len: int, enc: int, tgt: int, out: int
    ) -> None:
        """`load`: a graph from builder buffers in guest memory."""
        mem.check(out, 4, "graph out-pointer")
        encoding = _enum(GraphEncoding, enc, NNErrno.INVALID_ENCODING, "graph encoding")
        target = _enum(ExecutionTarget, tgt, NNErrno.INVALID_ARGUMENT, "execution target")
        count = builders_len & 0xFFFFFFFF
        if not 1 <= count <= MAX_BUILDERS:
            raise NNError(
                NNErrno.INVALID_ARGUMENT, f"{count} graph builders (expected 1 to {MAX_BUILDERS})"
            )
        entries = mem.read_u32s(builders_ptr, count * BUILDER_ENTRY_SIZE // 4, "graph builders")
        self._check_graph_count()
        # Sizes first: an oversized load is refused before a byte of it is read.
        self.budget.check_builders(sum(entries[1::2]))
        builders = [
            mem.view(entries[2 * i], entries[2 * i + 1], f"graph builder {i}") for i in range(count)
        ]
        self._deadline.check("load")  # compiling cannot be interrupted: do not start late
        graph = self._backend.load(builders, encoding, target, self._log, self.budget)
        self._store_graph(mem, graph, out)

    def load_by_name(self, mem: GuestMemory, name_ptr: int, name_len: int, out: int) -> None:
        """`load_by_name`: a preloaded named model."""
        self._load_named(mem, name_ptr, name_len, None, out)

    def load_by_name_with_config(
        self,
        mem: GuestMemory,
        name_ptr: int,
        name_len: int,
        config_ptr: int,
        config_len: int,
        out: int,
    ) -> None:
        """WasmEdge's `load_by_name_with_config`: a named model with a JSON config."""
        raw = mem.read(config_ptr, config_len, "config")
        self._load_named(mem, name_ptr, name_len, raw, out)

    def _load_named(
        self, mem: GuestMemory, name_ptr: int, name_len: int, raw_config: bytes | None, out: int
    ) -> None:
        mem.check(out, 4, "graph out-pointer")
        try:
            name = mem.read(name_ptr, name_len, "model name").decode("utf-8")
        except UnicodeDecodeError:
            raise NNError(NNErrno.INVALID_ARGUMENT, "model name is not UTF-8") from None
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            self.missing_model = name
            raise NNError(NNErrno.NOT_FOUND, f"no model named {name!r} (known: {known})")
        target, extra = self._named_target, dict[str, Any]()
        if raw_config:
            target, extra = _parse_config(raw_config, target)
        self._check_graph_count()
        self._deadline.check("load_by_name")
        graph = self._backend.load_named(model, target, self._log, self.budget, extra)
        self._store_graph(mem, graph, out)

    def _check_graph_count(self) -> None:
        limit = self.budget.limits.max_graphs
        if len(self._graphs) >= limit:
            raise NNError(NNErrno.BUSY, f"a run may load at most {limit} graphs (max_graphs)")

    def _store_graph(self, mem: GuestMemory, graph: Graph, out: int) -> None:
        self._graphs.append(graph)
        mem.write_u32(out, len(self._graphs) - 1, "graph out-pointer")

    # -- execution ---------------------------------------------------------------------------

    def init_execution_context(self, mem: GuestMemory, graph: int, out: int) -> None:
        """`init_execution_context`: a new context on a loaded graph."""
        mem.check(out, 4, "context out-pointer")
        handle = graph & 0xFFFFFFFF
        if handle >= len(self._graphs):
            raise NNError(NNErrno.INVALID_ARGUMENT, f"unknown graph handle {handle}")
        limit = self.budget.limits.max_contexts
        if len(self._contexts) >= limit:
            raise NNError(
                NNErrno.BUSY, f"a run may create at most {limit} execution contexts (max_contexts)"
            )
        self._contexts.append(ExecutionContext(self._graphs[handle], self.budget, self._deadline))
        mem.write_u32(out, len(self._contexts) - 1, "context out-pointer")

    def _context(self, ctx: int) -> ExecutionContext:
        handle = ctx & 0xFFFFFFFF
        if handle >= len(self._contexts):
            raise NNError(NNErrno.INVALID_ARGUMENT, f"unknown execution context handle {handle}")
        return self._contexts[handle]

    def set_input(self, mem: GuestMemory, ctx: int, index: int, tensor_ptr: int) -> None:
        """`set_input`: record a tensor (20-byte record) as input `index`."""
        context = self._context(ctx)
        record = mem.read(tensor_ptr, TENSOR_RECORD_SIZE, "tensor record")
        dims_ptr, dims_len, type_code, data_ptr, data_len = struct.unpack("<IIB3xII", record)
        fits = 1 <= dims_len <= MAX_RANK
        dims_raw = mem.read(dims_ptr, 4 * dims_len, "tensor dimensions") if fits else b""
        # The same record and dimensions as last time: every check passed then and still holds
        # (linear memory neither moves nor shrinks).
        seen = self._inputs_seen.get((ctx, index))
        if seen is not None and seen[0] == (record, dims_raw):
            context.set_input(index & 0xFFFFFFFF, seen[1])
            return
        ttype = _enum(TensorType, type_code, NNErrno.INVALID_ARGUMENT, "tensor type")
        if not fits:
            raise NNError(
                NNErrno.INVALID_ARGUMENT, f"tensor has {dims_len} dimensions (1 to {MAX_RANK})"
            )
        dims: tuple[int, ...] = struct.unpack(f"<{dims_len}I", dims_raw)
        if 0 in dims:
            raise NNError(NNErrno.INVALID_ARGUMENT, f"tensor dimensions {list(dims)} contain 0")
        dtype = NUMPY_DTYPES[ttype]
        expected = math.prod(dims) * dtype.itemsize
        if expected != data_len:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"tensor data is {data_len} bytes; dimensions {list(dims)} of "
                f"{ttype.name.lower()} need {expected}",
            )
        raw = mem.view(data_ptr, data_len, "tensor data")
        address = mem.address(data_ptr)
        key: tuple[int, int, tuple[int, ...], TensorType] | None = (address, data_len, dims, ttype)
        if address % dtype.itemsize:
            raw, key = raw.copy(), None  # OpenVINO needs aligned elements: an unaligned guest pays
        data = raw.view(dtype).reshape(dims)
        tensor = InputTensor(dims, ttype, data, key)
        context.set_input(index & 0xFFFFFFFF, tensor)
        if key is not None:  # a private copy must be taken afresh every time
            self._inputs_seen[(ctx, index)] = ((record, dims_raw), tensor)

    def compute(self, mem: GuestMemory, ctx: int) -> None:
        """`compute`: run inference."""
        self._context(ctx).compute()

    def get_output(
        self, mem: GuestMemory, ctx: int, index: int, out_ptr: int, out_max: int, written: int
    ) -> None:
        """`get_output`: copy output `index` into the guest's buffer."""
        data = self._context(ctx).output(index & 0xFFFFFFFF)
        call = (index, out_ptr, out_max, written)
        seen = self._outputs_seen.get(ctx)
        if seen is not None and seen[0] is data and seen[1] == call:
            # The same call on the same output array (a static output's buffer is kept): its
            # checks passed then and still hold (memory neither moves nor shrinks).
            address, nbytes = seen[2], seen[3]
        else:
            mem.check(written, 4, "bytes-written out-pointer")
            capacity = out_max & 0xFFFFFFFF
            if data.nbytes > capacity:
                raise NNError(
                    NNErrno.TOO_LARGE,
                    f"output {index} is {data.nbytes} bytes; the guest buffer holds {capacity}",
                )
            contiguous = data.flags.c_contiguous
            if not contiguous:
                data = np.ascontiguousarray(data)
            mem.check(out_ptr, data.nbytes, "output buffer")
            address, nbytes = _address(data), data.nbytes
            # A private contiguous copy is made afresh every time: never remembered.
            self._outputs_seen[ctx] = (data, call, address, nbytes) if contiguous else None
        base = mem.base
        ctypes.memmove(base + (out_ptr & 0xFFFFFFFF), address, nbytes)
        ctypes.c_uint32.from_address(base + (written & 0xFFFFFFFF)).value = nbytes


def _address(array: npt.NDArray[Any]) -> int:
    """The array's data address (`ndarray.ctypes` costs ~40 us per use; this ~1 us)."""
    return int(array.__array_interface__["data"][0])


def _parse_config(raw: bytes, target: ExecutionTarget) -> tuple[ExecutionTarget, dict[str, Any]]:
    """A `load_by_name_with_config` JSON object: `target` plus UPPER_CASE OpenVINO properties."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NNError(NNErrno.INVALID_ARGUMENT, f"config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise NNError(NNErrno.INVALID_ARGUMENT, "config must be a JSON object")
    extra: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("target", "device"):
            if not isinstance(value, str) or value.lower() not in TARGET_NAMES:
                raise NNError(
                    NNErrno.INVALID_ARGUMENT,
                    f"config {key} {value!r} is not one of {', '.join(TARGET_NAMES)}",
                )
            target = TARGET_NAMES[value.lower()]
        elif key.isupper() and isinstance(value, str | int | float | bool):
            extra[key] = str(value) if not isinstance(value, str) else value
        else:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"config key {key!r} is not understood (use 'target' or an OpenVINO property "
                "such as 'PERFORMANCE_HINT')",
            )
    return target, extra
