"""Compiled wasm modules and components, cached in memory and, sealed, on disk.

wasmtime trusts serialized modules (they are native code), so an entry on disk is used only if
its HMAC under the install's key verifies (`sealed`): it binds the payload to the module's
sha256 and to a fingerprint of the wasmtime version, the engine settings and the host
architecture, so an entry can neither be forged nor stand in for another module, and a cache
shared across upgrades never serves stale code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import threading
from collections import OrderedDict

import wasmtime
from wasmtime.component import Component

from ..api.task import WASM_MAGIC
from .sealed import SealedDir

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
        self, engine: wasmtime.Engine, disk: SealedDir | None, settings: str, capacity: int = 32
    ) -> None:
        self._engine = engine
        self._capacity = capacity
        self._lock = threading.Lock()
        self._modules: OrderedDict[str, Compiled] = OrderedDict()
        version = importlib.metadata.version("wasmtime")
        self._stamp = f"wasmtime {version}|{settings}|{platform.machine()}".encode()
        self._fingerprint = hashlib.sha256(self._stamp).hexdigest()[:16]
        self.disk = disk

    def get(self, wasm: bytes, digest: str | None = None) -> tuple[Compiled, bool]:
        """The compiled module or component and whether it came from a cache (memory or disk);
        `digest` (`sha256:<hex>`) is the bytes' own when the caller already has it."""
        if wasm[:4] != WASM_MAGIC:
            raise ModuleError("not a WebAssembly binary (the file does not start with \\0asm)")
        key = digest.removeprefix("sha256:") if digest else hashlib.sha256(wasm).hexdigest()
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

    def entry_name(self, key: str) -> str:
        """The disk entry of the module with sha256 `key` (hex) under this engine."""
        return f"{key}-{self._fingerprint}"

    def _load(self, key: str, wasm: bytes) -> tuple[Compiled, bool]:
        kind: type[wasmtime.Module] | type[Component] = (
            Component if is_component(wasm) else wasmtime.Module
        )
        name = self.entry_name(key)
        payload = None if self.disk is None else self.disk.read(name, self._stamp)
        if self.disk is not None and payload is not None:
            try:
                return kind.deserialize(self._engine, payload), True
            except wasmtime.WasmtimeError:
                self.disk.discard(self.disk.path(name), "was refused by wasmtime")
        try:
            module = kind(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            noun = "component" if kind is Component else "module"
            raise ModuleError(f"invalid WebAssembly {noun}: {exc}") from exc
        if self.disk is not None:
            self.disk.write(name, self._stamp, module.serialize())
        return module, False
