"""The wasmtime command-line grammar, as tasks and people write it: parsed, never resolved.

Pure (no filesystem, no environment, no wasmtime), so the shim and the operator can read a
task's flags cheaply. Three readers share this one parse: the task policy (`api/policy.py`),
the embedded engine's resolver (`runtime/cliargs.py`: directories, models, host environment)
and the external engine's command builder (`proplet/engines.py`).

Accepted: `run` (as in `wasmtime run`), `-S`/`--wasi` options (`nn`, `nn-graph=ENC::DIR`,
`cli`, `common`, `preview2`, `inherit-env`), wasmtime 13's `--wasi-nn-graph ENC::DIR`, the seed
guide's `--wasi-modules=experimental-wasi-nn`, `--env NAME[=VALUE]`, `--dir HOST[::GUEST]`, the
old `--mapdir GUEST::HOST`, `--invoke NAME`, `-W`/`--wasm` `timeout=`, `max-memory-size=` and
the engine's other sizes (`memory-reservation`, `memory-guard-size`,
`memory-reservation-for-growth`, `max-wasm-stack`). Recognised so that the policy can name them
(the embedded engine supports none): the network options of `-S` (`inherit-network`, `tcp`,
`udp`, `allow-ip-name-lookup`, `network`), `-C`/`--codegen`, `-O`/`--optimize`, `-D`/`--debug`,
`--profile`, `--preload`, `--allow-precompiled`, and wasinn's own options. Anything else is an
error naming the flag. In a full command line the first positional argument is the module and
everything after it goes to the guest; in a task's `cli_args` there is no module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

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
# -S options that change nothing here (wasmtime's defaults), and those that open the network.
WASI_DEFAULTS = frozenset({"cli", "common", "preview2"})
NETWORK_OPTIONS = frozenset({"inherit-network", "tcp", "udp", "allow-ip-name-lookup", "network"})
LEGACY_WASI_MODULES = frozenset({"default", "wasi-common", "experimental-wasi-nn"})
# -W options whose value is a size; max-memory-size is the guest's own limit, the others tune
# the engine.
ENGINE_SIZE_OPTIONS = frozenset(
    {"memory-reservation", "memory-guard-size", "memory-reservation-for-growth", "max-wasm-stack"}
)
# Flags taking KEY[=VALUE],... lists: short form, long form.
OPTION_FLAGS = {
    "-S": "--wasi",
    "-W": "--wasm",
    "-C": "--codegen",
    "-O": "--optimize",
    "-D": "--debug",
}
ENGINE_VALUE_FLAGS = frozenset({"--profile", "--preload"})
ENGINE_SWITCHES = frozenset({"--allow-precompiled"})
# `wasinn run`'s own options (they come before the wasmtime flags).
WASINN_VALUE_OPTIONS = frozenset(
    {
        "--models-dir",
        "--model",
        "--cache-dir",
        "--precision",
        "--target-fallback",
        "--output-limit",
        "--max-graph-bytes",
        "--max-graph-memory",
    }
)
WASINN_SWITCHES = frozenset({"--no-cache"})


class FlagError(ValueError):
    """A malformed or unknown flag; the message names it."""


class Kind(StrEnum):
    """What an option does, as the policy and the engines tell them apart."""

    RUN = "run"  # the `run` subcommand word
    NN = "nn"  # -S nn[=y|n], --wasi-modules=[-]experimental-wasi-nn
    NN_GRAPH = "nn-graph"  # -S nn-graph=ENC::DIR, --wasi-nn-graph ENC::DIR
    WASI = "wasi"  # -S cli/common/preview2, --wasi-modules=default,wasi-common: defaults
    INHERIT_ENV = "inherit-env"  # -S inherit-env: the whole host environment
    NETWORK = "network"  # -S inherit-network, tcp, udp, allow-ip-name-lookup, network
    ENV = "env"  # --env NAME=VALUE
    HOST_ENV = "host-env"  # --env NAME: the host's value of NAME
    DIR = "dir"  # --dir HOST[::GUEST], --mapdir GUEST::HOST
    INVOKE = "invoke"  # --invoke NAME
    TIMEOUT = "timeout"  # -W timeout=
    MAX_MEMORY = "max-memory"  # -W max-memory-size=
    ENGINE_SIZE = "engine-size"  # -W memory-reservation=, max-wasm-stack=, ...
    ENGINE = "engine"  # -C, -O, -D, --profile, --preload, --allow-precompiled
    WASINN = "wasinn"  # --models-dir, --cache-dir, --no-cache, --precision, ...


@dataclass(frozen=True)
class Option:
    """One option of a flag, e.g. `nn` of `-S nn,cli` or the `/a::/b` of `--dir /a::/b`.

    `flag` is the flag as written (`-S`, `--wasi`, `--dir`); `item` is this option as written
    within the flag's value (for single-valued flags, the whole value).
    """

    kind: Kind
    flag: str
    item: str

    @property
    def text(self) -> str:
        """The option as a person reads it in a message: `-S inherit-env`, `--dir /::/host`."""
        return f"{self.flag} {self.item}".strip()


@dataclass(frozen=True)
class Toggle(Option):
    """A y/n option (NN, WASI, INHERIT_ENV, NETWORK); `key` is its name (`nn`, `tcp`)."""

    key: str
    enabled: bool


@dataclass(frozen=True)
class Graph(Option):
    """A named model: `encoding` and the host directory, as written."""

    encoding: str
    host: str


@dataclass(frozen=True)
class Dir(Option):
    """A preopened host directory and the guest path it appears at."""

    host: str
    guest: str


@dataclass(frozen=True)
class Env(Option):
    """A guest environment variable; `value` None means the host's value (HOST_ENV)."""

    name: str
    value: str | None


