"""Execution contexts: a guest's inputs, its infer requests and the outputs of its last compute.

A context keeps one infer request per input signature (few: the least recently used go, each
charged to the run's `Budget`), bound in place to the guest memory its inputs live in.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt
import openvino as ov
from openvino import _pyopenvino

from ..deadline import Deadline
from .abi import NNErrno, NNError, TensorType
from .budget import REQUEST_MEMORY_FACTOR, Budget
from .graph import Graph, Signature

MAX_REQUESTS = 4
# How long a cancelled inference may take to stop before its run ends without it. OpenVINO
# stops between operations; a Loop's iterations run to the end.
CANCEL_GRACE_MS = 2000
_SERIALS = itertools.count(1)

# The binding's own start_async: the Python wrapper's dispatches (absent) inputs first, and its
# `infer()` copies every output into a new array nobody reads. The host binds the inputs itself
# and reads the outputs from the request (`_Request.output`).
_START_ASYNC = _pyopenvino.InferRequest.start_async


@dataclass
class InputTensor:
    """A guest tensor recorded by `set_input`; its data is read when `compute` runs.

    `key` identifies guest memory a view aliases (address, length, shape, type), so a request
    already bound to that memory is not rebound; None for a private copy, always rebound.
    """

    shape: tuple[int, ...]
    ttype: TensorType
    data: npt.NDArray[Any]
    key: tuple[int, int, tuple[int, ...], TensorType] | None = None


class Repeat(NamedTuple):
    """A compute the C host runs again by itself: `start(*start_args)`, then `wait()` (or
    `wait(ms)` before `deadline`, on `time.monotonic`'s clock; `expire()` if it times out), then
    each `(size, nbytes)` of `checks` held, else `settled()` gives the request's new serial."""

    start: Callable[..., object]
    start_args: tuple[object, ...]
    wait: Callable[..., object]
    deadline: float
    checks: tuple[tuple[Callable[[], int], int], ...]
    settled: Callable[[], int]
    expire: Callable[[], object]


class _Request:
    """An infer request, the guest memory its inputs are bound to, and its output buffers.

    A static output keeps its buffer across inferences, so its array is made once (asking
    OpenVINO for it costs ~20 us right after an inference) and the host may copy from it without
    asking again. A dynamic output (a model with a dynamic input shape, as ppocr-cls) gets the
    same once an inference has shown its shape: the request is given a buffer of that shape to
    write into (`_adopt`). A kept buffer stands for the output's bytes, not its shape (see
    `ExecutionContext.output_shape`): after each inference `settle` checks only that the byte
    size held (asking for the shape costs ~8 us there, the size ~2.5 us). A changed size (a
    data-dependent output) makes it an output read afresh after every inference, and one larger
    than the given buffer fails the inference, which `ExecutionContext.compute` then runs again
    on a new request that leaves that output to OpenVINO.
    """

    def __init__(
        self,
        request: ov.InferRequest,
        keep: object,
        signature: Signature,
        varying: frozenset[int] = frozenset(),
    ) -> None:
        self.request = request
        self.signature = signature
        # Never reused (unlike id()): names the request and its kept buffers to the C host.
        self.serial = next(_SERIALS)
        self._keep = keep  # the memory its compiled model was imported from, if any
        self.bound: dict[int, tuple[int, int, tuple[int, ...], TensorType]] = {}
        self.static = [o.get_partial_shape().is_static for o in request.model_outputs]
        self.outputs: dict[int, npt.NDArray[Any]] = {}
        # Dynamic outputs given a buffer: the tensor's byte size (bound method), the array.
        self.adopted: dict[int, tuple[Callable[[], int], npt.NDArray[Any]]] = {}
        self.given: set[int] = set()  # every output ever given a buffer (it keeps it)
        self.varying = set(varying)  # dynamic outputs whose shape changed: never adopted

    def output(self, index: int) -> npt.NDArray[Any]:
        data = self.outputs.get(index)
        if data is None:
            data = self.request.get_output_tensor(index).data
            if self.static[index]:
                self.outputs[index] = data
            elif index not in self.varying and index not in self.adopted:
                data = self._adopt(index, data)
        return data

    def _adopt(self, index: int, data: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Give output `index` a buffer holding `data` (what the last inference wrote) that the
        next inferences write into; `data` itself if the request takes none."""
        array = np.empty(data.shape, data.dtype)  # C-contiguous, as the host copies it
        np.copyto(array, data)  # asked for again before the next inference: the same values
        tensor = ov.Tensor(array, shared_memory=True)
        try:
            self.request.set_output_tensor(index, tensor)
        except RuntimeError:  # a device that takes no host buffer: it keeps its own
            self.varying.add(index)
            return data
        self.adopted[index] = (tensor.get_byte_size, array)
        self.given.add(index)
        self.outputs[index] = array
        return array

    def settle(self) -> None:
        """After an inference: an adopted output whose size changed is kept no more."""
        changed = [i for i, (size, array) in self.adopted.items() if size() != array.nbytes]
        for index in changed:
            del self.adopted[index], self.outputs[index]
            self.varying.add(index)
        if changed:  # what the C host remembered of this request's buffers no longer holds
            self.serial = next(_SERIALS)

    def bind(self, index: int, tensor: InputTensor) -> None:
        # Rebinding costs an ov.Tensor and a set_input_tensor per inference; a guest that
        # reuses its buffer (the usual loop) keeps the binding, which reads the buffer afresh
        # at every infer.
        if tensor.key is None or self.bound.get(index) != tensor.key:
            self.request.set_input_tensor(index, ov.Tensor(tensor.data, shared_memory=True))
            if tensor.key is None:
                self.bound.pop(index, None)
            else:
                self.bound[index] = tensor.key


class ExecutionContext:
    """One guest execution context: inputs set so far and the outputs of the last compute."""

    def __init__(self, graph: Graph, budget: Budget, deadline: Deadline) -> None:
        self.graph = graph
        self._budget = budget
        self._deadline = deadline
        self.inputs: dict[int, InputTensor] = {}
        self._done: _Request | None = None
        # The request of the last compute, while `inputs` holds the same records as then.
        self._last: _Request | None = None
        # One infer request per input signature seen: a guest alternating batch sizes keeps both.
        self._requests: OrderedDict[Signature, _Request] = OrderedDict()

    def set_input(self, index: int, tensor: InputTensor) -> None:
        """Record an input (validated against the model) for the next compute."""
        if self.inputs.get(index) is not tensor:
            self.graph.check_input(index, tensor.shape, tensor.ttype)
            self.inputs[index] = tensor
            self._last = None
        self._done = None

    @property
    def serial(self) -> int:
        """The serial of the request the last compute ran (0: none since the last set_input)."""
        return 0 if self._done is None else self._done.serial

    def compute(self) -> None:
        """Run inference on the recorded inputs."""
        inputs = self.inputs
        # Inputs unchanged since the last compute (a guest's inference loop): its request.
        request = self._last or self._request_for(inputs)
        self._done = None
        try:
            self._run(request)
        except RuntimeError as exc:
            request.bound.clear()
            if not request.given:
                raise NNError(NNErrno.RUNTIME_ERROR, f"inference failed: {exc}") from exc
            # An output given a buffer may have outgrown it (a data-dependent shape): once
            # more on a new request that leaves those outputs to OpenVINO.
            varying = frozenset(request.varying | request.given)
            request = self._new_request(request.signature, varying)
            self._last = request
            try:
                self._run(request)
            except RuntimeError as again:
                request.bound.clear()
                raise NNError(NNErrno.RUNTIME_ERROR, f"inference failed: {again}") from again
        self._done = request

    def _run(self, request: _Request) -> None:
        for i, tensor in self.inputs.items():
            request.bind(i, tensor)
        self._infer(request)
        if request.adopted:
            request.settle()

    def _request_for(self, inputs: dict[int, InputTensor]) -> _Request:
        """The infer request for the signature of `inputs` (made on first use)."""
        if len(inputs) < self.graph.input_count:
            missing = [i for i in range(self.graph.input_count) if i not in inputs]
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"compute before set_input: input(s) {missing} not set",
            )
        signature = tuple((inputs[i].shape, inputs[i].ttype) for i in sorted(inputs))
        request = self._requests.get(signature)
        if request is None:
            request = self._new_request(signature)
        else:
            self._requests.move_to_end(signature)
        self._last = request
        return request

    def _new_request(self, signature: Signature, varying: frozenset[int] = frozenset()) -> _Request:
        """An infer request for `signature`, charged to the run (its intermediate tensors);
        `varying`: dynamic outputs it must leave in OpenVINO's own buffers."""
        compiled, keep = self.graph.compiled_for(signature, self._budget)
        inputs = sum(tensor.data.nbytes for tensor in self.inputs.values())
        key = ("request", id(self), signature)
        self._budget.charge(key, REQUEST_MEMORY_FACTOR * inputs, "an inference request")
        try:
            request = _Request(compiled.create_infer_request(), keep, signature, varying)
        except RuntimeError as exc:
            self._budget.release(key)
            raise NNError(NNErrno.RUNTIME_ERROR, f"cannot create an infer request: {exc}") from exc
        self._requests[signature] = request
        while len(self._requests) > MAX_REQUESTS:
            gone, _ = self._requests.popitem(last=False)
            self._budget.release(("request", id(self), gone))
        self._last = None
        return request

    def _infer(self, request: _Request) -> None:
        """Infer; under a deadline, cancel the inference when it passes."""
        infer = request.request
        remaining = self._deadline.remaining()
        if remaining == float("inf"):
            _START_ASYNC(infer, {}, None)
            infer.wait()
            return
        self._deadline.check("compute")
        _START_ASYNC(infer, {}, None)
        if not infer.wait_for(max(1, int(remaining * 1000))):
            self._cancel(request)

    def _cancel(self, request: _Request) -> NoReturn:
        """The deadline passed during an inference: cancel it and end the run. An inference
        that does not stop within CANCEL_GRACE_MS is left running (it reads the run's memory
        and writes `request`'s buffers: the runtime keeps both until it ends)."""
        infer = request.request
        infer.cancel()
        try:
            stopped = infer.wait_for(CANCEL_GRACE_MS)
        except RuntimeError:  # "infer request was canceled"
            stopped = True
        self._requests.clear()  # a cancelled request is not reused (the run ends anyway)
        self._last = None
        if not stopped:
            self._deadline.abandon(
                f"compute (OpenVINO did not stop the cancelled inference in {CANCEL_GRACE_MS} ms)",
                functools.partial(_wait_out, request),
            )
        self._deadline.expire("compute (the inference was cancelled)")

    def repeat(self) -> Repeat | None:
        """How to run the last compute again while the inputs stay as recorded (the C host's
        repeat of a guest's inference loop, `hostcall.NNCache`); None if the next compute must
        come here: the last one failed, or an input is a private copy, bound afresh each time."""
        request = self._done
        if request is None or request is not self._last:
            return None
        if any(t.key is None or request.bound.get(i) != t.key for i, t in self.inputs.items()):
            return None
        infer, end = request.request, self._deadline.end
        return Repeat(
            start=_START_ASYNC,
            start_args=(infer, {}, None),
            wait=infer.wait if end == math.inf else infer.wait_for,
            deadline=end,
            checks=tuple((size, array.nbytes) for size, array in request.adopted.values()),
            settled=functools.partial(self._settled, request),
            expire=functools.partial(self._cancel, request),
        )

    @staticmethod
    def _settled(request: _Request) -> int:
        """A repeat's adopted output changed size: settle the request; its serial now."""
        request.settle()
        return request.serial

    def output(self, index: int) -> npt.NDArray[Any]:
        """Output `index` of the last compute (OpenVINO's own buffer: copy it before the next)."""
        if self._done is None:
            raise NNError(NNErrno.INVALID_ARGUMENT, "get_output before compute")
        if index >= self.graph.output_count:
            raise NNError(
                NNErrno.INVALID_ARGUMENT,
                f"output index {index} is out of range: "
                f"the model has {self.graph.output_count} output(s)",
            )
        return self._done.output(index)

    def output_shape(self, index: int) -> list[int]:
        """The shape of output `index` of the last compute (`output(index)` is a kept buffer whose
        shape may be an earlier one of the same byte size)."""
        self.output(index)  # the same checks
        assert self._done is not None
        return [int(d) for d in self._done.request.get_output_tensor(index).shape]

    def kept_output(self, index: int) -> int | None:
        """The request's serial if `output(index)` is its kept buffer (a static output, the same
        array after each inference of that request), else None."""
        done = self._done
        return done.serial if done is not None and index in done.outputs else None


def _wait_out(request: _Request) -> None:
    """Block until `request`'s abandoned inference ends (holding the request and its buffers)."""
    request.request.wait()
