"""The C trampoline of host functions (`runtime/nn/hostcall.py`, `_hostcall.c`) on real
wasmtime: arguments and results, the caller's memory, traps, and exceptions it must pass on."""

from __future__ import annotations

import ctypes

import pytest
import wasmtime

from wasinn_operator.runtime.deadline import HostTrapError
from wasinn_operator.runtime.nn import hostcall

pytestmark = pytest.mark.runtime

WITH_MEMORY = """(module
  (import "host" "f" (func $f (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "call") (param i32 i32 i32) (result i32)
    (call $f (local.get 0) (local.get 1) (local.get 2)))
  (func (export "grow") (result i32) (memory.grow (i32.const 2))))"""
WITHOUT_MEMORY = """(module
  (import "host" "f" (func $f (param i32 i32 i32) (result i32)))
  (func (export "call") (param i32 i32 i32) (result i32)
    (call $f (local.get 0) (local.get 1) (local.get 2))))"""


def instance(
    text: str, fn: hostcall.RawHostFn, memory: hostcall.RawMemory | None = None
) -> tuple[wasmtime.Store, wasmtime.Instance]:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    hostcall.define(linker, "host", "f", 3, fn, memory or hostcall.RawMemory())
    store = wasmtime.Store(engine)
    return store, linker.instantiate(store, wasmtime.Module(engine, wasmtime.wat2wasm(text)))


def call(store: wasmtime.Store, inst: wasmtime.Instance, *args: int) -> object:
    export = inst.exports(store)["call"]
    assert isinstance(export, wasmtime.Func)
    return export(store, *args)


def test_arguments_result_and_memory() -> None:
    seen: list[tuple[int, int, tuple[int, ...]]] = []

    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        assert memory is not None
        seen.append((memory.base, memory.size, args))
        return args[0] + args[1] - args[2]

    store, inst = instance(WITH_MEMORY, fn)
    assert call(store, inst, 40, 5, -1) == 46  # i32s arrive signed, as wasmtime passes them
    assert call(store, inst, -2, 0, 0) == -2
    base, size, args = seen[0]
    assert base != 0 and size == 65536 and args == (40, 5, -1)
    data = inst.exports(store)["memory"]
    assert isinstance(data, wasmtime.Memory)
    assert ctypes_address(data, store) == base


def ctypes_address(memory: wasmtime.Memory, store: wasmtime.Store) -> int:
    return ctypes.cast(memory.data_ptr(store), ctypes.c_void_p).value or 0


def test_growth_is_seen_through_grown() -> None:
    sizes: list[tuple[int, int]] = []

    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        assert memory is not None
        sizes.append((memory.size, memory.grown()))
        return 0

    store, inst = instance(WITH_MEMORY, fn)
    call(store, inst, 0, 0, 0)
    grow = inst.exports(store)["grow"]
    assert isinstance(grow, wasmtime.Func)
    assert grow(store) == 1
    call(store, inst, 0, 0, 0)
    assert sizes == [(65536, 65536), (65536, 3 * 65536)]


def test_a_module_without_memory_gets_none() -> None:
    got: list[object] = []

    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        got.append(memory)
        return 7

    store, inst = instance(WITHOUT_MEMORY, fn)
    assert call(store, inst, 1, 2, 3) == 7
    assert got == [None]


def test_one_memory_object_follows_each_store() -> None:
    bases: list[int] = []

    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        assert memory is not None
        bases.append(memory.base)
        return 0

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    hostcall.define(linker, "host", "f", 3, fn, hostcall.RawMemory())
    module = wasmtime.Module(engine, wasmtime.wat2wasm(WITH_MEMORY))
    stores = [wasmtime.Store(engine) for _ in range(2)]
    instances = [linker.instantiate(store, module) for store in stores]
    for store, inst in zip(stores, instances, strict=True):
        call(store, inst, 0, 0, 0)
    memories = [inst.exports(s)["memory"] for s, inst in zip(stores, instances, strict=True)]
    assert all(isinstance(m, wasmtime.Memory) for m in memories)
    assert bases == [
        ctypes_address(m, s)  # type: ignore[arg-type]
        for m, s in zip(memories, stores, strict=True)
    ]
    assert bases[0] != bases[1]


def test_host_trap_error_ends_the_call_with_its_message() -> None:
    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        raise HostTrapError("the task's deadline passed in the host")

    store, inst = instance(WITH_MEMORY, fn)
    with pytest.raises(wasmtime.WasmtimeError, match="the task's deadline passed in the host"):
        call(store, inst, 0, 0, 0)


def test_other_exceptions_are_raised_again_by_wasmtime() -> None:
    def fn(memory: hostcall.RawMemory | None, *args: int) -> int:
        raise KeyboardInterrupt

    store, inst = instance(WITH_MEMORY, fn)
    with pytest.raises(KeyboardInterrupt):
        call(store, inst, 0, 0, 0)

    def bad(memory: hostcall.RawMemory | None, *args: int) -> int:
        return "not an int"  # type: ignore[return-value]

    store, inst = instance(WITH_MEMORY, bad)
    with pytest.raises(TypeError):
        call(store, inst, 0, 0, 0)


def test_a_wasi_nn_kind_needs_its_cache() -> None:
    linker = wasmtime.Linker(wasmtime.Engine())
    with pytest.raises(TypeError, match="NNCache"):
        hostcall.define(linker, "m", "f", 3, lambda *a: 0, hostcall.RawMemory(), hostcall.SET_INPUT)
    memory = hostcall.RawMemory()
    cache = hostcall.NNCache(memory)
    with pytest.raises(ValueError, match="takes 5 arguments"):
        hostcall.define(linker, "m", "f", 3, lambda *a: 0, memory, hostcall.GET_OUTPUT, cache)