@dataclass(frozen=True)
class Invoke(Option):
    """The export to call instead of `_start`."""

    name: str


@dataclass(frozen=True)
class Duration(Option):
    """`-W timeout=`: seconds."""

    seconds: float


@dataclass(frozen=True)
class Size(Option):
    """A `-W` size (MAX_MEMORY or ENGINE_SIZE): its key and bytes."""

    key: str
    size: int


@dataclass(frozen=True)
class Setting(Option):
    """A flag or option nothing here interprets (RUN, ENGINE, WASINN): key and raw value."""

    key: str
    value: str


@dataclass(frozen=True)
class Flag:
    """One flag as given: its tokens (`("-S", "nn,cli")`, `("-Snn",)`, `("--wasm=timeout=1s",)`)
    and the options it carries, in order."""

    name: str  # the flag as written, without an inline value: -S, --wasi, --dir, run
    tokens: tuple[str, ...]
    value: str  # the value as written ("" for switches)
    options: tuple[Option, ...]

    def with_value(self, value: str) -> tuple[str, ...]:
        """The same tokens with another value, in the same spelling (separate or inline)."""
        if len(self.tokens) == 2:
            return (self.tokens[0], value)
        head = self.tokens[0][: len(self.tokens[0]) - len(self.value)]
        return (head + value,)


@dataclass(frozen=True)
class WasmFlags:
    """A parsed command line: the flags in order, then the module and its arguments."""

    flags: tuple[Flag, ...]
    module: str | None = None
    args: tuple[str, ...] = ()

    @property
    def options(self) -> Iterator[Option]:
        """Every option of every flag, in the order given."""
        for flag in self.flags:
            yield from flag.options


