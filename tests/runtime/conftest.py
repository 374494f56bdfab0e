"""Runtime fixtures: engines per precision, the WAT shim guest, native OpenVINO baselines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import wasmtime

from wasinn_operator.runtime import Runtime, RuntimeConfig
from wasinn_operator.runtime.nn.openvino import shared_core

GUESTS = Path(__file__).parent / "guests"
Native = Callable[[Path, npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]


def wat(name: str) -> bytes:
    """A test guest from tests/runtime/guests, compiled from WAT."""
    return wasmtime.wat2wasm((GUESTS / f"{name}.wat").read_text())


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """An engine at f32 precision (comparable to the f32 goldens) with a private cache."""
    cache = tmp_path_factory.mktemp("cache-f32")
    return Runtime(RuntimeConfig(cache_dir=cache, inference_precision="f32"))


@pytest.fixture(scope="session")
def default_runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """An engine at the device's default precision."""
    return Runtime(RuntimeConfig(cache_dir=tmp_path_factory.mktemp("cache-default")))


def native_outputs(
    model_file: Path, data: npt.NDArray[np.float32], precision: str | None
) -> list[npt.NDArray[np.float32]]:
    """Every output of native OpenVINO on CPU for one input, at the given precision."""
    props = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
    compiled = shared_core().compile_model(str(model_file), "CPU", props)
    request = compiled.create_infer_request()
    request.infer({0: data})
    return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
