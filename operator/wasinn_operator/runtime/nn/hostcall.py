"""Fast host functions: wasmtime's unchecked callbacks instead of wasmtime-py's trampoline.

`Linker.define_func` converts every argument through a `Val` and wraps the caller, ~15-40 us per
call: more than a whole `set_input`, and a guest makes three such calls per inference. The C
API's unchecked form hands over the raw i32 slots, so a call costs ~2 us. This uses wasmtime-py's
private `_ffi` bindings; pyproject pins wasmtime to one major version, and the runtime tests
exercise every function through it.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func

from ..deadline import HostTrapError

MEMORY_EXPORT = b"memory"

# A host function gets the guest's memory (None if the module exports none) and its i32
# arguments, and returns its i32 result. It must not raise: see `define`.
RawHostFn = Callable[..., int]


class RawMemory:
    """The caller's exported linear memory: looked up once per store.

    The engine never moves linear memory (`memory_may_move = False`), so its base address holds
    for the store's life; its length only grows, so the length read at lookup is a safe bound
    and `grown()` re-reads it when a range falls outside (two FFI calls saved per host call).
    """

    def __init__(self) -> None:
        self._context: int | None = None
        self._raw_context: Any = None
        self._item: Any = None
        self.base = 0
        self.size = 0

    def bind(self, caller: Any) -> RawMemory | None:
        """This memory as of the caller's store, or None if the caller exports none."""
        context = ffi.wasmtime_caller_context(caller)
        address = ctypes.cast(context, ctypes.c_void_p).value
        if address != self._context:  # a memory handle is only valid in its own store
            item = ffi.wasmtime_extern_t()
            found = ffi.wasmtime_caller_export_get(
                caller, MEMORY_EXPORT, len(MEMORY_EXPORT), ctypes.byref(item)
            )
            is_memory = found and int(item.kind) == ffi.WASMTIME_EXTERN_MEMORY.value
            self._item = ctypes.byref(item.of.memory) if is_memory else None
            self._context, self._raw_context = address, context
            if self._item is not None:
                base = ffi.wasmtime_memory_data(context, self._item)
                self.base = ctypes.cast(base, ctypes.c_void_p).value or 0
                self.grown()
        return None if self._item is None else self

    def grown(self) -> int:
        """The memory's current byte length (after a `memory.grow`, larger than `size`)."""
        self.size = int(ffi.wasmtime_memory_data_size(self._raw_context, self._item))
        return self.size


_FUNCS: dict[int, tuple[RawHostFn, int, RawMemory]] = {}
_IDS = itertools.count(1)


@ffi.wasmtime_func_unchecked_callback_t  # type: ignore[untyped-decorator]
def _trampoline(env: int | None, caller: Any, slots: Any, _nslots: int) -> int:
    try:
        fn, arity, memory = _FUNCS[env or 0]
        args = [slots[i].i32 for i in range(arity)]
        slots[0].i32 = fn(memory.bind(caller), *args)
        return 0
    except HostTrapError as exc:  # ends the run; the store's owner knows why (no global state)
        message = str(exc).encode()
        trap = ffi.wasmtime_trap_new(message, len(message))
        return int(ctypes.cast(trap, ctypes.c_void_p).value or 0)
    except BaseException as exc:  # KeyboardInterrupt and the like: re-raised by wasmtime-py
        _func.LAST_EXCEPTION = exc  # type: ignore[assignment]
        message = b"python exception"
        trap = ffi.wasmtime_trap_new(message, len(message))
        return int(ctypes.cast(trap, ctypes.c_void_p).value or 0)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _finalize(env: int | None) -> None:
    _FUNCS.pop(env or 0, None)


def define(
    linker: wasmtime.Linker, module: str, name: str, arity: int, fn: RawHostFn, memory: RawMemory
) -> None:
    """Define `module.name`, taking `arity` i32s and returning one i32, in `linker`.

    `fn(memory, *args)` gets the bound `RawMemory` of the caller's `memory` export (None if
    there is none; functions of one instance may share a `RawMemory`) and must bounds-check every
    pointer itself. It should not raise, except `HostTrapError` to end the run with a trap (any
    other exception becomes a trap too, re-raised by wasmtime-py). The entry lives until
    wasmtime drops the function (linker and stores gone).
    """
    ty = wasmtime.FuncType([wasmtime.ValType.i32()] * arity, [wasmtime.ValType.i32()])
    key = next(_IDS)
    _FUNCS[key] = (fn, arity, memory)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        module_bytes,
        len(module_bytes),
        name_bytes,
        len(name_bytes),
        ty.ptr(),
        _trampoline,
        key,
        _finalize,
    )
    if error:
        _FUNCS.pop(key, None)
        raise wasmtime.WasmtimeError._from_ptr(error)
