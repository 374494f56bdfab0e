"""wasmtime-style command lines for the embedded engine: the parsed flags, resolved.

The grammar is `api/wasmflags.py` (shared with the policy and the external engine); this module
turns its options into what the embedded engine runs: host directories that exist, named models
found on disk, and the host's values for `--env NAME` and `-S inherit-env` (which only `wasinn
run` lets through: the task policy refuses them). Options the embedded engine cannot honour
(sockets, engine tuning, codegen) are errors naming them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..api.wasmflags import (
    Dir,
    Duration,
    Env,
    FlagError,
    Graph,
    Invoke,
    Kind,
    Option,
    Size,
    Toggle,
    WasmFlags,
    parse_flags,
)
from .nn.models import ModelError, NamedModel, named_model
from .spec import DirMount, RunSpec

__all__ = ["WasmArgs", "parse_wasm_args", "resolve"]


@dataclass
class WasmArgs:
    """The parsed command line: the module, its guest arguments and engine options."""

    module: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dirs: list[DirMount] = field(default_factory=list)
    models: list[NamedModel] = field(default_factory=list)
    nn: bool | None = None
    inherit_env: bool = False
    invoke: str | None = None
    timeout: float | None = None
    max_memory: int | None = None

    def to_spec(self, wasm: bytes, program_name: str | None = None) -> RunSpec:
        """A `RunSpec` for these options and the module bytes."""
        env = dict(os.environ) if self.inherit_env else {}
        env.update(self.env)
        return RunSpec(
            wasm=wasm,
            args=list(self.args),
            env=env,
            dirs=list(self.dirs),
            models=list(self.models),
            nn=self.nn,
            invoke=self.invoke,
            program_name=program_name or self.module or "main.wasm",
            timeout=self.timeout,
            max_memory=self.max_memory,
        )


def parse_wasm_args(tokens: list[str], *, module_required: bool = True) -> WasmArgs:
    """Parse wasmtime flags, then the module and its arguments, and resolve them.

    With `module_required=False` the tokens are flags only (Propeller's `cli_args`): a positional
    argument is then an error rather than the module.
    """
    return resolve(parse_flags(tokens, module=module_required))


def resolve(flags: WasmFlags, environ: Mapping[str, str] = os.environ) -> WasmArgs:
    """The embedded engine's options for parsed flags; `environ` answers `--env NAME`."""
    parsed = WasmArgs(module=flags.module, args=list(flags.args))
    for option in flags.options:
        _apply(parsed, option, environ)
    return parsed


def _apply(parsed: WasmArgs, option: Option, environ: Mapping[str, str]) -> None:
    if isinstance(option, Toggle):
        if option.kind is Kind.NN:
            parsed.nn = option.enabled
        elif option.kind is Kind.INHERIT_ENV:
            parsed.inherit_env = option.enabled
        elif option.kind is Kind.NETWORK and option.enabled:
            raise FlagError(
                f"{option.flag}: unsupported WASI option {option.key!r} (the embedded engine "
                "has no sockets)"
            )
    elif isinstance(option, Graph):
        try:
            parsed.models.append(named_model(option.encoding, option.host))
        except ModelError as exc:
            raise FlagError(f"{option.text}: {exc}") from None
    elif isinstance(option, Dir):
        path = Path(option.host).expanduser()
        if not path.is_dir():
            raise FlagError(f"{option.flag}: {option.host!r} is not a directory")
        parsed.dirs.append(DirMount(path.resolve(), option.guest))
    elif isinstance(option, Env):
        value = option.value if option.value is not None else environ.get(option.name)
        if value is not None:  # wasmtime: `--env NAME` passes the host's value if it has one
            parsed.env[option.name] = value
    elif isinstance(option, Invoke):
        parsed.invoke = option.name
    elif isinstance(option, Duration):
        parsed.timeout = option.seconds
    elif isinstance(option, Size) and option.kind is Kind.MAX_MEMORY:
        parsed.max_memory = option.size
    elif option.kind is Kind.WASINN:
        raise FlagError(f"{option.text}: wasinn options go before the wasmtime flags")
    elif option.kind in (Kind.ENGINE, Kind.ENGINE_SIZE):
        raise FlagError(f"{option.text}: unsupported wasm option (not in the embedded engine)")
