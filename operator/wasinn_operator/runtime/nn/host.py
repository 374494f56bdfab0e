"""The host side of `wasi_ephemeral_nn` for one run: handles, argument decoding, errnos.

Each function decodes and checks guest arguments, calls the OpenVINO backend, and maps every
failure to the precise `nn_errno` with a message on the run's stderr. Nothing a guest passes can
raise out of a host function: unexpected exceptions become `runtime_error`.

Inputs are not copied: `set_input` records a view of guest memory and OpenVINO reads it during
`compute`. This is safe because the engine never moves linear memory (`memory_may_move` off),
the views live no longer than the run, and the guest is blocked inside `compute` while OpenVINO
reads. As with OpenVINO's own shared-memory tensors, the data read is what the buffer holds
when `compute` is called; a guest passing the same buffer again keeps its binding.

The functions are raw wasmtime callbacks in C (`hostcall`), and a guest's inference loop
repeats the calls of its first inference: once validated, a repeated `set_input`, `compute`
and `get_output` are answered in C from `hostcall.NNCache` (`_nncache.c`), which this host
keeps told what it may answer (`remember_*`, `computed`) and asks whether the outputs are
current (`stale`). The Python work per call cost more than a small model's whole inference.
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
from .context import ExecutionContext, InputTensor
from .graph import Graph
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
U32 = 0xFFFFFFFF


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
        self._memory = hostcall.RawMemory()  # bound to the run's store by each call
        self._cache = hostcall.NNCache(self._memory)

    def define(self, linker: wasmtime.Linker) -> None:
        """Define every function of the module in `linker`."""
        functions: dict[str, tuple[HostFn, int, int]] = {
            "load": (self.load, 5, hostcall.GENERIC),
            "load_by_name": (self.load_by_name, 3, hostcall.GENERIC),
            "load_by_name_with_config": (self.load_by_name_with_config, 5, hostcall.GENERIC),
            "init_execution_context": (self.init_execution_context, 2, hostcall.GENERIC),
            "set_input": (self.set_input, 3, hostcall.SET_INPUT),
            "compute": (self.compute, 1, hostcall.COMPUTE),
            "get_output": (self.get_output, 5, hostcall.GET_OUTPUT),
        }
        for name, (fn, arity, kind) in functions.items():
            guarded = self._guarded(name, fn)
            hostcall.define(linker, MODULE, name, arity, guarded, self._memory, kind, self._cache)

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
        handle = ctx & U32
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
        context.set_input(index & U32, tensor)
        if key is not None:  # a private copy must be taken afresh every time
            self._cache.remember_input(ctx & U32, index & U32, record, dims_raw)

    def compute(self, mem: GuestMemory, ctx: int) -> None:
        """`compute`: run inference."""
        context = self._context(ctx)
        context.compute()
        self._cache.computed(ctx & U32, context.serial)
        self._remember(ctx & U32, context)

    def _remember(self, ctx: int, context: ExecutionContext) -> None:
        """Let the C cache run the context's next compute while its inputs stay as bound."""
        repeat = context.repeat()
        if repeat is not None:
            self._cache.remember_compute(ctx, context.serial, **repeat._asdict())

    def get_output(
        self, mem: GuestMemory, ctx: int, index: int, out_ptr: int, out_max: int, written: int
    ) -> None:
        """`get_output`: copy output `index` into the guest's buffer."""
        context = self._context(ctx)
        if self._cache.stale(ctx & U32):  # a set_input answered in C since the last compute
            raise NNError(NNErrno.INVALID_ARGUMENT, "get_output before compute")
        data = context.output(index & U32)
        mem.check(written, 4, "bytes-written out-pointer")
        capacity = out_max & U32
        if data.nbytes > capacity:
            raise NNError(
                NNErrno.TOO_LARGE,
                f"output {index} is {data.nbytes} bytes; the guest buffer holds {capacity}",
            )
        kept = context.kept_output(index & U32)
        if not data.flags.c_contiguous:
            data, kept = np.ascontiguousarray(data), None  # a private copy, made afresh each time
        mem.check(out_ptr, data.nbytes, "output buffer")
        address, nbytes = _address(data), data.nbytes
        ctypes.memmove(mem.base + (out_ptr & U32), address, nbytes)
        ctypes.c_uint32.from_address(mem.base + (written & U32)).value = nbytes
        if kept is not None:  # the request's own buffer, the same after its next inference
            self._cache.remember_output(
                ctx & U32, index & U32, out_ptr & U32, capacity, written & U32, kept, address,
                nbytes,
            )  # fmt: skip
        self._remember(ctx & U32, context)  # its request may have been given an output buffer


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
