"""Component host functions on wasmtime's C API: fast argument and result conversion.

wasmtime-py's `LinkerInstance.add_func` converts every component value through Python objects
one by one: a 600 KB `list<u8>` tensor takes over 3 s. This module registers the callback
directly (`wasmtime_component_linker_instance_add_func`) and reads and writes the C values
itself, a `list<u8>` as one strided numpy copy (~1 ms per 600 KB). What remains is wasmtime's
own dynamic conversion of each list element, about 0.15 us per byte (wasmtime-py offers no
typed host functions for components). Uses wasmtime-py's private `_ffi` bindings, like
`nn/hostcall.py`; pyproject pins wasmtime to one major version and the runtime tests exercise
every function.

A host function gets its arguments as `Val`s and returns its results as `Result` writers. A
value of another kind than the function expects (a component declaring a different type under
the same interface name) raises `ABIError`, which becomes a trap naming the function.
"""

from __future__ import annotations

import binascii
import ctypes
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import LinkerInstance

from ..deadline import HostTrapError

VAL = ffi.wasmtime_component_val_t
VAL_SIZE = ctypes.sizeof(VAL)
PAYLOAD_OFFSET: int = VAL.of.offset
KIND_U8 = ffi.WASMTIME_COMPONENT_U8.value
KIND_U32 = ffi.WASMTIME_COMPONENT_U32.value
KIND_STRING = ffi.WASMTIME_COMPONENT_STRING.value
KIND_LIST = ffi.WASMTIME_COMPONENT_LIST.value
KIND_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE.value
KIND_ENUM = ffi.WASMTIME_COMPONENT_ENUM.value
KIND_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value
KIND_RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE.value


class ABIError(Exception):
    """A component value is not of the kind the host function expects."""


def _expect(val: Any, kind: int, what: str) -> None:
    if val.kind != kind:
        raise ABIError(f"{what}: got a value of kind {val.kind}, expected kind {kind}")


def _name(vec: Any) -> bytes:
    return ctypes.string_at(vec.data, vec.size) if vec.size else b""


def _new_name(data: bytes) -> Any:
    vec = ffi.wasm_byte_vec_t()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data) if data else None
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buf)
    return vec


def _elements(array: Any, size: int) -> npt.NDArray[np.uint8]:
    """The raw bytes of `size` consecutive C values, one row per value."""
    address = ctypes.cast(array, ctypes.c_void_p).value or 0
    if size == 0 or address == 0:
        return np.empty((0, VAL_SIZE), dtype=np.uint8)
    raw = (ctypes.c_uint8 * (size * VAL_SIZE)).from_address(address)
    return np.frombuffer(memoryview(raw), dtype=np.uint8).reshape(size, VAL_SIZE)


class Val:
    """Read access to one argument (or element) of a host call."""

    __slots__ = ("_val",)

    def __init__(self, val: Any) -> None:
        self._val = val

    def u32(self, what: str) -> int:
        _expect(self._val, KIND_U32, what)
        return int(self._val.of.u32)

    def enum(self, what: str) -> str:
        """An enum case's name (as the WIT spells it)."""
        _expect(self._val, KIND_ENUM, what)
        return _name(self._val.of.enumeration).decode()

    def string(self, what: str) -> str:
        _expect(self._val, KIND_STRING, what)
        # The canonical ABI has already checked the encoding.
        return _name(self._val.of.string).decode("utf-8")

    def hex(self, what: str) -> bytes:
        """The bytes a hex string (the bridge's encoding of data) stands for."""
        _expect(self._val, KIND_STRING, what)
        vec = self._val.of.string
        address = ctypes.cast(vec.data, ctypes.c_void_p).value
        if not vec.size or not address:
            return b""
        text = (ctypes.c_char * vec.size).from_address(address)  # decoded in place: no copy
        try:
            return binascii.unhexlify(memoryview(text))
        except binascii.Error as exc:
            raise ABIError(f"{what}: not hex ({exc})") from None

    def byte_list(self, what: str) -> npt.NDArray[np.uint8]:
        """A `list<u8>` as a fresh (aligned, writable) numpy array."""
        _expect(self._val, KIND_LIST, what)
        items = _elements(self._val.of.list.data, self._val.of.list.size)
        if len(items) and not (items[:, 0] == KIND_U8).all():
            raise ABIError(f"{what}: not a list<u8>")
        return items[:, PAYLOAD_OFFSET].copy()

    def u32_list(self, what: str) -> list[int]:
        """A (short) `list<u32>`."""
        _expect(self._val, KIND_LIST, what)
        items = self.items(what)
        return [item.u32(what) for item in items]

    def items(self, what: str) -> list[Val]:
        """The elements of a list (or a tuple's fields)."""
        if self._val.kind not in (KIND_LIST, KIND_TUPLE):
            raise ABIError(f"{what}: got a value of kind {self._val.kind}, expected a list")
        array = self._val.of.list if self._val.kind == KIND_LIST else self._val.of.tuple
        return [Val(array.data[i]) for i in range(array.size)]

    def resource(self, what: str) -> Any:
        """The `wasmtime_component_resource_any_t` pointer of a resource argument."""
        _expect(self._val, KIND_RESOURCE, what)
        return self._val.of.resource


