"""The OpenVINO backend: loads graphs for the wasi-nn host.

Graphs are compiled once per process (kept by content or by named-model files, a bounded
number and estimated size of them) and once per machine (sealed blobs: `blobs`). Every graph
a run holds is charged to its `Budget` before it is compiled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from ..sealed import SealedDir
from . import altstack
from .abi import ExecutionTarget, GraphEncoding, NNErrno, NNError
from .blobs import BlobCache, file_identity
from .budget import GRAPH_MEMORY_FACTOR, Budget, mib
from .graph import Graph, Origin
from .models import NamedModel

DEVICE_FOR_TARGET: dict[ExecutionTarget, str] = {
    ExecutionTarget.CPU: "CPU",
    ExecutionTarget.GPU: "GPU",
    ExecutionTarget.TPU: "NPU",
    ExecutionTarget.AUTO: "AUTO",
}

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
TFLITE_MAGIC = b"TFL3"
DEFAULT_GRAPH_CACHE_BYTES = 1 << 30

Log = Callable[[str], None]
Builder = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class BackendConfig:
    """How graphs are compiled: blob cache, precision, what a missing device does, and how many
    graphs (and how much of their estimated memory) the process keeps for later runs."""

    blobs: SealedDir | None = None
    inference_precision: str | None = None
    target_fallback: ExecutionTarget | None = None
    max_cached_graphs: int = 8
    graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES

    def __post_init__(self) -> None:
        if self.inference_precision and self.inference_precision not in PRECISIONS:
            raise ValueError(
                f"inference precision {self.inference_precision!r} is not one of "
                f"{', '.join(sorted(PRECISIONS))}"
            )


_CORE: list[ov.Core] = []
_CORE_LOCK = threading.Lock()


def shared_core() -> ov.Core:
    """The process's Core, created once and never destroyed.

    Never destroyed, and its CPU plugin loaded under `altstack.kept()`: see `altstack` (a Core
    destroyed out of order leaves a freed signal stack behind, and the next wasm trap kills the
    process). It has no `CACHE_DIR`: compiled models are cached as sealed blobs (`blobs`).
    """
    with _CORE_LOCK:
        if not _CORE:
            with altstack.kept():
                core = ov.Core()
                core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
            _CORE.append(core)
        return _CORE[0]


class OpenVINOBackend:
    """Loads and compiles graphs; one per runtime, shared by all its runs (thread-safe)."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self.core = shared_core()
        self.blobs = BlobCache(self.config.blobs)
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
        builders: Sequence[Builder],
        encoding: GraphEncoding,
        target: ExecutionTarget,
        log: Log,
        budget: Budget,
    ) -> Graph:
        """A graph from model bytes the guest passed (`load`); `builders` are views of guest
        memory, read only during this call."""
        size = sum(b.nbytes for b in builders)  # within max_graph_bytes: the host checked
        encoding = _resolve_encoding(builders, encoding)
        device = self.device_for(target, log)
        props = self.compile_properties()
        digest = hashlib.sha256(f"{encoding}|{device}|{json.dumps(props, sort_keys=True)}".encode())
        for b in builders:
            digest.update(b.nbytes.to_bytes(8, "little"))
            digest.update(b.data)
        key = "bytes:" + digest.hexdigest()
        identity = self.blobs.identity(self.core, device, props, key)

        def build() -> Graph:
            imported = self.blobs.load(self.core, identity, device, props)
            if imported is not None:
                compiled, mapping = imported
                # Variants need the model: keep a private copy of the builders to read it from.
                copies = [b.copy() for b in builders]
                origin = Origin(identity, size, self.blobs)
                read = lambda: _read_model(self.core, copies, encoding)  # noqa: E731
                return Graph(compiled, read, self.core, device, props, mapping, origin)
            model = _read_model(self.core, builders, encoding)
            origin = Origin(identity, _charge_model(budget, key, model, size), self.blobs)
            return Graph.compile(model, self.core, device, props, origin)

        return self._cached(key, size, budget, build)

    def load_named(
        self,
        model: NamedModel,
        target: ExecutionTarget,
        log: Log,
        budget: Budget,
        extra: dict[str, Any] | None = None,
    ) -> Graph:
        """A graph from a named model's files (`load_by_name`), compiled once per process."""
        device = self.device_for(target, log)
        props = {**self.compile_properties(), **(extra or {})}
        files = model.files()
        stamp = file_identity(files)
        size = sum(f.stat().st_size for f in files)
        key = json.dumps(["named", stamp, device, props], sort_keys=True)
        identity = self.blobs.identity(self.core, device, props, ["named", stamp])

        def read() -> ov.Model:
            try:
                return self.core.read_model(str(files[0]))
            except RuntimeError as exc:
                raise NNError(
                    NNErrno.RUNTIME_ERROR, f"OpenVINO could not read model {model.name!r}: {exc}"
                ) from exc

        def build() -> Graph:
            imported = self.blobs.load(self.core, identity, device, props)
            if imported is not None:
                compiled, mapping = imported
                origin = Origin(identity, size, self.blobs)
                return Graph(compiled, read, self.core, device, props, mapping, origin)
            uncompiled = read()
            origin = Origin(identity, _charge_model(budget, key, uncompiled, size), self.blobs)
            return Graph.compile(uncompiled, self.core, device, props, origin)

        return self._cached(key, size, budget, build)

    def _cached(self, key: str, size: int, budget: Budget, build: Callable[[], Graph]) -> Graph:
        # One lock for all loads: compiling the same graph twice concurrently would waste
        # seconds and memory, and loads are rare next to inferences.
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                budget.charge(key, graph.cost, "this graph")
                return graph
            budget.charge(key, GRAPH_MEMORY_FACTOR * size, f"a graph of {mib(size)}")
            try:
                graph = build()
            except BaseException:
                budget.release(key)
                raise
            graph.cost = GRAPH_MEMORY_FACTOR * graph.origin.size
            self._graphs[key] = graph
            self._evict()
            return graph

    def cached_graphs(self) -> list[Graph]:
        """The graphs kept for later runs, least recently used first."""
        with self._lock:
            return list(self._graphs.values())

    def _evict(self) -> None:
        """Forget the least recently used graphs past the count or size bound (runs that still
        hold one keep it until they end)."""
        total = sum(g.cost for g in self._graphs.values())
        while len(self._graphs) > 1 and (
            len(self._graphs) > self.config.max_cached_graphs
            or total > self.config.graph_cache_bytes
        ):
            _, gone = self._graphs.popitem(last=False)
            total -= gone.cost


