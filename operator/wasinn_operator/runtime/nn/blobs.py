"""Compiled models on disk, sealed, imported without compiling (or, for named models, reading).

This replaces OpenVINO's own `CACHE_DIR`, whose blobs OpenVINO imports without checking who
wrote them (a blob is native data the plugin trusts), and which needs a model read and hashed
(weights included) before it can look a blob up. Here a blob is an entry of a `SealedDir`,
verified in private memory before import, named after an identity the caller computes cheaply:
a named model's files (path, size, mtime), a `load`'s builder digest, or a graph's identity
plus an input signature for a variant; always with the OpenVINO version, the device (its full
name: a blob is specific to the CPU that compiled it) and the compile properties.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ..sealed import SealedDir
from . import altstack


def file_identity(files: list[Path]) -> list[object]:
    """What identifies model files without reading them: path, size and mtime of each."""
    return [(str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]


class BlobCache:
    """Exported compiled models by identity; every failure is a cache miss."""

    def __init__(self, disk: SealedDir | None) -> None:
        self.disk = disk

    @property
    def enabled(self) -> bool:
        """Whether blobs are read and written at all."""
        return self.disk is not None

    def identity(self, core: ov.Core, device: str, props: dict[str, Any], what: object) -> bytes:
        """The identity of `what` (JSON-able) compiled on `device` with `props`."""
        try:
            name = str(core.get_property(device, "FULL_DEVICE_NAME"))
        except RuntimeError:
            name = "?"
        stamp = [ov.get_version(), device, name, props, what]
        return json.dumps(stamp, sort_keys=True, default=str).encode()

    @staticmethod
    def name(identity: bytes) -> str:
        """The entry name of an identity."""
        return hashlib.sha256(identity).hexdigest()

    def load(
        self, core: ov.Core, identity: bytes, device: str, props: dict[str, Any]
    ) -> tuple[ov.CompiledModel, object] | None:
        """The imported model and the verified memory it was imported from, or None."""
        if self.disk is None:
            return None
        name = self.name(identity)
        payload = self.disk.read(name, identity)
        if payload is None:
            return None
        data = np.frombuffer(payload, dtype=np.uint8)
        try:
            with altstack.kept():  # may be the device plugin's first use
                compiled = core.import_model(ov.Tensor(data, shared_memory=True), device, props)
        except RuntimeError:
            self.disk.discard(self.disk.path(name), "was refused by OpenVINO")
            return None
        return compiled, (payload, data)

    def store(self, identity: bytes, compiled: ov.CompiledModel) -> None:
        """Export `compiled`; a full or read-only cache only costs the next start."""
        if self.disk is None:
            return
        try:
            data = compiled.export_model().getbuffer()
        except RuntimeError:
            return
        self.disk.write(self.name(identity), identity, data)
