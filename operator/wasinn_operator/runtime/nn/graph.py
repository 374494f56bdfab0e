"""Graphs: compiled models and their variants (execution contexts are in `context`).

A graph keeps a way to read its uncompiled model, so that inputs of another shape (a batch of
8) or element type get a compiled variant of their own; a graph imported from the blob cache
reads the model only then. Variants are few per graph (the least recently used go), and each
new variant is charged to the run's `Budget` before it is compiled.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openvino as ov

from . import altstack
from .abi import NNErrno, NNError, TensorType
from .blobs import BlobCache
from .budget import VARIANT_MEMORY_FACTOR, Budget

MAX_VARIANTS = 4

OV_TYPES: dict[TensorType, ov.Type] = {
    TensorType.F16: ov.Type.f16,
    TensorType.F32: ov.Type.f32,
    TensorType.F64: ov.Type.f64,
    TensorType.U8: ov.Type.u8,
    TensorType.I32: ov.Type.i32,
    TensorType.I64: ov.Type.i64,
}

Signature = tuple[tuple[tuple[int, ...], TensorType], ...]
Compiled = tuple[ov.CompiledModel, object]  # and the memory it was imported from, if any


def compile_model(
    core: ov.Core, model: ov.Model, device: str, props: dict[str, Any]
) -> ov.CompiledModel:
    """`core.compile_model`, failing with `runtime_error`."""
    try:
        with altstack.kept():  # a device's first compile may load its plugin
            return core.compile_model(model, device, props)
    except RuntimeError as exc:
        raise NNError(NNErrno.RUNTIME_ERROR, f"OpenVINO could not compile: {exc}") from exc


@dataclass(frozen=True)
class Origin:
    """Where a graph came from: its blob identity (None: not cached) and its size in bytes."""

    identity: bytes | None
    size: int
    blobs: BlobCache | None = None


class Graph:
    """A loaded model on one device, with compiled variants per input signature."""

    def __init__(
        self,
        compiled: ov.CompiledModel,
        model: Callable[[], ov.Model],
        core: ov.Core,
        device: str,
        props: dict[str, Any],
        keep: object = None,
        origin: Origin | None = None,
    ) -> None:
        self._default = compiled
        self._read_model = model
        self._model: ov.Model | None = None
        self._core = core
        self.device = device
        self._props = props
        self._keep = keep  # memory the compiled model was imported from, if any
        self.origin = origin or Origin(None, 0)
        self.cost = 0  # the host memory charged to each run that holds this graph
        self._lock = threading.Lock()
        self._variants: OrderedDict[Signature, Compiled] = OrderedDict()
        self._inputs = list(compiled.inputs)
        self.input_count = len(self._inputs)
        self.output_count = len(compiled.outputs)
        # Port names, for interfaces that name tensors (component wasi:nn); an output without
        # a name is called by its index.
        self.input_names = [frozenset(p.get_names()) for p in self._inputs]
        self.output_names = [
            p.get_any_name() if p.get_names() else str(i) for i, p in enumerate(compiled.outputs)
        ]
        self._ranks = [
            p.get_partial_shape().rank.get_length()
            if p.get_partial_shape().rank.is_static
            else None
            for p in self._inputs
        ]

    @classmethod
    def compile(
        cls, model: ov.Model, core: ov.Core, device: str, props: dict[str, Any], origin: Origin
    ) -> Graph:
        """Compile `model`, storing the blob when the origin is cacheable."""
        compiled = compile_model(core, model, device, props)
        if origin.blobs is not None and origin.identity is not None:
            origin.blobs.store(origin.identity, compiled)
        return cls(compiled, lambda: model, core, device, props, origin=origin)

    def model(self) -> ov.Model:
        """The uncompiled model (read on first use: only variants need it)."""
        if self._model is None:
            self._model = self._read_model()
        return self._model

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
                f"{rank} ({self._inputs[index].get_partial_shape()})",
            )

    def compiled_for(self, signature: Signature, budget: Budget) -> Compiled:
        """The compiled model that accepts exactly these input shapes and types, with the memory
        it was imported from (whoever uses the model must keep that alive)."""
        if self._fits_default(signature):
            return self._default, self._keep
        cost = VARIANT_MEMORY_FACTOR * self.origin.size
        with self._lock:
            compiled = self._variants.get(signature)
            if compiled is not None:
                self._variants.move_to_end(signature)
                budget.charge((id(self), signature), cost, "a compiled variant")
                return compiled
            wanted = ", ".join(f"{list(s)} {t.name.lower()}" for s, t in signature)
            budget.charge((id(self), signature), cost, f"a compiled variant for inputs {wanted}")
            try:
                compiled = self._compile_variant(signature)
            except BaseException:
                budget.release((id(self), signature))
                raise
            self._variants[signature] = compiled
            while len(self._variants) > MAX_VARIANTS:  # contexts keep what they still use
                self._variants.popitem(last=False)
            return compiled

    def _compile_variant(self, signature: Signature) -> Compiled:
        origin = self.origin
        identity = None
        if origin.blobs is not None and origin.identity is not None:
            variant = [origin.identity.decode(), [[list(s), t.name] for s, t in signature]]
            identity = origin.blobs.identity(self._core, self.device, self._props, variant)
            imported = origin.blobs.load(self._core, identity, self.device, self._props)
            if imported is not None:
                return imported
        compiled = compile_model(
            self._core, self._variant_model(signature), self.device, self._props
        )
        if origin.blobs is not None and identity is not None:
            origin.blobs.store(identity, compiled)
        return compiled, None

    def _fits_default(self, signature: Signature) -> bool:
        for port, (shape, ttype) in zip(self._inputs, signature, strict=True):
            if port.get_element_type() != OV_TYPES[ttype]:
                return False
            if not port.get_partial_shape().compatible(ov.PartialShape(list(shape))):
                return False
        return True

    def _variant_model(self, signature: Signature) -> ov.Model:
        model = self.model().clone()
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
