"""wasmtime-style command lines, old and new, as Propeller tasks and users write them.

Accepted: `run` (ignored, as in `wasmtime run`), `-S`/`--wasi` options (`nn`, `nn-graph=ENC::DIR`,
`cli`, `common`, `preview2`, `inherit-env`), wasmtime 13's `--wasi-nn-graph ENC::DIR`, the seed
guide's `--wasi-modules=experimental-wasi-nn`, `--env K[=V]`, `--dir HOST[::GUEST]`, the old
`--mapdir GUEST::HOST`, `--invoke NAME`, `-W`/`--wasm` `timeout=` and `max-memory-size=`. The
first positional argument is the module; everything after it goes to the guest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .nn.models import ModelError, NamedModel, named_model
from .spec import DirMount, RunSpec

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
SIZE = re.compile(r"^(\d+)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
BOOL_VALUES = {
    "": True,
    "y": True,
    "yes": True,
    "true": True,
    "n": False,
    "no": False,
    "false": False,
}
IGNORED_WASI_OPTIONS = {"cli", "common", "preview2"}
LEGACY_WASI_MODULES = {"default", "wasi-common", "experimental-wasi-nn"}


class ArgsError(ValueError):
    """A malformed or unknown flag; the message names it."""


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


def parse_duration(text: str, flag: str) -> float:
    """Seconds from `10`, `1.5s`, `500ms`, `2m` or `1h`."""
    match = DURATION.match(text.strip())
    if not match:
        raise ArgsError(f"{flag}: {text!r} is not a duration (e.g. 30s, 500ms, 2m)")
    value = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    if value <= 0:
        raise ArgsError(f"{flag}: the duration must be positive")
    return value * scale


def parse_size(text: str, flag: str) -> int:
    """Bytes from `1048576`, `64M`, `64MiB` or `2G`."""
    match = SIZE.match(text.strip())
    if not match:
        raise ArgsError(f"{flag}: {text!r} is not a size (e.g. 512MiB, 2G, 1048576)")
    unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
    size = int(match.group(1)) * SIZE_UNITS[unit]
    if size <= 0:
        raise ArgsError(f"{flag}: the size must be positive")
    return size


class _Tokens:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self.pos = 0

    def next(self) -> str | None:
        if self.pos >= len(self._tokens):
            return None
        self.pos += 1
        return self._tokens[self.pos - 1]

    def rest(self) -> list[str]:
        rest, self.pos = self._tokens[self.pos :], len(self._tokens)
        return rest

    def value(self, flag: str, inline: str | None) -> str:
        if inline is not None:
            return inline
        value = self.next()
        if value is None:
            raise ArgsError(f"{flag} needs a value")
        return value


def parse_wasm_args(tokens: list[str], *, module_required: bool = True) -> WasmArgs:
    """Parse wasmtime flags, then the module and its arguments.

    With `module_required=False` the tokens are flags only (Propeller's `cli_args`): a positional
    argument is then an error rather than the module.
    """
    parsed = WasmArgs()
    stream = _Tokens(list(tokens))
    if tokens[:1] == ["run"]:
        stream.next()
    while (token := stream.next()) is not None:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            if not module_required:
                raise ArgsError(f"unexpected argument {token!r} among the runtime flags")
            parsed.module = token
            parsed.args = stream.rest()
            return parsed
        _apply_flag(parsed, token, stream)
    if module_required:
        rest = stream.rest()
        if not rest:
            raise ArgsError("no wasm module given")
        parsed.module, parsed.args = rest[0], rest[1:]
    elif stream.rest():
        raise ArgsError("'--' is not allowed among the runtime flags")
    return parsed


def _apply_flag(parsed: WasmArgs, token: str, stream: _Tokens) -> None:
    name, eq, inline_value = token.partition("=")
    inline = inline_value if eq else None
    if name.startswith("-S") and name not in ("-S",) and not name.startswith("--"):
        name, inline = "-S", token[2:]
    if name.startswith("-W") and name != "-W" and not name.startswith("--"):
        name, inline = "-W", token[2:]
    if name in ("-S", "--wasi"):
        for option in _split_options(stream.value(name, inline)):
            _wasi_option(parsed, option, name)
    elif name in ("-W", "--wasm"):
        for option in _split_options(stream.value(name, inline)):
            _wasm_option(parsed, option, name)
    elif name == "--wasi-modules":
        for item in _split_options(stream.value(name, inline)):
            if item.lstrip("-") not in LEGACY_WASI_MODULES:
                raise ArgsError(f"--wasi-modules: unknown module {item!r}")
            if item.lstrip("-") == "experimental-wasi-nn":
                parsed.nn = not item.startswith("-")
    elif name == "--wasi-nn-graph":
        _add_graph(parsed, stream.value(name, inline), name)
    elif name == "--env":
        _add_env(parsed, stream.value(name, inline))
    elif name == "--dir":
        host, _, guest = stream.value(name, inline).partition("::")
        parsed.dirs.append(_mount(host, guest or host, name))
    elif name == "--mapdir":
        guest, sep, host = stream.value(name, inline).partition("::")
        if not sep:
            raise ArgsError("--mapdir needs GUEST::HOST")
        parsed.dirs.append(_mount(host, guest, name))
    elif name == "--invoke":
        parsed.invoke = stream.value(name, inline)
    else:
        raise ArgsError(f"unknown flag {token!r}")


def _split_options(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ArgsError(f"empty option list {value!r}")
    return items


def _wasi_option(parsed: WasmArgs, option: str, flag: str) -> None:
    key, _, value = option.partition("=")
    if key == "nn-graph":
        _add_graph(parsed, value, f"{flag} nn-graph")
    elif key in ("nn", "inherit-env") or key in IGNORED_WASI_OPTIONS:
        enabled = BOOL_VALUES.get(value.lower())
        if enabled is None:
            raise ArgsError(f"{flag} {key}: {value!r} is not y/n")
        if key == "nn":
            parsed.nn = enabled
        elif key == "inherit-env":
            parsed.inherit_env = enabled
    else:
        raise ArgsError(f"{flag}: unknown or unsupported WASI option {key!r}")


def _wasm_option(parsed: WasmArgs, option: str, flag: str) -> None:
    key, _, value = option.partition("=")
    if key == "timeout":
        parsed.timeout = parse_duration(value, f"{flag} timeout")
    elif key == "max-memory-size":
        parsed.max_memory = parse_size(value, f"{flag} max-memory-size")
    else:
        raise ArgsError(f"{flag}: unknown or unsupported wasm option {key!r}")


def _add_graph(parsed: WasmArgs, value: str, flag: str) -> None:
    encoding, sep, directory = value.partition("::")
    if not sep or not encoding or not directory:
        raise ArgsError(f"{flag}: {value!r} is not ENCODING::DIR")
    try:
        parsed.models.append(named_model(encoding, directory))
    except ModelError as exc:
        raise ArgsError(f"{flag}: {exc}") from None


def _add_env(parsed: WasmArgs, value: str) -> None:
    key, eq, val = value.partition("=")
    if not key or "\0" in value:
        raise ArgsError(f"--env: {value!r} is not NAME=VALUE")
    if not eq:
        if key not in os.environ:
            return  # wasmtime semantics: `--env NAME` passes the host's value if it has one
        val = os.environ[key]
    parsed.env[key] = val


def _mount(host: str, guest: str, flag: str) -> DirMount:
    if not host or not guest:
        raise ArgsError(f"{flag}: needs a host directory and a guest path")
    path = Path(host).expanduser()
    if not path.is_dir():
        raise ArgsError(f"{flag}: {host!r} is not a directory")
    return DirMount(path.resolve(), guest)
