"""Runtime fixtures: engines per precision, test guests (WAT, and C built with clang), native
OpenVINO baselines."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import wasmtime

from wasinn_operator.runtime import Runtime, RuntimeConfig, lingering
from wasinn_operator.runtime.nn.openvino import shared_core

from ..conftest import missing

GUESTS = Path(__file__).parent / "guests"
Native = Callable[[Path, npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]


def wat(name: str) -> bytes:
    """A test guest from tests/runtime/guests, compiled from WAT."""
    return wasmtime.wat2wasm((GUESTS / f"{name}.wat").read_text())


@pytest.fixture(scope="session")
def c_guest(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    """A test guest from tests/runtime/guests/NAME.c, built with clang for wasm32-wasi."""
    out = tmp_path_factory.mktemp("c-guests")

    def build(name: str) -> bytes:
        wasm = out / f"{name}.wasm"
        if not wasm.is_file():
            clang = shutil.which("clang")
            if clang is None:
                missing("clang is not installed (clang lld wasi-libc libclang-rt-14-dev-wasm32)")
            source = GUESTS / f"{name}.c"
            proc = subprocess.run(
                [str(clang), "--target=wasm32-wasi", "-O2", "-Wall", "-Wextra", "-o", str(wasm),
                 str(source)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                missing(f"clang cannot build {source} for wasm32-wasi: {proc.stderr[-500:]}")
        return wasm.read_bytes()

    return build


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


def wait_for_lingering() -> None:
    """Wait until no abandoned inference of an earlier run is still running in this process."""
    deadline = time.monotonic() + 300
    while lingering.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lingering.count() == 0, "an abandoned inference ran for 300 s"
