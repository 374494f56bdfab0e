"""The proplet's external engine with the real wasmtime CLI (built by hack/build-wasmtime-cli.sh):
the same classification as the embedded engine, from the seed guide's legacy flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import ROOT, missing

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def wasmtime_cli() -> str:
    explicit = os.environ.get("WASINN_WASMTIME_CLI")
    if explicit:
        return explicit
    proc = subprocess.run(
        [str(ROOT / "hack" / "build-wasmtime-cli.sh")],
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if proc.returncode != 0:
        missing(f"the wasmtime CLI could not be built: {proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


def run(
    task: dict[str, object], models_dir: Path, tmp: Path, **env: str
) -> tuple[str, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={
            **os.environ,
            "WASINN_TASK": json.dumps(task),
            "WASINN_MODELS_DIR": str(models_dir),
            "WASINN_TERMINATION_LOG": str(tmp / "term"),
            "WASINN_CACHE_DIR": str(tmp / "cache"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads((tmp / "term").read_text())


@pytest.mark.parametrize("guest", ["classify-c", "classify-rust"])
def test_same_top5_as_the_embedded_engine(
    guest: str,
    wasmtime_cli: str,
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    task = {
        "wasm": {"path": str(guest_path(guest))},
        "cliArgs": ["--wasi-modules=experimental-wasi-nn"],
        "env": {"MODEL_DIR": "/models/efficientnet-lite0"},
        "args": [
            "/models/efficientnet-lite0/tensors/chelsea.rgb.f32",
            "/models/efficientnet-lite0/tensors/coffee.rgb.f32",
        ],
    }
    external, summary = run(task, models_dir, tmp_path, PROPLET_EXTERNAL_WASM_RUNTIME=wasmtime_cli)
    assert summary["engine"] == "wasmtime-cli"
    embedded, _ = run(
        {**task, "engine": "embedded"},
        models_dir,
        tmp_path,
        PROPLET_EXTERNAL_WASM_RUNTIME=wasmtime_cli,
    )
    assert external == embedded
    assert "1. tiger cat (282)" in external
    assert "1. espresso (967)" in external


def test_named_model_and_failure(
    wasmtime_cli: str, guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    task = {
        "wasm": {"path": str(guest_path("classify-c"))},
        "engine": "wasmtime-cli",
        "args": [
            "--model",
            "efficientnet-lite0",
            "/models/efficientnet-lite0/tensors/grace_hopper.rgb.f32",
        ],
    }
    out, _ = run(task, models_dir, tmp_path, PROPLET_EXTERNAL_WASM_RUNTIME=wasmtime_cli)
    assert "1. academic gown" in out
    bad = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={
            **os.environ,
            "WASINN_MODELS_DIR": str(models_dir),
            "WASINN_TERMINATION_LOG": str(tmp_path / "t2"),
            "PROPLET_EXTERNAL_WASM_RUNTIME": wasmtime_cli,
            "WASINN_TASK": json.dumps({**task, "args": ["--model", "nope", "/x"]}),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 1
    summary = json.loads((tmp_path / "t2").read_text())
    assert summary["state"] == "Failed"
    assert str(summary["error"]).startswith("exited with code 1: ")
    assert "nope" in str(summary["error"])  # the tail of the guest's stderr says why
