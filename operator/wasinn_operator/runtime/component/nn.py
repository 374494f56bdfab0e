"""The host side of `wasi:nn@0.2.0-rc-2024-10-28` for components, over the OpenVINO backend.

The same backend, graphs and checks as the preview1 host (`nn/host.py`), in the component
model's shape: `tensor`, `graph`, `graph-execution-context` and `error` are resources held in
per-run tables; `compute` takes every model input as a named tensor (a model input's name, or
its index in decimal) and returns every output, named after the model's output (or its index
when it has no name). A failure returns an `error` resource (its code and message) and writes
the same line to the task's stderr as the preview1 host, e.g.
`wasi-nn: load-by-name: no model named 'resnet' (known: ...) (not-found)`.

A guest fault no `result` can carry (tensors held past the run's cap) traps with a message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wasmtime import StoreContext
from wasmtime.component import Linker, LinkerInstance, ResourceType

from ..deadline import Deadline, HostTrapError
from ..nn.abi import ExecutionTarget, GraphEncoding, NNErrno, NNError
from ..nn.budget import Budget, GraphLimits
from ..nn.context import ExecutionContext
from ..nn.graph import Graph
from ..nn.models import NamedModel
from ..nn.openvino import Log, OpenVINOBackend
from .staging import STAGING, Staging
from .tensors import HostTensor, compute, output_tensor
from .values import Result, Val, add_func, new_resource, resource_rep

VERSION = "0.2.0-rc-2024-10-28"
PACKAGE = f"wasi:nn@{VERSION}"
INTERFACES = ("tensor", "graph", "inference", "errors")
MAX_BUILDERS = 16
MAX_TENSORS = 4096
MAX_ERRORS = 4096
DEFAULT_TENSOR_BYTES = 4 << 30  # what a wasm32 guest could hold in its own memory

# Host resource type ids (the rep's namespace): one per WIT resource.
TENSOR, GRAPH, CONTEXT, ERROR = 1, 2, 3, 4

ENCODINGS: dict[str, GraphEncoding] = {
    "openvino": GraphEncoding.OPENVINO,
    "onnx": GraphEncoding.ONNX,
    "tensorflow": GraphEncoding.TENSORFLOW,
    "pytorch": GraphEncoding.PYTORCH,
    "tensorflowlite": GraphEncoding.TENSORFLOWLITE,
    "autodetect": GraphEncoding.AUTODETECT,
}
TARGETS = {"cpu": ExecutionTarget.CPU, "gpu": ExecutionTarget.GPU, "tpu": ExecutionTarget.TPU}
# The component interface has no missing-memory or busy: both become runtime-error (busy is a
# run's limit on graphs or contexts held, which its message names).
ERROR_CODES: dict[NNErrno, str] = {
    NNErrno.INVALID_ARGUMENT: "invalid-argument",
    NNErrno.INVALID_ENCODING: "invalid-encoding",
    NNErrno.MISSING_MEMORY: "runtime-error",
    NNErrno.BUSY: "runtime-error",
    NNErrno.RUNTIME_ERROR: "runtime-error",
    NNErrno.UNSUPPORTED_OPERATION: "unsupported-operation",
    NNErrno.TOO_LARGE: "too-large",
    NNErrno.NOT_FOUND: "not-found",
}

T = TypeVar("T")
Writer = Callable[[Result], None]


def interface(name: str) -> str:
    """The versioned name of one of the package's interfaces."""
    return f"wasi:nn/{name}@{VERSION}"


class _Table(Generic[T]):
    """Live resources of one kind, by rep."""

    def __init__(self, what: str, limit: int, setting: str) -> None:
        self.what = what
        self._limit = limit
        self._setting = setting
        self._items: dict[int, T] = {}
        self._reps = itertools.count(1)

    def add(self, item: T) -> int:
        if len(self._items) >= self._limit:
            raise NNError(
                NNErrno.BUSY,
                f"a run may hold at most {self._limit} {self.what}s at once ({self._setting}; "
                "drop those no longer needed)",
            )
        rep = next(self._reps)
        self._items[rep] = item
        return rep

    def get(self, rep: int) -> T:
        try:
            return self._items[rep]
        except KeyError:
            raise HostTrapError(f"unknown {self.what} handle (rep {rep})") from None

    def pop(self, rep: int) -> T | None:
        return self._items.pop(rep, None)


