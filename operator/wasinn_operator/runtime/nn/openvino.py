"""The OpenVINO backend: loads graphs for the wasi-nn host.

Graphs are compiled once per process (keyed by content or by named-model files) and once per
machine: named models through the blob cache (`blobs`), model bytes and variants through
OpenVINO's `CACHE_DIR`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from . import altstack
from .abi import ExecutionTarget, GraphEncoding, NNErrno, NNError
from .blobs import BlobCache
from .graph import Graph, compile_model
from .models import NamedModel

DEVICE_FOR_TARGET: dict[ExecutionTarget, str] = {
    ExecutionTarget.CPU: "CPU",
    ExecutionTarget.GPU: "GPU",
    ExecutionTarget.TPU: "NPU",
    ExecutionTarget.AUTO: "AUTO",
}

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
TFLITE_MAGIC = b"TFL3"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BackendConfig:
    """How graphs are compiled: cache location, precision, and what a missing device does."""

    cache_dir: Path | None = None
    inference_precision: str | None = None
    target_fallback: ExecutionTarget | None = None
    max_cached_graphs: int = 8

    def __post_init__(self) -> None:
        if self.inference_precision and self.inference_precision not in PRECISIONS:
            raise ValueError(
                f"inference precision {self.inference_precision!r} is not one of "
                f"{', '.join(sorted(PRECISIONS))}"
            )


_CORES: dict[str, ov.Core] = {}
_CORES_LOCK = threading.Lock()


def shared_core(cache_dir: Path | None = None) -> ov.Core:
    """The process's Core for one cache directory, created once and never destroyed.

    Never destroyed, and its CPU plugin loaded under `altstack.kept()`: see `altstack` (a Core
    destroyed out of order leaves a freed signal stack behind, and the next wasm trap kills the
    process).
    """
    key = "" if cache_dir is None else str(cache_dir)
    with _CORES_LOCK:
        core = _CORES.get(key)
        if core is None:
            with altstack.kept():
                core = ov.Core()
                if cache_dir is not None:
                    # An unwritable cache costs compile time, never correctness.
                    with contextlib.suppress(OSError):
                        cache_dir.mkdir(parents=True, exist_ok=True)
                        core.set_property({"CACHE_DIR": str(cache_dir)})
                core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
            _CORES[key] = core
        return core


class OpenVINOBackend:
    """Loads and compiles graphs; one per runtime, shared by all its runs (thread-safe)."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        cache = self.config.cache_dir
        self.core = shared_core(cache)
        self.blobs = BlobCache(None if cache is None else cache / "named")
        self._devices: list[str] | None = None
        self._lock = threading.Lock()
        self._graphs: OrderedDict[str, Graph] = OrderedDict()

    def compile_properties(self) -> dict[str, Any]:
        """Properties every compile uses (the native baseline must use the same)."""
        props: dict[str, Any] = {}
        if self.config.inference_precision:
            props["INFERENCE_PRECISION_HINT"] = PRECISIONS[self.config.inference_precision]
        return props

    @property
    def devices(self) -> list[str]:
        """OpenVINO's available devices (listed on first use: it probes every plugin)."""
        if self._devices is None:
            with altstack.kept():  # probing loads every plugin
                self._devices = list(self.core.available_devices)
        return self._devices

    def device_for(self, target: ExecutionTarget, log: Log) -> str:
        """The OpenVINO device for a target; never a silent fallback."""
        device = DEVICE_FOR_TARGET[target]
        # Every OpenVINO build has the CPU plugin: the common case needs no probing of GPUs.
        if device in ("AUTO", "CPU") or any(d.split(".")[0] == device for d in self.devices):
            return device
        present = ", ".join(self.devices) or "none"
        fallback = self.config.target_fallback
        if fallback is not None and fallback != target:
            log(
                f"wasi-nn: no OpenVINO {device} device for target {target.name.lower()} "
                f"(present: {present}); falling back to {fallback.name.lower()} as configured"
            )
            return self.device_for(fallback, log)
        raise NNError(
            NNErrno.UNSUPPORTED_OPERATION,
            f"execution target {target.name.lower()} needs an OpenVINO {device} device; "
            f"this host has: {present}",
        )

    def load(
        self,
        builders: Sequence[bytes],
        encoding: GraphEncoding,
        target: ExecutionTarget,
        log: Log,
        extra: dict[str, Any] | None = None,
    ) -> Graph:
        """A graph from model bytes the guest passed (`load`)."""
        encoding = _resolve_encoding(builders, encoding)
        device = self.device_for(target, log)
        props = {**self.compile_properties(), **(extra or {})}
        digest = hashlib.sha256(f"{encoding}|{device}|{json.dumps(props, sort_keys=True)}".encode())
        for b in builders:
            digest.update(len(b).to_bytes(8, "little"))
            digest.update(b)

        def build() -> Graph:
            model = _read_model(self.core, builders, encoding)
            return Graph.compile(model, self.core, device, props)

        return self._cached("bytes:" + digest.hexdigest(), build)

    def load_named(
        self,
        model: NamedModel,
        target: ExecutionTarget,
        log: Log,
        extra: dict[str, Any] | None = None,
    ) -> Graph:
        """A graph from a named model's files (`load_by_name`), compiled once per process."""
        device = self.device_for(target, log)
        props = {**self.compile_properties(), **(extra or {})}
        files = model.files()
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        key = json.dumps(["named", stamp, device, props], sort_keys=True)

        def read() -> ov.Model:
            try:
                return self.core.read_model(str(files[0]))
            except RuntimeError as exc:
                raise NNError(
                    NNErrno.RUNTIME_ERROR, f"OpenVINO could not read model {model.name!r}: {exc}"
                ) from exc

        def build() -> Graph:
            if not self.blobs.enabled:
                return Graph.compile(read(), self.core, device, props)
            blob = self.blobs.key(self.core, files, device, props)
            imported = self.blobs.load(self.core, blob, device, props)
            if imported is not None:
                compiled, mapping = imported
                return Graph(compiled, read, self.core, device, props, keep=mapping)
            # This cache stands in for CACHE_DIR here: a second copy of the blob would only
            # cost disk. Variants still go through CACHE_DIR (they have no file identity).
            uncompiled = read()
            compiled = compile_model(self.core, uncompiled, device, {**props, "CACHE_DIR": ""})
            self.blobs.store(blob, compiled)
            return Graph(compiled, lambda: uncompiled, self.core, device, props)

        return self._cached(key, build)

    def _cached(self, key: str, build: Callable[[], Graph]) -> Graph:
        # One lock for all loads: compiling the same graph twice concurrently would waste
        # seconds and memory, and loads are rare next to inferences.
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                graph = build()
                self._graphs[key] = graph
                while len(self._graphs) > self.config.max_cached_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            return graph


