"""Keep a thread's signal alternate stack across OpenVINO plugin loads.

wasmtime turns guest traps into signals handled on the thread's alternate stack
(`sigaltstack`), installing one of its own the first time a thread runs wasm. OpenVINO's CPU
plugin installs its own (~10 KiB) when a Core loads it, and puts back the one it saw when that
Core is destroyed. Cores destroyed out of order leave the thread on a freed stack, and the next
trap kills the process (SIGSEGV at the trapping instruction). So plugin loads run inside
`kept()`, and Cores live as long as the process (`openvino.shared_core`).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator


class _Stack(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """Run the body, then put this thread's alternate signal stack back as it was."""
    saved = _Stack()
    known = _libc.sigaltstack(None, ctypes.byref(saved)) == 0
    try:
        yield
    finally:
        if known:
            _libc.sigaltstack(ctypes.byref(saved), None)