class Result:
    """Write access to the result slot of a host call (or to a nested value)."""

    __slots__ = ("_val",)

    def __init__(self, val: Any) -> None:
        self._val = val

    def u32(self, value: int) -> None:
        self._val.kind = KIND_U32
        self._val.of.u32 = value

    def enum(self, name: str) -> None:
        self._val.kind = KIND_ENUM
        self._val.of.enumeration = _new_name(name.encode())

    def string(self, value: str) -> None:
        self._val.kind = KIND_STRING
        self._val.of.string = _new_name(value.encode("utf-8"))

    def byte_list(self, data: npt.NDArray[np.uint8]) -> None:
        """A `list<u8>` from a contiguous uint8 array, written in two numpy passes."""
        items = self._new_list(len(data))
        rows = _elements(items.data, items.size)
        rows[:, 0] = KIND_U8
        rows[:, PAYLOAD_OFFSET] = data

    def u32_list(self, values: list[int]) -> None:
        items = self._new_list(len(values))
        for i, value in enumerate(values):
            Result(items.data[i]).u32(value)

    def list_of(self, count: int) -> list[Result]:
        """A list of `count` elements, each to be written through its `Result`."""
        items = self._new_list(count)
        return [Result(items.data[i]) for i in range(count)]

    def tuple_of(self, count: int) -> list[Result]:
        """A tuple of `count` fields, each to be written through its `Result`."""
        fields = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(ctypes.byref(fields), count)
        self._val.kind = KIND_TUPLE
        self._val.of.tuple = fields
        return [Result(fields.data[i]) for i in range(count)]

    def resource(self, any_ptr: Any) -> None:
        """Move a `wasmtime_component_resource_any_t` pointer into the slot."""
        self._val.kind = KIND_RESOURCE
        self._val.of.resource = any_ptr

    def result(self, ok: bool, write: Callable[[Result], None] | None) -> None:
        """`result<T, E>`: `write` fills the payload (None for a case without one)."""
        payload = None
        if write is not None:
            slot = VAL()
            write(Result(slot))
            payload = ffi.wasmtime_component_val_new(ctypes.byref(slot))
        self._val.kind = KIND_RESULT
        self._val.of.result.is_ok = ok
        self._val.of.result.val = payload

    def _new_list(self, count: int) -> Any:
        items = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(items), count)
        self._val.kind = KIND_LIST
        self._val.of.list = items
        return items


# A host function: the store context, the arguments, the result slot (None when the function
# has no result).
HostFn = Callable[[Any, list[Val], Result | None], None]

_FUNCS: dict[int, tuple[str, HostFn]] = {}
_IDS = itertools.count(1)


@ffi.wasmtime_component_func_callback_t  # type: ignore[untyped-decorator]
def _trampoline(
    env: int | None, context: Any, _ty: Any, args: Any, nargs: int, results: Any, nresults: int
) -> int:
    name, fn = _FUNCS.get(env or 0, ("?", None))
    try:
        if fn is None:
            raise ABIError("the host function is gone")
        fn(context, [Val(args[i]) for i in range(nargs)], Result(results[0]) if nresults else None)
        return 0
    except BaseException as exc:  # never unwind into wasmtime: a trap naming the function
        message = str(exc) if isinstance(exc, ABIError | HostTrapError) else repr(exc)
        error = WasmtimeError(f"{name}: {message}")
        return int(ctypes.cast(error._consume(), ctypes.c_void_p).value or 0)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _finalize(env: int | None) -> None:
    _FUNCS.pop(env or 0, None)


def add_func(instance: LinkerInstance, name: str, label: str, fn: HostFn) -> None:
    """Define `name` in a component linker instance; `label` names it in trap messages."""
    key = next(_IDS)
    _FUNCS[key] = (label, fn)
    encoded = name.encode()
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(), encoded, len(encoded), _trampoline, key, _finalize
    )
    if error:
        _FUNCS.pop(key, None)
        raise WasmtimeError._from_ptr(error)


def resource_rep(context: Any, any_ptr: Any, type_id: int, what: str) -> int:
    """The host representation of a resource argument of host type `type_id`."""
    host = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)()
    error = ffi.wasmtime_component_resource_any_to_host(context, any_ptr, ctypes.byref(host))
    if error:
        raise ABIError(f"{what}: {WasmtimeError._from_ptr(error)}")
    try:
        if ffi.wasmtime_component_resource_host_type(host) != type_id:
            raise ABIError(f"{what}: a resource of another type")
        return int(ffi.wasmtime_component_resource_host_rep(host))
    finally:
        ffi.wasmtime_component_resource_host_delete(host)


def new_resource(context: Any, rep: int, type_id: int) -> Any:
    """An owned host resource as a `resource_any` pointer, for `Result.resource`."""
    host = ffi.wasmtime_component_resource_host_new(True, rep, type_id)
    try:
        out = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)()
        error = ffi.wasmtime_component_resource_host_to_any(context, host, ctypes.byref(out))
        if error:
            raise WasmtimeError._from_ptr(error)
        return out
    finally:
        ffi.wasmtime_component_resource_host_delete(host)
