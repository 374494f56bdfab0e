"""A component guest through the local shim, as Propeller clients submit tasks: warm worker
and fresh process both classify with it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CHELSEA, SHIM_BACKENDS, Shim, ShimBackend

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ShimBackend:
    """The local backend: the shim's own pool runs the task."""
    return SHIM_BACKENDS["local"](request)


@pytest.mark.parametrize("mode", [[], ["--fresh-process"]])
def test_component_task_classifies(
    make_shim: Callable[..., Shim], guest_path: Callable[[str], Path], mode: list[str]
) -> None:
    shim = make_shim("--workers", "1", *mode)
    wasm = base64.b64encode(guest_path("classify-component").read_bytes()).decode()
    task_id = shim.create("component", file=wasm, cli_args=["-S", "nn"], inputs=CHELSEA)
    assert shim.http.post(f"/tasks/{task_id}/start").status_code == 200
    final = shim.wait_state(task_id)
    assert final["state"] == 3, final
    assert "1. tiger cat (282)" in str(final["results"])