def _resolve_encoding(builders: Sequence[bytes], encoding: GraphEncoding) -> GraphEncoding:
    if encoding is GraphEncoding.AUTODETECT:
        first = builders[0] if builders else b""
        if len(builders) == 2 or first.lstrip()[:5] in (b"<?xml", b"<net "):
            return GraphEncoding.OPENVINO
        if first[4:8] == TFLITE_MAGIC:
            return GraphEncoding.TENSORFLOWLITE
        return GraphEncoding.ONNX
    if encoding not in (GraphEncoding.OPENVINO, GraphEncoding.ONNX, GraphEncoding.TENSORFLOWLITE):
        raise NNError(
            NNErrno.INVALID_ENCODING,
            f"graph encoding {encoding.name.lower()} is not supported by the OpenVINO backend "
            "(use openvino, onnx, tensorflowlite or autodetect)",
        )
    return encoding


def _read_model(core: ov.Core, builders: Sequence[bytes], encoding: GraphEncoding) -> ov.Model:
    expected = 2 if encoding is GraphEncoding.OPENVINO else 1
    if len(builders) != expected:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"{encoding.name.lower()} takes {expected} graph builder(s) "
            f"({'xml then weights' if expected == 2 else 'the model file'}), got {len(builders)}",
        )
    try:
        if encoding is GraphEncoding.OPENVINO:
            weights = ov.Tensor(np.frombuffer(builders[1], dtype=np.uint8).copy())
            return core.read_model(builders[0].decode("utf-8"), weights)
        if encoding is GraphEncoding.ONNX:
            return core.read_model(builders[0], b"")
        # OpenVINO reads TFLite only from a file.
        fd, path = tempfile.mkstemp(suffix=".tflite")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(builders[0])
            return core.read_model(path)
        finally:
            os.unlink(path)
    except (RuntimeError, UnicodeDecodeError) as exc:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"the {encoding.name.lower()} model bytes could not be read: {exc}",
        ) from exc
