"""Which command lines are wasmtime's implicit `run` (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasinn_operator.cli import _implicit_run

pytestmark = pytest.mark.unit
COMMANDS = {"run", "proplet", "operator", "shim"}


@pytest.mark.parametrize(
    ("args", "implicit"),
    [
        (["module.wasm"], True),
        (["-S", "nn", "module.wasm"], True),
        (["--dir", "x", "module.wasm"], True),
        (["--models-dir", "m", "module.wasm"], True),
        (["dir/module"], True),
        (["module.wat"], True),
        (["run", "module.wasm"], False),
        (["proplet", "run"], False),
        (["shim"], False),
        (["operator"], False),
        (["--help"], False),
        (["-h"], False),
        (["--version"], False),
        ([], False),
        (["frobnicate"], False),
    ],
)
def test_implicit_run(args: list[str], implicit: bool) -> None:
    assert _implicit_run(args, COMMANDS) is implicit


def test_an_existing_file_is_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "guest").write_bytes(b"\0asm")
    assert _implicit_run(["guest"], COMMANDS)
    (tmp_path / "shim").write_bytes(b"\0asm")
    assert not _implicit_run(["shim"], COMMANDS)
