"""Compiled wasm modules and components, cached in memory and on disk.

The on-disk key is the module's sha256 plus a fingerprint of the wasmtime version, the engine
settings and the host architecture, so a cache shared across upgrades never serves stale code.
Only files this cache wrote are deserialized (wasmtime trusts serialized modules), so the
directory must not be writable by others.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import threading
from collections import OrderedDict
from pathlib import Path

import wasmtime
from wasmtime.component import Component

from ..atomicfile import write_atomically

WASM_MAGIC = b"\0asm"
# The header's layer field (bytes 6-7): 0 for a core module, 1 for a component.
COMPONENT_LAYER = b"\x01\x00"

Compiled = wasmtime.Module | Component


def is_component(wasm: bytes) -> bool:
    """Whether the bytes are a component (else a core module, or not wasm at all)."""
    return wasm[:4] == WASM_MAGIC and wasm[6:8] == COMPONENT_LAYER


class ModuleError(ValueError):
    """The bytes are not a module this engine can compile."""


class ModuleCache:
    """Compile-once access to modules and components by content."""

    def __init__(
        self, engine: wasmtime.Engine, directory: Path | None, settings: str, capacity: int = 32
    ) -> None:
        self._engine = engine
        self._capacity = capacity
        self._lock = threading.Lock()
        self._modules: OrderedDict[str, Compiled] = OrderedDict()
        version = importlib.metadata.version("wasmtime")
        stamp = f"{version}|{settings}|{platform.machine()}"
        self._fingerprint = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        self._dir = directory
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError:
                self._dir = None  # no disk cache: slower starts, same results

    def get(self, wasm: bytes) -> tuple[Compiled, bool]:
        """The compiled module or component and whether it came from a cache (memory or disk)."""
        if wasm[:4] != WASM_MAGIC:
            raise ModuleError("not a WebAssembly binary (the file does not start with \\0asm)")
        key = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            module = self._modules.get(key)
            if module is not None:
                self._modules.move_to_end(key)
                return module, True
        module, cached = self._load(key, wasm)
        with self._lock:
            self._modules[key] = module
            while len(self._modules) > self._capacity:
                self._modules.popitem(last=False)
        return module, cached

    def _path(self, key: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{key}-{self._fingerprint}.cwasm"

    def _load(self, key: str, wasm: bytes) -> tuple[Compiled, bool]:
        kind: type[wasmtime.Module] | type[Component] = (
            Component if is_component(wasm) else wasmtime.Module
        )
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                return kind.deserialize_file(self._engine, str(path)), True
            except wasmtime.WasmtimeError:
                path.unlink(missing_ok=True)  # incompatible or damaged: compile afresh
        try:
            module = kind(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            noun = "component" if kind is Component else "module"
            raise ModuleError(f"invalid WebAssembly {noun}: {exc}") from exc
        if path is not None:
            write_atomically(path, bytes(module.serialize()))
        return module, False
