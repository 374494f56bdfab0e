"""Reading a PyTorch checkpoint's tensors without torch, and without running its pickles.

Handles the legacy `torch.save` format (before PyTorch 1.6) that the EfficientNet-Lite0 weights
use: five pickles in a row (magic number, protocol version, system info, the state dict whose
tensors refer to storages by persistent id, the storage keys), then each storage's raw
little-endian data after an int64 element count. The unpickler resolves exactly the globals a
state dict needs and refuses every other one, so a crafted file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_TYPES: dict[str, type[np.generic]] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class CheckpointError(ValueError):
    """Not a checkpoint this reader accepts; the message says why."""


@dataclass
class _Storage:
    dtype: type[np.generic]
    count: int
    data: npt.NDArray[Any] | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage, offset: int, shape: Any, strides: Any, *_rest: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(strides))


class _StateDictUnpickler(pickle.Unpickler):
    ALLOWED: ClassVar[dict[tuple[str, str], Callable[..., Any] | str]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        **{("torch", name): name for name in STORAGE_TYPES},
    }

    def __init__(self, file: io.BytesIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise CheckpointError(f"refusing global {module}.{name}: not part of a state dict")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", type, key, location, element count, view): views are not used by torch
        # since 0.4 and not accepted here
        if not (
            isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None
        ):
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, count, _view = pid
        if storage_type not in STORAGE_TYPES or not isinstance(count, int) or count < 0:
            raise CheckpointError(f"unexpected storage {storage_type!r} of {count!r} elements")
        storage = self.storages.setdefault(str(key), _Storage(STORAGE_TYPES[storage_type], count))
        if storage.count != count:
            raise CheckpointError(f"storage {key} is declared with two sizes")
        return storage


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise CheckpointError(f"refusing global {module}.{name} in a checkpoint header")


def load_state_dict(data: bytes) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a legacy-format checkpoint, by name, as contiguous numpy arrays."""
    if data[:2] == b"PK":
        raise CheckpointError("a zip-format (PyTorch >= 1.6) checkpoint; only the legacy one")
    f = io.BytesIO(data)
    try:
        if _NoGlobals(f).load() != LEGACY_MAGIC or _NoGlobals(f).load() != LEGACY_PROTOCOL:
            raise CheckpointError("not a legacy PyTorch checkpoint (magic number or protocol)")
        _NoGlobals(f).load()  # system info: endianness and C type sizes
        storages: dict[str, _Storage] = {}
        state = _StateDictUnpickler(f, storages).load()
        keys = _NoGlobals(f).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from None
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise CheckpointError("the storage key list does not match the storages used")
    for key in keys:
        storage = storages[str(key)]
        (count,) = struct.unpack("<q", _read(f, 8))
        if count != storage.count:
            raise CheckpointError(f"storage {key}: {count} elements, declared {storage.count}")
        nbytes = count * np.dtype(storage.dtype).itemsize
        storage.data = np.frombuffer(
            _read(f, nbytes), dtype=np.dtype(storage.dtype).newbyteorder("<")
        )
    if not isinstance(state, dict):
        raise CheckpointError("the checkpoint does not hold a state dict")
    return {str(name): _materialise(name, ref) for name, ref in state.items()}


def _read(f: io.BytesIO, n: int) -> bytes:
    chunk = f.read(n)
    if len(chunk) != n:
        raise CheckpointError("the checkpoint ends inside its storage data")
    return chunk


def _materialise(name: object, ref: object) -> npt.NDArray[Any]:
    if not isinstance(ref, _TensorRef) or ref.storage.data is None:
        raise CheckpointError(f"{name!r} is not a tensor")
    data = ref.storage.data
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=data.dtype.newbyteorder("="))
    span = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides, strict=True))
    if ref.offset < 0 or min(ref.strides, default=0) < 0 or ref.offset + span > data.size:
        raise CheckpointError(f"tensor {name!r} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * data.itemsize for s in ref.strides),
        writeable=False,
    )
    return view.astype(view.dtype.newbyteorder("="), order="C")  # a native-order copy