class ComponentNNHost:
    """Per-run `wasi:nn` state for one component instance."""

    def __init__(
        self,
        backend: OpenVINOBackend,
        models: dict[str, NamedModel],
        log: Log,
        named_target: ExecutionTarget = ExecutionTarget.CPU,
        limits: GraphLimits | None = None,
        deadline: Deadline | None = None,
        max_tensor_bytes: int = DEFAULT_TENSOR_BYTES,
    ) -> None:
        self._backend = backend
        self._models = models
        self._log = log
        self._named_target = named_target
        self.budget = Budget(limits or GraphLimits())
        self.missing_model: str | None = None  # a name the guest asked for and no model has
        self._deadline = deadline or Deadline(None)
        self._max_tensor_bytes = max_tensor_bytes
        self._tensor_bytes = 0
        limits = self.budget.limits
        self._tensors: _Table[HostTensor] = _Table("tensor", MAX_TENSORS, "tensors")
        self._graphs: _Table[Graph] = _Table("graph", limits.max_graphs, "max_graphs")
        self._contexts: _Table[ExecutionContext] = _Table(
            "execution context", limits.max_contexts, "max_contexts"
        )
        self._errors: _Table[tuple[str, str]] = _Table("error", MAX_ERRORS, "errors")
        # One staged call's data: a model (max_graph_bytes) or a tensor (the tensor cap).
        self._staging = Staging(max(max_tensor_bytes, limits.max_graph_bytes))

    def define(self, linker: Linker) -> None:
        """Define the four interfaces in `linker` (no other linker instance may be open)."""
        with linker.root() as root:
            with root.add_instance(interface("tensor")) as inst:
                self._resource(inst, "tensor", TENSOR, self._tensors, self._drop_tensor)
                self._func(inst, "[constructor]tensor", self._tensor_new)
                self._func(inst, "[method]tensor.dimensions", self._tensor_dimensions)
                self._func(inst, "[method]tensor.ty", self._tensor_ty)
                self._func(inst, "[method]tensor.data", self._tensor_data)
            with root.add_instance(interface("graph")) as inst:
                self._resource(inst, "graph", GRAPH, self._graphs, None)
                self._func(inst, "load", self._load)
                self._func(inst, "load-by-name", self._load_by_name)
                self._func(inst, "[method]graph.init-execution-context", self._init_context)
            with root.add_instance(interface("inference")) as inst:
                self._resource(inst, "graph-execution-context", CONTEXT, self._contexts, None)
                self._func(inst, "[method]graph-execution-context.compute", self._compute)
            with root.add_instance(interface("errors")) as inst:
                self._resource(inst, "error", ERROR, self._errors, None)
                self._func(inst, "[method]error.code", self._error_code)
                self._func(inst, "[method]error.data", self._error_data)
            with root.add_instance(STAGING) as inst:  # for the bridge (bridge.py)
                add_func(inst, "push", "wasi-nn: staging", self._push)

    @staticmethod
    def _resource(
        inst: LinkerInstance,
        name: str,
        type_id: int,
        table: _Table[Any],
        on_drop: Callable[[int], None] | None,
    ) -> None:
        def drop(_store: StoreContext, rep: int) -> None:
            if on_drop is not None:
                on_drop(rep)
            else:
                table.pop(rep)

        inst.add_resource(name, ResourceType.host(type_id), drop)

    @staticmethod
    def _func(inst: LinkerInstance, name: str, fn: Callable[[Any, list[Val], Any], None]) -> None:
        add_func(inst, name, f"wasi-nn: {name}", fn)

    # -- tensors (infallible in the interface: a fault traps) ---------------------------------

    def _tensor_new(self, ctx: Any, args: list[Val], out: Result) -> None:
        dims = args[0].u32_list("dimensions")
        type_name = args[1].enum("ty")
        try:
            data = self._staging.take([args[2].byte_list("data")])[0]
        except NNError as exc:
            self._log(f"wasi-nn: tensor: {exc}")
            raise HostTrapError(str(exc)) from None
        self._hold(HostTensor(dims, type_name, data), out, ctx)

    def _push(self, _ctx: Any, args: list[Val], _out: Result | None) -> None:
        index = args[0].u32("index")
        try:
            self._staging.push(index, args[1].hex("chunk"))
        except NNError as exc:
            self._log(f"wasi-nn: {exc}")
            raise HostTrapError(str(exc)) from None

    def _hold(self, tensor: HostTensor, out: Result, ctx: Any) -> None:
        size = int(tensor.data.nbytes)
        if self._tensor_bytes + size > self._max_tensor_bytes:
            message = (
                f"tensors held by the host would reach {self._tensor_bytes + size} bytes; "
                f"a run may hold at most {self._max_tensor_bytes} (drop tensors no longer needed)"
            )
            self._log(f"wasi-nn: tensor: {message}")
            raise HostTrapError(message)
        try:
            rep = self._tensors.add(tensor)
        except NNError as exc:
            self._log(f"wasi-nn: tensor: {exc}")
            raise HostTrapError(str(exc)) from None
        self._tensor_bytes += size
        out.resource(new_resource(ctx, rep, TENSOR))

    def _drop_tensor(self, rep: int) -> None:
        tensor = self._tensors.pop(rep)
        if tensor is not None:
            self._tensor_bytes -= int(tensor.data.nbytes)

    def _tensor(self, ctx: Any, arg: Val) -> HostTensor:
        return self._tensors.get(resource_rep(ctx, arg.resource("self"), TENSOR, "tensor"))

    def _tensor_dimensions(self, ctx: Any, args: list[Val], out: Result) -> None:
        out.u32_list(self._tensor(ctx, args[0]).dims)

    def _tensor_ty(self, ctx: Any, args: list[Val], out: Result) -> None:
        out.enum(self._tensor(ctx, args[0]).type_name)

    def _tensor_data(self, ctx: Any, args: list[Val], out: Result) -> None:
        out.byte_list(self._tensor(ctx, args[0]).data)

    # -- fallible functions: result<T, error> ---------------------------------------------------

    def _fallible(self, name: str, ctx: Any, out: Result, body: Callable[[], Writer]) -> None:
        try:
            write = body()
        except NNError as exc:
            self._fail(name, ctx, out, ERROR_CODES[exc.errno], str(exc))
            return
        except HostTrapError:
            raise
        except Exception as exc:  # a guest must never crash the host: a runtime-error
            self._fail(name, ctx, out, "runtime-error", f"internal error: {exc!r}")
            return
        out.result(True, write)

    def _fail(self, name: str, ctx: Any, out: Result, code: str, message: str) -> None:
        self._log(f"wasi-nn: {name}: {message} ({code})")
        try:
            rep = self._errors.add((code, message))
        except NNError as exc:
            raise HostTrapError(str(exc)) from None
        out.result(False, lambda r: r.resource(new_resource(ctx, rep, ERROR)))

    def _resource_writer(self, ctx: Any, table: _Table[T], item: T, type_id: int) -> Writer:
        rep = table.add(item)
        return lambda r: r.resource(new_resource(ctx, rep, type_id))

    def _load(self, ctx: Any, args: list[Val], out: Result) -> None:
        given = [b.byte_list(f"graph builder {i}") for i, b in enumerate(args[0].items("builder"))]
        encoding_name = args[1].enum("encoding")
        target_name = args[2].enum("target")

        def body() -> Writer:
            builders = self._staging.take(given)
            if not 1 <= len(builders) <= MAX_BUILDERS:
                raise NNError(
                    NNErrno.INVALID_ARGUMENT,
                    f"{len(builders)} graph builders (expected 1 to {MAX_BUILDERS})",
                )
            encoding = ENCODINGS.get(encoding_name)
            if encoding is None:
                raise NNError(
                    NNErrno.INVALID_ENCODING,
                    f"graph encoding {encoding_name} is not supported by the OpenVINO backend "
                    "(use openvino, onnx, tensorflowlite or autodetect)",
                )
            self.budget.check_builders(sum(b.nbytes for b in builders))
            self._deadline.check("load")  # compiling cannot be interrupted: do not start late
            target = TARGETS[target_name]
            graph = self._backend.load(builders, encoding, target, self._log, self.budget)
            return self._resource_writer(ctx, self._graphs, graph, GRAPH)

        self._fallible("load", ctx, out, body)

    def _load_by_name(self, ctx: Any, args: list[Val], out: Result) -> None:
        name = args[0].string("name")

        def body() -> Writer:
            model = self._models.get(name)
            if model is None:
                known = ", ".join(sorted(self._models)) or "none"
                self.missing_model = name
                raise NNError(NNErrno.NOT_FOUND, f"no model named {name!r} (known: {known})")
            self._deadline.check("load-by-name")
            graph = self._backend.load_named(model, self._named_target, self._log, self.budget)
            return self._resource_writer(ctx, self._graphs, graph, GRAPH)

        self._fallible("load-by-name", ctx, out, body)

    def _init_context(self, ctx: Any, args: list[Val], out: Result) -> None:
        graph = self._graphs.get(resource_rep(ctx, args[0].resource("self"), GRAPH, "graph"))

        def body() -> Writer:
            context = ExecutionContext(graph, self.budget, self._deadline)
            return self._resource_writer(ctx, self._contexts, context, CONTEXT)

        self._fallible("init-execution-context", ctx, out, body)

    def _compute(self, ctx: Any, args: list[Val], out: Result) -> None:
        rep = resource_rep(ctx, args[0].resource("self"), CONTEXT, "graph-execution-context")
        context = self._contexts.get(rep)
        # The input tensors move to the host with the call, whatever happens next.
        inputs: list[tuple[str, HostTensor]] = []
        for item in args[1].items("inputs"):
            name, handle = item.items("named-tensor")
            tensor_rep = resource_rep(ctx, handle.resource("tensor"), TENSOR, "tensor")
            tensor = self._tensors.get(tensor_rep)
            self._drop_tensor(tensor_rep)
            inputs.append((name.string("name"), tensor))

        def body() -> Writer:
            compute(context, inputs)
            outputs = [
                (context.graph.output_names[i], output_tensor(context, i))
                for i in range(context.graph.output_count)
            ]
            held = sum(int(t.data.nbytes) for _, t in outputs)
            if self._tensor_bytes + held > self._max_tensor_bytes:
                raise NNError(
                    NNErrno.TOO_LARGE,
                    f"the outputs ({held} bytes) would take the tensors held by the host past "
                    f"the run's {self._max_tensor_bytes} bytes (drop tensors no longer needed)",
                )
            reps = [(name, self._tensors.add(tensor)) for name, tensor in outputs]
            self._tensor_bytes += held

            def write(result: Result) -> None:
                for slot, (name, tensor_rep) in zip(result.list_of(len(reps)), reps, strict=True):
                    name_slot, tensor_slot = slot.tuple_of(2)
                    name_slot.string(name)
                    tensor_slot.resource(new_resource(ctx, tensor_rep, TENSOR))

            return write

        self._fallible("compute", ctx, out, body)

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, ctx: Any, arg: Val) -> tuple[str, str]:
        return self._errors.get(resource_rep(ctx, arg.resource("self"), ERROR, "error"))

    def _error_code(self, ctx: Any, args: list[Val], out: Result) -> None:
        out.enum(self._error(ctx, args[0])[0])

    def _error_data(self, ctx: Any, args: list[Val], out: Result) -> None:
        out.string(self._error(ctx, args[0])[1])
