"""`wasinn [flags] module.wasm [args]`: wasmtime's implicit run, beside the subcommands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import wat

pytestmark = pytest.mark.runtime


def wasinn(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "WASINN_CACHE_DIR": str(cwd / "cache"), **env},
        check=False,
    )


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    path = tmp_path / "hello.wasm"
    path.write_bytes(wat("hello"))
    return path


def test_module_without_run(hello: Path, tmp_path: Path) -> None:
    forms = [["hello.wasm"], [str(hello)], ["--dir", str(tmp_path), "hello.wasm"],
             ["-S", "nn", "hello.wasm"], ["-Snn", "--env", "A=b", "hello.wasm", "arg"],
             ["--no-cache", "-W", "timeout=30s", "hello.wasm"], ["run", "hello.wasm"]]  # fmt: skip
    for args in forms:
        proc = wasinn(*args, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (0, "hello from wasm\n"), (args, proc.stderr)


def test_classifies_like_wasmtime_without_run(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    for guest in ("classify-c", "classify-component"):
        proc = wasinn(
            "-S", "nn", "-S", f"nn-graph=openvino::{models_dir / 'efficientnet-lite0'}",
            "--dir", f"{tensors}::/tensors", str(guest_path(guest)), "/tensors/coffee.rgb.f32",
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[1].strip().startswith("1. espresso (967)")


def test_commands_keep_priority(hello: Path, tmp_path: Path) -> None:
    # Files named like commands do not turn the commands into runs.
    for name in ("run", "proplet", "shim", "operator"):
        (tmp_path / name).write_bytes(hello.read_bytes())
    shim = wasinn("shim", "--help", cwd=tmp_path)
    assert shim.returncode == 0 and "--port" in shim.stdout
    proplet = wasinn("proplet", "--help", cwd=tmp_path)
    assert proplet.returncode == 0 and "serve" in proplet.stdout
    run_help = wasinn("run", "--help", cwd=tmp_path)
    assert run_help.returncode == 0 and "graph encodings" in run_help.stdout


def test_help_version_and_unknown_words(tmp_path: Path) -> None:
    top = wasinn("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("run", "proplet", "operator", "shim"):
        assert f"\n    {command} " in top.stdout
    assert "`run` may be left out" in top.stdout
    version = wasinn("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("wasinn ")
    unknown = wasinn("frobnicate", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "invalid choice: 'frobnicate'" in unknown.stderr
    flag = wasinn("--bogus", "x.wasm", cwd=tmp_path)
    assert flag.returncode == 2
    assert "unknown flag '--bogus'" in flag.stderr
    missing = wasinn("missing.wasm", cwd=tmp_path)
    assert missing.returncode == 2
    assert "cannot read the module" in missing.stderr
