"""Component-model guests: WASI 0.2 commands with `wasi:nn@0.2.0-rc-2024-10-28` over OpenVINO."""

from .bridge import wrap
from .nn import DEFAULT_TENSOR_BYTES, PACKAGE, ComponentNNHost
from .run import ComponentError, call_run, check_world, command_export, link, prepare

__all__ = [
    "DEFAULT_TENSOR_BYTES",
    "PACKAGE",
    "ComponentError",
    "ComponentNNHost",
    "call_run",
    "check_world",
    "command_export",
    "link",
    "prepare",
    "wrap",
]