def parse_flags(tokens: Sequence[str], *, module: bool = True) -> WasmFlags:
    """Parse wasmtime flags, then (with `module`) the module and its arguments.

    With `module=False` the tokens are flags only (a task's `cli_args`): a positional argument
    or `--` is then an error rather than the module.
    """
    stream = _Tokens(list(tokens))
    flags: list[Flag] = []
    if stream.peek() == "run":
        stream.next()
        flags.append(Flag("run", ("run",), "", (Setting(Kind.RUN, "run", "", "run", ""),)))
    while (token := stream.next()) is not None:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            if not module:
                raise FlagError(f"unexpected argument {token!r} among the runtime flags")
            rest = stream.rest()
            return WasmFlags(tuple(flags), token, tuple(rest))
        flags.append(_flag(token, stream))
    rest = stream.rest()
    if module:
        if not rest:
            raise FlagError("no wasm module given")
        return WasmFlags(tuple(flags), rest[0], tuple(rest[1:]))
    if rest or token == "--":
        raise FlagError("'--' is not allowed among the runtime flags")
    return WasmFlags(tuple(flags))


def parse_duration(text: str, flag: str) -> float:
    """Seconds from `10`, `1.5s`, `500ms`, `2m` or `1h`."""
    match = DURATION.match(text.strip())
    if not match:
        raise FlagError(f"{flag}: {text!r} is not a duration (e.g. 30s, 500ms, 2m)")
    value = float(match.group(1))
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    if value <= 0:
        raise FlagError(f"{flag}: the duration must be positive")
    return value * scale


def parse_size(text: str, flag: str) -> int:
    """Bytes from `1048576`, `64M`, `64MiB` or `2G`."""
    match = SIZE.match(text.strip())
    if not match:
        raise FlagError(f"{flag}: {text!r} is not a size (e.g. 512MiB, 2G, 1048576)")
    unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
    size = int(match.group(1)) * SIZE_UNITS[unit]
    if size <= 0:
        raise FlagError(f"{flag}: the size must be positive")
    return size


