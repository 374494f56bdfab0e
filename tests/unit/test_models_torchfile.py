"""The torch-free checkpoint reader: tensors come back exact, and nothing but a state dict loads.

Checkpoints are written here the way torch.save's legacy format writes them, with stand-in
`torch` modules, since torch itself is not installed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
from typing import Any

import numpy as np
import pytest

from wasinn_operator.models.torchfile import CheckpointError, load_state_dict

pytestmark = pytest.mark.unit


class _Storage:
    def __init__(self, key: str, data: np.ndarray[Any, Any]) -> None:
        self.key, self.data = key, data


class _Tensor:
    def __init__(
        self, storage: _Storage, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]
    ):
        self.args = (storage, offset, shape, strides, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)  # type: ignore[attr-defined]


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Just enough of a `torch` module for pickle to name its globals as torch.save does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storage_types[name] = cls

    def _rebuild_tensor_v2(*args: object) -> None:
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    torch.storage_types = storage_types  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def legacy_checkpoint(
    torch: types.ModuleType, state: dict[str, Any], storages: list[_Storage]
) -> bytes:
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _Storage):
                kind = "LongStorage" if obj.data.dtype == np.int64 else "FloatStorage"
                return ("storage", torch.storage_types[kind], obj.key, "cpu", obj.data.size, None)
            return None

    Pickler(out, protocol=2).dump(collections.OrderedDict(state))
    pickle.dump([s.key for s in storages], out, protocol=2)
    for s in storages:
        out.write(
            struct.pack("<q", s.data.size) + s.data.astype(s.data.dtype.newbyteorder("<")).tobytes()
        )
    return out.getvalue()


def test_tensors_come_back_exact_with_offsets_and_strides(fake_torch: types.ModuleType) -> None:
    weights = np.arange(24, dtype=np.float32) / 7
    shared = _Storage("1", weights)
    counter = _Storage("2", np.array([5], dtype=np.int64))
    state = {
        "conv.weight": _Tensor(shared, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        "fc.weight.T": _Tensor(shared, 4, (2, 3), (1, 2)),  # a transposed view into the same data
        "bn.num_batches_tracked": _Tensor(counter, 0, (), ()),
    }
    got = load_state_dict(legacy_checkpoint(fake_torch, state, [shared, counter]))
    assert np.array_equal(got["conv.weight"], weights.reshape(2, 3, 2, 2))
    assert np.array_equal(got["fc.weight.T"], weights[4:10].reshape(3, 2).T)
    assert got["fc.weight.T"].flags.c_contiguous
    assert got["bn.num_batches_tracked"].dtype == np.int64
    assert int(got["bn.num_batches_tracked"]) == 5


def test_a_global_outside_a_state_dict_is_refused(fake_torch: types.ModuleType) -> None:
    header = b"".join(pickle.dumps(h, protocol=2) for h in (0x1950A86A20F9469CFC6C, 1001, {}))
    evil = header + pickle.dumps({"x": os.system}, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing global (os|posix)\.system"):
        load_state_dict(evil)


def test_a_tensor_outside_its_storage_is_refused(fake_torch: types.ModuleType) -> None:
    storage = _Storage("1", np.zeros(4, dtype=np.float32))
    state = {"w": _Tensor(storage, 2, (4,), (1,))}
    with pytest.raises(CheckpointError, match="'w' lies outside its storage"):
        load_state_dict(legacy_checkpoint(fake_torch, state, [storage]))


def test_truncated_and_foreign_files_are_refused(fake_torch: types.ModuleType) -> None:
    storage = _Storage("1", np.ones(8, dtype=np.float32))
    data = legacy_checkpoint(fake_torch, {"w": _Tensor(storage, 0, (8,), (1,))}, [storage])
    with pytest.raises(CheckpointError, match="ends inside its storage data"):
        load_state_dict(data[:-4])
    with pytest.raises(CheckpointError, match="zip-format"):
        load_state_dict(b"PK\x03\x04 a newer torch.save")
    with pytest.raises(CheckpointError, match="not a legacy PyTorch checkpoint"):
        load_state_dict(pickle.dumps(42, protocol=2) * 3)
