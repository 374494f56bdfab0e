"""wasi-nn for the embedded engine: the `wasi_ephemeral_nn` host over OpenVINO."""

from . import ovimport  # noqa: F401  # first: openvino without its converter (see there)
from .abi import ExecutionTarget, GraphEncoding, NNErrno, TensorType
from .host import NNHost
from .models import ModelError, NamedModel, named_model, scan_models_dir
from .openvino import BackendConfig, OpenVINOBackend

__all__ = [
    "BackendConfig",
    "ExecutionTarget",
    "GraphEncoding",
    "ModelError",
    "NNErrno",
    "NNHost",
    "NamedModel",
    "OpenVINOBackend",
    "TensorType",
    "named_model",
    "scan_models_dir",
]