def format_size(size: int) -> str:
    """`512 MiB`, `4 GiB`, `1536 KiB` or `1000 bytes`: the largest exact binary unit."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def format_seconds(seconds: float) -> str:
    """`600 s`, `1.5 s`."""
    return f"{seconds:g} s"


class _Tokens:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self._tokens[self.pos] if self.pos < len(self._tokens) else None

    def next(self) -> str | None:
        token = self.peek()
        if token is not None:
            self.pos += 1
        return token

    def rest(self) -> list[str]:
        rest, self.pos = self._tokens[self.pos :], len(self._tokens)
        return rest


def _flag(token: str, stream: _Tokens) -> Flag:
    """One flag starting at `token`, with its value taken from the stream when separate."""
    name, eq, inline_value = token.partition("=")
    inline: str | None = inline_value if eq else None
    short = token[:2]
    if short in OPTION_FLAGS and len(token) > 2:
        name, inline = short, token[2:]  # -Snn, -Wtimeout=1s
    takes_value = (
        name in OPTION_FLAGS
        or name in OPTION_FLAGS.values()
        or name in ENGINE_VALUE_FLAGS
        or name in WASINN_VALUE_OPTIONS
        or name in ("--wasi-modules", "--wasi-nn-graph", "--env", "--dir", "--mapdir", "--invoke")
    )
    if not takes_value:
        if name in ENGINE_SWITCHES | WASINN_SWITCHES and inline is None:
            kind = Kind.ENGINE if name in ENGINE_SWITCHES else Kind.WASINN
            return Flag(name, (token,), "", (Setting(kind, name, "", name, ""),))
        raise FlagError(f"unknown flag {token!r}")
    if inline is not None:
        tokens: tuple[str, ...] = (token,)
        value = inline
    else:
        value_token = stream.next()
        if value_token is None:
            raise FlagError(f"{name} needs a value")
        tokens, value = (token, value_token), value_token
    return Flag(name, tokens, value, tuple(_options(name, value)))


def _options(flag: str, value: str) -> list[Option]:
    long = OPTION_FLAGS.get(flag, flag)
    if long == "--wasi":
        return [_wasi_option(flag, item) for item in _split(flag, value)]
    if long == "--wasm":
        return [_wasm_option(flag, item) for item in _split(flag, value)]
    if long in ("--codegen", "--optimize", "--debug"):
        return [_setting(Kind.ENGINE, flag, item) for item in _split(flag, value)]
    if flag in ENGINE_VALUE_FLAGS:
        return [Setting(Kind.ENGINE, flag, value, flag, value)]
    if flag in WASINN_VALUE_OPTIONS:
        return [Setting(Kind.WASINN, flag, value, flag, value)]
    if flag == "--wasi-modules":
        return [_legacy_module(flag, item) for item in _split(flag, value)]
    if flag == "--wasi-nn-graph":
        return [_graph(flag, value, value)]
    if flag == "--env":
        return [_env(flag, value)]
    if flag == "--dir":
        host, _, guest = value.partition("::")
        return [_dir(flag, value, host, guest or host)]
    if flag == "--mapdir":
        guest, sep, host = value.partition("::")
        if not sep:
            raise FlagError("--mapdir needs GUEST::HOST")
        return [_dir(flag, value, host, guest)]
    return [Invoke(Kind.INVOKE, flag, value, value)]  # --invoke


def _split(flag: str, value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise FlagError(f"{flag}: empty option list {value!r}")
    return items


def _setting(kind: Kind, flag: str, item: str) -> Setting:
    key, _, value = item.partition("=")
    return Setting(kind, flag, item, key, value)


def _wasi_option(flag: str, item: str) -> Option:
    key, _, value = item.partition("=")
    if key == "nn-graph":
        return _graph(f"{flag} nn-graph", value, item, flag)
    kinds = {"nn": Kind.NN, "inherit-env": Kind.INHERIT_ENV}
    kind = kinds.get(key) or (
        Kind.WASI if key in WASI_DEFAULTS else Kind.NETWORK if key in NETWORK_OPTIONS else None
    )
    if kind is None:
        raise FlagError(f"{flag}: unknown or unsupported WASI option {key!r}")
    enabled = BOOL_VALUES.get(value.lower())
    if enabled is None:
        raise FlagError(f"{flag} {key}: {value!r} is not y/n")
    return Toggle(kind, flag, item, key, enabled)


def _wasm_option(flag: str, item: str) -> Option:
    key, _, value = item.partition("=")
    if key == "timeout":
        return Duration(Kind.TIMEOUT, flag, item, parse_duration(value, f"{flag} {key}"))
    if key == "max-memory-size":
        return Size(Kind.MAX_MEMORY, flag, item, key, parse_size(value, f"{flag} {key}"))
    if key in ENGINE_SIZE_OPTIONS:
        return Size(Kind.ENGINE_SIZE, flag, item, key, parse_size(value, f"{flag} {key}"))
    raise FlagError(f"{flag}: unknown or unsupported wasm option {key!r}")


def _legacy_module(flag: str, item: str) -> Option:
    name = item.lstrip("-")
    if name not in LEGACY_WASI_MODULES:
        raise FlagError(f"{flag}: unknown module {item!r}")
    kind = Kind.NN if name == "experimental-wasi-nn" else Kind.WASI
    return Toggle(kind, flag, item, name, not item.startswith("-"))


def _graph(where: str, value: str, item: str, flag: str | None = None) -> Graph:
    encoding, sep, directory = value.partition("::")
    if not sep or not encoding or not directory:
        raise FlagError(f"{where}: {value!r} is not ENCODING::DIR")
    return Graph(Kind.NN_GRAPH, flag or where, item, encoding, directory)


def _env(flag: str, value: str) -> Env:
    name, eq, val = value.partition("=")
    if not name or "\0" in value:
        raise FlagError(f"{flag}: {value!r} is not NAME=VALUE")
    if not eq:
        return Env(Kind.HOST_ENV, flag, value, name, None)
    return Env(Kind.ENV, flag, value, name, val)


def _dir(flag: str, value: str, host: str, guest: str) -> Dir:
    if not host or not guest:
        raise FlagError(f"{flag}: needs a host directory and a guest path")
    return Dir(Kind.DIR, flag, value, host, guest)
