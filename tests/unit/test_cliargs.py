"""wasmtime-style command-line parsing, old and new syntaxes, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wasinn_operator.api.wasmflags import FlagError, parse_duration, parse_size
from wasinn_operator.runtime import parse_wasm_args
from wasinn_operator.runtime.nn import GraphEncoding

pytestmark = pytest.mark.unit


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mobilenet"
    d.mkdir()
    (d / "model.xml").write_text("<net/>")
    (d / "model.bin").write_bytes(b"")
    return d


def test_seed_guide_legacy_flag_enables_nn() -> None:
    parsed = parse_wasm_args(["--wasi-modules=experimental-wasi-nn", "app.wasm", "1", "2"])
    assert parsed.nn is True
    assert parsed.module == "app.wasm"
    assert parsed.args == ["1", "2"]


def test_run_prefix_and_dash_s_forms(model_dir: Path) -> None:
    parsed = parse_wasm_args(
        ["run", "-S", "nn", f"-Snn-graph=openvino::{model_dir}", "--invoke", "f", "m.wasm"]
    )
    assert parsed.nn is True
    assert parsed.invoke == "f"
    assert [(m.name, m.encoding) for m in parsed.models] == [("mobilenet", GraphEncoding.OPENVINO)]


def test_wasi_long_form_and_wasmtime13_graph_flag(model_dir: Path) -> None:
    parsed = parse_wasm_args(
        ["--wasi", "nn", "--wasi-nn-graph", f"autodetect::{model_dir}", "m.wasm"]
    )
    assert parsed.models[0].encoding is GraphEncoding.OPENVINO


def test_env_dir_and_mapdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    parsed = parse_wasm_args(
        [
            "--env", "A=1", "--env=B=x=y", "--env", "FROM_HOST", "--env", "ABSENT",
            "--dir", f"{tmp_path}::/data", "--dir", str(tmp_path),
            "--mapdir", f"/old::{tmp_path}", "m.wasm",
        ]
    )  # fmt: skip
    assert parsed.env == {"A": "1", "B": "x=y", "FROM_HOST": "h"}
    assert [d.guest for d in parsed.dirs] == ["/data", str(tmp_path), "/old"]


def test_flags_after_module_belong_to_the_guest() -> None:
    parsed = parse_wasm_args(["m.wasm", "--env", "X=1", "-S", "nn"])
    assert parsed.env == {}
    assert parsed.args == ["--env", "X=1", "-S", "nn"]


def test_limits() -> None:
    parsed = parse_wasm_args(["-W", "timeout=1.5s,max-memory-size=64MiB", "m.wasm"])
    assert parsed.timeout == 1.5
    assert parsed.max_memory == 64 << 20


def test_cli_args_mode_rejects_positionals() -> None:
    parsed = parse_wasm_args(["-S", "nn", "--env", "K=V"], module_required=False)
    assert parsed.module is None
    with pytest.raises(FlagError, match=r"unexpected argument 'x\.wasm'"):
        parse_wasm_args(["x.wasm"], module_required=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frobnicate", "m.wasm"], "unknown flag '--frobnicate'"),
        (["-S", "tcp", "m.wasm"], "unsupported WASI option 'tcp'"),
        (["-S", "nn=maybe", "m.wasm"], "nn: 'maybe' is not y/n"),
        (["-S", "nn-graph=openvino", "m.wasm"], "is not ENCODING::DIR"),
        (["-S", "nn-graph=ggml::/proc/nonexistent", "m.wasm"], "unknown graph encoding 'ggml'"),
        (["-S", "nn-graph=onnx::/proc/nonexistent", "m.wasm"], "does not exist"),
        (["--wasi-modules=experimental-wasi-crypto", "m.wasm"], "unknown module"),
        (["--env", "=1", "m.wasm"], "--env: '=1' is not NAME=VALUE"),
        (["--dir", "/proc/none/dir", "m.wasm"], "--dir: '/proc/none/dir' is not a directory"),
        (["--mapdir", "/x", "m.wasm"], "--mapdir needs GUEST::HOST"),
        (["-W", "timeout=soon", "m.wasm"], "is not a duration"),
        (["-W", "fuel=10", "m.wasm"], "unsupported wasm option 'fuel'"),
        (["--invoke"], "--invoke needs a value"),
        (["-S", "nn"], "no wasm module given"),
    ],
)
def test_errors_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=re.escape(message)):
        parse_wasm_args(argv)


def test_onnx_dir_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match=r"onnx model '\w+' lacks .*model.onnx"):
        parse_wasm_args(["-S", f"nn-graph=onnx::{tmp_path}", "m.wasm"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("10", 10.0), ("1.5s", 1.5), ("250ms", 0.25), ("2m", 120.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "-W timeout") == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("64M", 64 << 20), ("64MiB", 64 << 20), ("2G", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, "-W max-memory-size") == size


def test_zero_size_rejected() -> None:
    with pytest.raises(FlagError, match="must be positive"):
        parse_size("0", "-W max-memory-size")
