"""The OpenVINO backend: graphs, compiled variants and execution contexts.

Graphs are compiled once per process (keyed by content or by named-model files) and, through
OpenVINO's `CACHE_DIR`, once per machine. A graph keeps its uncompiled model so that inputs of
another shape (a batch of 8) or element type get a compiled variant of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from .abi import ExecutionTarget, GraphEncoding, NNErrno, NNError, TensorType
from .models import NamedModel

DEVICE_FOR_TARGET: dict[ExecutionTarget, str] = {
    ExecutionTarget.CPU: "CPU",
    ExecutionTarget.GPU: "GPU",
    ExecutionTarget.TPU: "NPU",
    ExecutionTarget.AUTO: "AUTO",
}

OV_TYPES: dict[TensorType, ov.Type] = {
    TensorType.F16: ov.Type.f16,
    TensorType.F32: ov.Type.f32,
    TensorType.F64: ov.Type.f64,
    TensorType.U8: ov.Type.u8,
    TensorType.I32: ov.Type.i32,
    TensorType.I64: ov.Type.i64,
}
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
TFLITE_MAGIC = b"TFL3"

Log = Callable[[str], None]
Signature = tuple[tuple[tuple[int, ...], TensorType], ...]


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


@dataclass
class InputTensor:
    """A guest tensor recorded by `set_input`; its data is read when `compute` runs."""

    shape: tuple[int, ...]
    ttype: TensorType
    data: npt.NDArray[Any]


class Graph:
    """A loaded model on one device, with compiled variants per input signature."""

    def __init__(self, model: ov.Model, core: ov.Core, device: str, props: dict[str, Any]) -> None:
        self._model = model
        self._core = core
        self.device = device
        self._props = props
        self._lock = threading.Lock()
        self._variants: dict[Signature | None, ov.CompiledModel] = {}
        self.input_count = len(model.inputs)
        self.output_count = len(model.outputs)
        self._ranks = [
            p.get_partial_shape().rank.get_length()
            if p.get_partial_shape().rank.is_static
            else None
            for p in model.inputs
        ]
        self._default = self._compile(model)
        self._variants[None] = self._default

    def _compile(self, model: ov.Model) -> ov.CompiledModel:
        try:
            return self._core.compile_model(model, self.device, self._props)
        except RuntimeError as exc:
            raise NNError(NNErrno.RUNTIME_ERROR, f"OpenVINO could not compile: {exc}") from exc

    def check_input(self, index: int, shape: tuple[int, ...], ttype: TensorType) -> None:
        """Reject an input the model can never take (index, rank)."""
        if index >= self.input_count:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"input index {index} is out of range: the model has {self.input_count} input(s)",
            )
        rank = self._ranks[index]
        if rank is not None and rank != len(shape):
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"input {index} has {len(shape)} dimensions {list(shape)}; the model expects "
                f"{rank} ({self._model.inputs[index].get_partial_shape()})",
            )

    def compiled_for(self, signature: Signature) -> ov.CompiledModel:
        """The compiled model that accepts exactly these input shapes and types."""
        if self._fits_default(signature):
            return self._default
        with self._lock:
            compiled = self._variants.get(signature)
            if compiled is None:
                compiled = self._compile(self._variant_model(signature))
                self._variants[signature] = compiled
            return compiled

    def _fits_default(self, signature: Signature) -> bool:
        for port, (shape, ttype) in zip(self._model.inputs, signature, strict=True):
            if port.get_element_type() != OV_TYPES[ttype]:
                return False
            if not port.get_partial_shape().compatible(ov.PartialShape(list(shape))):
                return False
        return True

    def _variant_model(self, signature: Signature) -> ov.Model:
        model = self._model.clone()
        try:
            shapes = {
                i: ov.PartialShape(list(shape))
                for i, (port, (shape, _)) in enumerate(zip(model.inputs, signature, strict=True))
                if not port.get_partial_shape().compatible(ov.PartialShape(list(shape)))
            }
            if shapes:
                model.reshape(shapes)
            ppp = ov.preprocess.PrePostProcessor(model)
            for i, (port, (_, ttype)) in enumerate(zip(model.inputs, signature, strict=True)):
                if port.get_element_type() != OV_TYPES[ttype]:
                    ppp.input(i).tensor().set_element_type(OV_TYPES[ttype])
            return ppp.build()
        except RuntimeError as exc:
            wanted = ", ".join(f"{list(s)} {t.name.lower()}" for s, t in signature)
            raise NNError(
                NNErrno.INVALID_ARGUMENT, f"the model cannot take inputs {wanted}: {exc}"
            ) from exc


@dataclass
class ExecutionContext:
    """One guest execution context: inputs set so far and the outputs of the last compute."""

    graph: Graph
    inputs: dict[int, InputTensor] = field(default_factory=dict)
    outputs: list[npt.NDArray[np.uint8]] | None = None
    # One infer request per input signature seen: a guest alternating batch sizes keeps both.
    _requests: dict[Signature, ov.InferRequest] = field(default_factory=dict)

    def set_input(self, index: int, tensor: InputTensor) -> None:
        """Record an input (validated against the model) for the next compute."""
        self.graph.check_input(index, tensor.shape, tensor.ttype)
        self.inputs[index] = tensor
        self.outputs = None

    def compute(self) -> None:
        """Run inference on the recorded inputs."""
        missing = [i for i in range(self.graph.input_count) if i not in self.inputs]
        if missing:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"compute before set_input: input(s) {missing} not set",
            )
        signature = tuple((self.inputs[i].shape, self.inputs[i].ttype) for i in sorted(self.inputs))
        request = self._requests.get(signature)
        if request is None:
            request = self.graph.compiled_for(signature).create_infer_request()
            self._requests[signature] = request
        try:
            for i, tensor in self.inputs.items():
                request.set_input_tensor(i, ov.Tensor(tensor.data, shared_memory=True))
            request.infer()
        except RuntimeError as exc:
            raise NNError(NNErrno.RUNTIME_ERROR, f"inference failed: {exc}") from exc
        self.outputs = [
            request.get_output_tensor(i).data.reshape(-1).view(np.uint8)
            for i in range(self.graph.output_count)
        ]

    def output(self, index: int) -> npt.NDArray[np.uint8]:
        """The raw bytes of output `index` of the last compute."""
        if self.outputs is None:
            raise NNError(NNErrno.INVALID_ARGUMENT, "get_output before compute")
        if index >= len(self.outputs):
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"output index {index} is out of range: "
                f"the model has {len(self.outputs)} output(s)",
            )
        return self.outputs[index]


class OpenVINOBackend:
    """Loads and compiles graphs; one per runtime, shared by all its runs (thread-safe)."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self.core = ov.Core()
        if self.config.cache_dir is not None:
            try:
                self.config.cache_dir.mkdir(parents=True, exist_ok=True)
                self.core.set_property({"CACHE_DIR": str(self.config.cache_dir)})
            except OSError:
                pass  # an unwritable cache costs compile time, never correctness
        self.devices: list[str] = list(self.core.available_devices)
        self._lock = threading.Lock()
        self._graphs: OrderedDict[str, Graph] = OrderedDict()

    def compile_properties(self) -> dict[str, Any]:
        """Properties every compile uses (the native baseline must use the same)."""
        props: dict[str, Any] = {}
        if self.config.inference_precision:
            props["INFERENCE_PRECISION_HINT"] = PRECISIONS[self.config.inference_precision]
        return props

    def device_for(self, target: ExecutionTarget, log: Log) -> str:
        """The OpenVINO device for a target; never a silent fallback."""
        device = DEVICE_FOR_TARGET[target]
        if device == "AUTO" or any(d.split(".")[0] == device for d in self.devices):
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
        return self._cached(
            "bytes:" + digest.hexdigest(),
            lambda: Graph(_read_model(self.core, builders, encoding), self.core, device, props),
        )

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

        def build() -> Graph:
            try:
                read = self.core.read_model(str(files[0]))
            except RuntimeError as exc:
                raise NNError(
                    NNErrno.RUNTIME_ERROR, f"OpenVINO could not read model {model.name!r}: {exc}"
                ) from exc
            return Graph(read, self.core, device, props)

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
