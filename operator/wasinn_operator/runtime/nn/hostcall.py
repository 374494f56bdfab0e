"""Fast host functions: wasmtime's unchecked callbacks, in C (`_hostcall.c`, `_nncache.c`).

`Linker.define_func` converts every argument through a `Val` and wraps the caller, ~15-40 us per
call, and even a ctypes callback costs a few microseconds: more than a whole inference's host
work on a small model, and a guest makes three calls per inference. The C trampoline hands a
host function its caller's linear memory and i32 arguments directly, and answers wasi-nn's
repeated calls itself (`_hostcall.NNCache`). It reaches wasmtime's C API through wasmtime-py's
private `_ffi` bindings; pyproject pins wasmtime to one major version, `configure` checks the
layouts it relies on, and the runtime tests exercise every function through it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func

from ..deadline import HostTrapError
from . import _hostcall

# The caller's exported linear memory, looked up once per store: `base` (its host address),
# `size` (a lower bound: memory only grows) and `grown()` (re-reads the size). The engine never
# moves linear memory (`memory_may_move = False`), so `base` holds for the store's life.
RawMemory = _hostcall.Memory
NNCache = _hostcall.NNCache

# A host function gets the guest's memory (None if the module exports none) and its i32
# arguments, and returns its i32 result. It must not raise: see `define`.
RawHostFn = Callable[..., int]

# What `define` may answer in C (a wasi-nn function with its `NNCache`), or GENERIC.
GENERIC = _hostcall.GENERIC
SET_INPUT = _hostcall.SET_INPUT
COMPUTE = _hostcall.COMPUTE
GET_OUTPUT = _hostcall.GET_OUTPUT


def _address(fn: Any) -> int:
    return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)


_hostcall.configure(
    caller_context=_address(ffi.dll.wasmtime_caller_context),
    caller_export_get=_address(ffi.dll.wasmtime_caller_export_get),
    memory_data=_address(ffi.dll.wasmtime_memory_data),
    memory_data_size=_address(ffi.dll.wasmtime_memory_data_size),
    trap_new=_address(ffi.dll.wasmtime_trap_new),
    extern_size=ctypes.sizeof(ffi.wasmtime_extern_t),
    extern_of=ffi.wasmtime_extern_t.of.offset,
    extern_kind_memory=int(ffi.WASMTIME_EXTERN_MEMORY.value),
    raw_size=ctypes.sizeof(ffi.wasmtime_val_raw_t),
    host_trap_error=HostTrapError,
    func_module=_func,
)
_TRAMPOLINE = ffi.wasmtime_func_unchecked_callback_t(_hostcall.TRAMPOLINE)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_hostcall.FINALIZER)


def define(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    arity: int,
    fn: RawHostFn,
    memory: RawMemory,
    kind: int = GENERIC,
    cache: NNCache | None = None,
) -> None:
    """Define `module.name`, taking `arity` i32s and returning one i32, in `linker`.

    `fn(memory, *args)` gets the bound `RawMemory` of the caller's `memory` export (None if
    there is none; functions of one instance may share a `RawMemory`) and must bounds-check every
    pointer itself. It should not raise, except `HostTrapError` to end the run with a trap (any
    other exception becomes a trap too, re-raised by wasmtime-py). A wasi-nn `kind` tries
    `cache` first. wasmtime keeps `fn` until it drops the function (linker and stores gone).
    """
    ty = wasmtime.FuncType([wasmtime.ValType.i32()] * arity, [wasmtime.ValType.i32()])
    env = _hostcall.new_env(fn, arity, kind, memory, cache)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        module_bytes,
        len(module_bytes),
        name_bytes,
        len(name_bytes),
        ty.ptr(),
        _TRAMPOLINE,
        env,
        _FINALIZER,
    )
    if error:
        _hostcall.free_env(env)
        raise wasmtime.WasmtimeError._from_ptr(error)
