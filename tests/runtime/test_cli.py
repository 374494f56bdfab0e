"""`wasinn run` as a user calls it: flags, streaming output, exit codes, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import wat

pytestmark = pytest.mark.runtime


def wasinn(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "run", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


@pytest.fixture
def guest_file(tmp_path: Path) -> Callable[[str], str]:
    def write(name: str) -> str:
        path = tmp_path / f"{name}.wasm"
        path.write_bytes(wat(name))
        return str(path)

    return write


def test_seed_guide_command_classifies(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    proc = wasinn(
        "--wasi-modules=experimental-wasi-nn",
        f"--dir={models_dir}::/models",
        f"--dir={tensors}::/tensors",
        "--env", "MODEL_DIR=/models/efficientnet-lite0",
        str(guest_path("classify-c")), "/tensors/chelsea.rgb.f32",
        cache=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].strip().startswith("1. tiger cat (282)")


def test_named_graph_flag(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    model = models_dir / "efficientnet-lite0"
    proc = wasinn(
        "-S", f"nn-graph=openvino::{model}", f"--dir={model}::/models/efficientnet-lite0",
        "--dir", f"{model / 'tensors'}::/tensors",
        str(guest_path("classify-rust")), "--model", "efficientnet-lite0",
        "/tensors/coffee.rgb.f32",
        cache=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1. espresso (967)" in proc.stdout


def test_models_dir_from_environment(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    proc = wasinn(
        "--dir", f"{tensors}::/tensors", str(guest_path("classify-c")),
        "/tensors/grace_hopper.rgb.f32",
        cache=tmp_path, WASINN_MODELS_DIR=str(models_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1. academic gown" in proc.stdout


def test_exit_codes(guest_file: Callable[[str], str], tmp_path: Path) -> None:
    assert wasinn(guest_file("hello"), cache=tmp_path).stdout == "hello from wasm\n"
    assert wasinn(guest_file("exit7"), cache=tmp_path).returncode == 7
    trapped = wasinn(guest_file("trap"), cache=tmp_path)
    assert trapped.returncode == 134
    assert "wasm trap" in trapped.stderr
    spun = wasinn("-W", "timeout=200ms", guest_file("spin"), cache=tmp_path)
    assert spun.returncode == 124
    assert "timed out after 0.2 s" in spun.stderr
    bad = tmp_path / "bad.wasm"
    bad.write_text("hello")
    notwasm = wasinn(str(bad), cache=tmp_path)
    assert notwasm.returncode == 125
    assert "not a WebAssembly binary" in notwasm.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "x.wasm"], "wasinn run: unknown flag '--bogus'"),
        (["-S", "nn-graph=openvino::/proc/nonexistent", "x.wasm"], "does not exist"),
        (["/proc/nonexistent.wasm"], "cannot read the module"),
        (["--precision", "f8", "x.wasm"], "--precision: 'f8' is not f32, bf16 or f16"),
        (["--models-dir"], "--models-dir needs a value"),
    ],
)
def test_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    proc = wasinn(*args, cache=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_second_run_uses_the_caches(
    guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    args = ("--models-dir", str(models_dir), "--dir", f"{tensors}::/tensors",
            str(guest_path("classify-c")), "/tensors/chelsea.rgb.f32")  # fmt: skip
    assert wasinn(*args, cache=tmp_path).returncode == 0
    modules = list((tmp_path / "modules").glob("*.cwasm"))
    compiled_models = list((tmp_path / "openvino").glob("*.blob"))
    assert len(modules) == 1
    assert compiled_models, "OpenVINO wrote no compiled model to its cache"
    stamps = {p: p.stat().st_mtime_ns for p in [*modules, *compiled_models]}
    assert wasinn(*args, cache=tmp_path).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # reused, not rewritten


def test_graph_limits_flags(
    c_guest: Callable[[str], bytes], models_dir: Path, tmp_path: Path
) -> None:
    hog = tmp_path / "nn_hog.wasm"
    hog.write_bytes(c_guest("nn_hog"))
    common = ("--models-dir", str(models_dir))
    proc = wasinn(*common, "--max-graph-bytes", "1MiB", str(hog), "garbage", "2", cache=tmp_path)
    assert proc.stdout == "load 0 7\ndone\n", proc.stderr
    assert "a load may pass at most 1.0 MiB (max_graph_bytes)" in proc.stderr
    proc = wasinn(*common, "--max-graph-memory=40MiB", str(hog), "distinct", "1", cache=tmp_path)
    assert proc.stdout == "load 0 7\ndone\n", proc.stderr
    assert "of the 40.0 MiB limit (max_graph_memory)" in proc.stderr
    proc = wasinn(*common, "--max-graph-memory=60MiB", str(hog), "distinct", "1", cache=tmp_path)
    assert proc.stdout == "load 0 0\ndone\n", proc.stderr
