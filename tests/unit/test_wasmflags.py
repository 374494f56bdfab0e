"""The wasmtime flag grammar alone: what each spelling parses to, pure (no files, no env)."""

from __future__ import annotations

import re

import pytest

from wasinn_operator.api.wasmflags import (
    Dir,
    Duration,
    Env,
    FlagError,
    Graph,
    Kind,
    Setting,
    Size,
    Toggle,
    format_size,
    parse_flags,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("tokens", "kinds", "texts"),
    [
        (["run"], [Kind.RUN], ["run"]),
        (["-S", "nn,cli"], [Kind.NN, Kind.WASI], ["-S nn", "-S cli"]),
        (["-Snn-graph=openvino::/m/a"], [Kind.NN_GRAPH], ["-S nn-graph=openvino::/m/a"]),
        (["--wasi=inherit-env"], [Kind.INHERIT_ENV], ["--wasi inherit-env"]),
        (["--wasi", "tcp=n"], [Kind.NETWORK], ["--wasi tcp=n"]),
        (["--wasi-modules=experimental-wasi-nn"], [Kind.NN],
         ["--wasi-modules experimental-wasi-nn"]),
        (["--wasi-nn-graph", "onnx::/m"], [Kind.NN_GRAPH], ["--wasi-nn-graph onnx::/m"]),
        (["--env", "A=1", "--env=B"], [Kind.ENV, Kind.HOST_ENV], ["--env A=1", "--env B"]),
        (["--dir", "/a::/b", "--mapdir=/g::/h"], [Kind.DIR, Kind.DIR],
         ["--dir /a::/b", "--mapdir /g::/h"]),
        (["--invoke", "f"], [Kind.INVOKE], ["--invoke f"]),
        (["-W", "timeout=1s,max-memory-size=1M,memory-reservation=1G"],
         [Kind.TIMEOUT, Kind.MAX_MEMORY, Kind.ENGINE_SIZE],
         ["-W timeout=1s", "-W max-memory-size=1M", "-W memory-reservation=1G"]),
        (["-C", "cache=n", "-Oopt-level=2", "--debug=debug-info", "--profile", "jitdump"],
         [Kind.ENGINE] * 4, ["-C cache=n", "-O opt-level=2", "--debug debug-info",
                             "--profile jitdump"]),
        (["--allow-precompiled", "--no-cache", "--models-dir", "/m"],
         [Kind.ENGINE, Kind.WASINN, Kind.WASINN],
         ["--allow-precompiled", "--no-cache", "--models-dir /m"]),
    ],
)  # fmt: skip
def test_kinds_and_texts_in_order(tokens: list[str], kinds: list[Kind], texts: list[str]) -> None:
    parsed = parse_flags(tokens, module=False)
    assert [o.kind for o in parsed.options] == kinds
    assert [o.text for o in parsed.options] == texts
    assert [t for f in parsed.flags for t in f.tokens] == tokens  # nothing lost or reordered


def test_typed_values() -> None:
    parsed = parse_flags(
        ["-S", "nn=n,nn-graph=openvino::/m/x", "--env", "K=v=w", "--mapdir", "/g::/h",
         "-W", "timeout=500ms,max-memory-size=2GiB", "-C", "cache=y"],
        module=False,
    )  # fmt: skip
    nn, graph, env, mapdir, timeout, memory, cache = parsed.options
    assert isinstance(nn, Toggle) and (nn.key, nn.enabled) == ("nn", False)
    assert isinstance(graph, Graph) and (graph.encoding, graph.host) == ("openvino", "/m/x")
    assert isinstance(env, Env) and (env.name, env.value) == ("K", "v=w")
    assert isinstance(mapdir, Dir) and (mapdir.host, mapdir.guest) == ("/h", "/g")
    assert isinstance(timeout, Duration) and timeout.seconds == 0.5
    assert isinstance(memory, Size) and (memory.key, memory.size) == ("max-memory-size", 2 << 30)
    assert isinstance(cache, Setting) and (cache.key, cache.value) == ("cache", "y")


def test_module_and_guest_arguments() -> None:
    parsed = parse_flags(["run", "-S", "nn", "m.wasm", "--env", "X=1"])
    assert (parsed.module, parsed.args) == ("m.wasm", ("--env", "X=1"))
    assert parse_flags(["--", "m.wasm", "a"]).module == "m.wasm"
    dir_default = parse_flags(["--dir", "/data"], module=False).flags[0].options[0]
    assert isinstance(dir_default, Dir) and dir_default.guest == "/data"


def test_with_value_keeps_the_spelling() -> None:
    separate, inline, long = parse_flags(
        ["-W", "max-memory-size=1M", "-Wmax-memory-size=1M", "--wasm=max-memory-size=1M"],
        module=False,
    ).flags
    assert separate.with_value("x") == ("-W", "x")
    assert inline.with_value("x") == ("-Wx",)
    assert long.with_value("x") == ("--wasm=x",)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["--frobnicate"], "unknown flag '--frobnicate'"),
        (["--no-cache=y"], "unknown flag '--no-cache=y'"),
        (["-S", ","], "-S: empty option list ','"),
        (["-S", "nn=maybe"], "-S nn: 'maybe' is not y/n"),
        (["-S", "nn-graph=openvino"], "-S nn-graph: 'openvino' is not ENCODING::DIR"),
        (["--wasi-nn-graph", "::/m"], "--wasi-nn-graph: '::/m' is not ENCODING::DIR"),
        (["--wasi-modules=wasi-crypto"], "--wasi-modules: unknown module 'wasi-crypto'"),
        (["--env", "=x"], "--env: '=x' is not NAME=VALUE"),
        (["--dir", "::/g"], "--dir: needs a host directory and a guest path"),
        (["--mapdir", "/g"], "--mapdir needs GUEST::HOST"),
        (["-W", "timeout=0"], "-W timeout: the duration must be positive"),
        (["-W", "max-memory-size=lots"], "-W max-memory-size: 'lots' is not a size"),
        (["--invoke"], "--invoke needs a value"),
    ],
)
def test_errors_name_the_flag(tokens: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=re.escape(message)):
        parse_flags(tokens, module=False)


def test_format_size() -> None:
    assert [format_size(n) for n in (512 << 20, 4 << 30, 1536 << 10, 1000, 0)] == [
        "512 MiB",
        "4 GiB",
        "1536 KiB",
        "1000 bytes",
        "0 bytes",
    ]