def _charge_model(budget: Budget, key: str, model: ov.Model, size: int) -> int:
    """The model's effective size: its bytes, or more if its constants or a static tensor are
    larger (a small file can describe a huge constant); charged before it is compiled."""
    constants = 0
    largest = 0
    for op in model.get_ops():
        for output in op.outputs():
            shape = output.get_partial_shape()
            if shape.is_static:
                elements = math.prod(d.get_length() for d in shape)
                nbytes = elements * max(1, output.get_element_type().size)
                largest = max(largest, nbytes)
                if op.get_type_name() == "Constant":
                    constants += nbytes
    effective = max(size, constants, largest)
    if effective > size:
        what = f"a model of {mib(size)} whose tensors need {mib(effective)}"
        budget.charge(key, GRAPH_MEMORY_FACTOR * effective, what)
    return effective


def _resolve_encoding(builders: Sequence[Builder], encoding: GraphEncoding) -> GraphEncoding:
    if encoding is GraphEncoding.AUTODETECT:
        first = bytes(builders[0][:64]) if builders else b""
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


def _read_model(core: ov.Core, builders: Sequence[Builder], encoding: GraphEncoding) -> ov.Model:
    """The model from builder bytes, copied once: OpenVINO keeps what it reads."""
    expected = 2 if encoding is GraphEncoding.OPENVINO else 1
    if len(builders) != expected:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"{encoding.name.lower()} takes {expected} graph builder(s) "
            f"({'xml then weights' if expected == 2 else 'the model file'}), got {len(builders)}",
        )
    try:
        if encoding is GraphEncoding.OPENVINO:
            weights = ov.Tensor(builders[1].copy())
            return core.read_model(bytes(builders[0]).decode("utf-8"), weights)
        if encoding is GraphEncoding.ONNX:
            return core.read_model(bytes(builders[0]), b"")
        # OpenVINO reads TFLite only from a file.
        fd, path = tempfile.mkstemp(suffix=".tflite")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(builders[0].data)
            return core.read_model(path)
        finally:
            os.unlink(path)
    except (RuntimeError, UnicodeDecodeError) as exc:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"the {encoding.name.lower()} model bytes could not be read: {exc}",
        ) from exc
