"""Tensors of the component wasi:nn host, and `compute` over the backend's execution context.

Each `compute` stands alone: it binds every model input (named by the model's name for it, or
its index in decimal) from the given tensors, checks them as the preview1 host does, infers,
and copies each output into a new tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..nn.abi import NUMPY_DTYPES, NNErrno, NNError, TensorType
from ..nn.context import ExecutionContext, InputTensor
from ..nn.graph import Graph

MAX_RANK = 8

TENSOR_TYPES: dict[str, TensorType] = {
    "FP16": TensorType.F16,
    "FP32": TensorType.F32,
    "FP64": TensorType.F64,
    "U8": TensorType.U8,
    "I32": TensorType.I32,
    "I64": TensorType.I64,
}
TYPE_NAMES = {NUMPY_DTYPES[t]: name for name, t in TENSOR_TYPES.items()}


@dataclass
class HostTensor:
    """A `tensor` resource: dimensions, the WIT type name and the bytes (a private copy)."""

    dims: list[int]
    type_name: str
    data: npt.NDArray[np.uint8]


def _input_index(graph: Graph, name: str) -> int:
    for index, names in enumerate(graph.input_names):
        if name in names:
            return index
    if name.isdigit() and int(name) < graph.input_count:
        return int(name)
    described = ", ".join(
        f"{i} ({'/'.join(sorted(names)) or 'unnamed'})" for i, names in enumerate(graph.input_names)
    )
    raise NNError(
        NNErrno.INVALID_ARGUMENT,
        f"the model has no input named {name!r} (its inputs, by index: {described})",
    )


def _input_tensor(index: int, tensor: HostTensor) -> InputTensor:
    ttype = TENSOR_TYPES.get(tensor.type_name)
    if ttype is None:
        raise NNError(
            NNErrno.UNSUPPORTED_OPERATION,
            f"input {index}: tensor type {tensor.type_name} is not supported "
            f"(use {', '.join(TENSOR_TYPES)})",
        )
    dims = tuple(tensor.dims)
    if not 1 <= len(dims) <= MAX_RANK:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"input {index}: tensor has {len(dims)} dimensions (1 to {MAX_RANK})",
        )
    if 0 in dims:
        raise NNError(
            NNErrno.INVALID_ARGUMENT, f"input {index}: tensor dimensions {list(dims)} contain 0"
        )
    dtype = NUMPY_DTYPES[ttype]
    expected = math.prod(dims) * dtype.itemsize
    if expected != tensor.data.nbytes:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"input {index}: tensor data is {tensor.data.nbytes} bytes; dimensions {list(dims)} "
            f"of {tensor.type_name} need {expected}",
        )
    return InputTensor(dims, ttype, tensor.data.view(dtype).reshape(dims))


def compute(context: ExecutionContext, inputs: list[tuple[str, HostTensor]]) -> None:
    """Bind every input by name or index, then infer."""
    graph = context.graph
    chosen: dict[int, InputTensor] = {}
    for name, tensor in inputs:
        index = _input_index(graph, name)
        if index in chosen:
            raise NNError(NNErrno.INVALID_ARGUMENT, f"input {index} ({name!r}) is given twice")
        chosen[index] = _input_tensor(index, tensor)
    missing = [i for i in range(graph.input_count) if i not in chosen]
    if missing:
        raise NNError(
            NNErrno.INVALID_ARGUMENT,
            f"input(s) {missing} not given (compute takes every input of the model: "
            f"{graph.input_count})",
        )
    context.inputs.clear()  # each compute stands alone: no input of an earlier call remains
    for index, input_tensor in chosen.items():
        context.set_input(index, input_tensor)
    context.compute()


def output_tensor(context: ExecutionContext, index: int) -> HostTensor:
    data = context.output(index)  # OpenVINO's buffer, reused by the next compute: copied
    type_name = TYPE_NAMES.get(data.dtype)
    if type_name is None:
        raise NNError(
            NNErrno.UNSUPPORTED_OPERATION,
            f"output {index} has element type {data.dtype}, which no wasi:nn tensor-type "
            f"carries ({', '.join(TENSOR_TYPES)})",
        )
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8).copy()
    return HostTensor(context.output_shape(index), type_name, raw)
