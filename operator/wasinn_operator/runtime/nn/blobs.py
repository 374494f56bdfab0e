"""Compiled named models on disk, imported without reading or hashing the model.

OpenVINO's own `CACHE_DIR` needs the model read and hashed (weights included) before it can
look up a blob: for a named model that is most of a warm start's model work. Named models are
files, so this cache keys a blob by what identifies them cheaply: each file's path, size and
mtime, plus the OpenVINO version, the device (its full name: a blob is specific to the CPU that
compiled it) and the compile properties. The blob is imported from a copy-on-write memory map,
kept alive by the graph. Only files this cache wrote are imported, so the directory must not be
writable by others (as with the module cache).
"""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ...atomicfile import write_atomically
from . import altstack


class BlobCache:
    """Exported compiled models by named-model identity; every failure is a cache miss."""

    def __init__(self, directory: Path | None) -> None:
        self._dir = directory
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError:
                self._dir = None

    @property
    def enabled(self) -> bool:
        """Whether blobs are read and written at all."""
        return self._dir is not None

    def key(self, core: ov.Core, files: list[Path], device: str, props: dict[str, Any]) -> str:
        """The blob name for these model files compiled on `device` with `props`."""
        stats = [(str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]
        try:
            identity = str(core.get_property(device, "FULL_DEVICE_NAME"))
        except RuntimeError:
            identity = "?"
        stamp = [ov.get_version(), device, identity, props, stats]
        return hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()

    def load(
        self, core: ov.Core, key: str, device: str, props: dict[str, Any]
    ) -> tuple[ov.CompiledModel, object] | None:
        """The imported model and the mapping it was imported from, or None."""
        if self._dir is None:
            return None
        path = self._dir / f"{key}.blob"
        try:
            with path.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):
            return None  # absent or empty
        data = np.frombuffer(mapped, dtype=np.uint8)
        try:
            with altstack.kept():  # may be the device plugin's first use
                compiled = core.import_model(ov.Tensor(data, shared_memory=True), device, props)
        except RuntimeError:
            path.unlink(missing_ok=True)  # incompatible or damaged: compile afresh
            return None
        return compiled, (mapped, data)

    def store(self, key: str, compiled: ov.CompiledModel) -> None:
        """Export `compiled` atomically; a full or read-only cache only costs the next start."""
        if self._dir is None:
            return
        try:
            data = compiled.export_model().getbuffer()
        except RuntimeError:
            return
        write_atomically(self._dir / f"{key}.blob", data)
