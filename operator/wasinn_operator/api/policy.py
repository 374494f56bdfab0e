"""The task policy: what a tenant may choose, decided in one place before anything runs.

A tenant is anyone who can reach the REST API, publish on the MQTT channel or create WasiNNTask
objects; everything a task carries is theirs. Deny by default: of the wasmtime options a task's
`cli_args` may hold (`api/wasmflags.py`), only those in `ALLOWED` pass, and some of those only
within limits: host directories (`--dir`, `--mapdir`, `-S nn-graph`, `--wasi-nn-graph`) under
an operator-configured allow-list (none by default; compared after resolving `..` and, where
the paths are the checker's own, symlinks), never a guest path at or under `/models` (the
service mounts the models there read-only itself), `--env` names outside the reserved ones, and
a deadline and a linear-memory limit up to the service's maxima. The answer is either the
effective `Limits` (defaults applied) or a `PolicyError` whose message names the field and says
what is allowed.

The shim checks REST and MQTT tasks, the operator WasiNNTask specs, and the proplet every task
it runs (its policy arrives as `WASINN_POLICY`, JSON; none means the strict default), where the
limits are also applied to the run. `wasinn run` on a person's own machine has no policy.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from .modelsource import ModelSource, ModelSourceError, check_origin, check_sources
from .wasmflags import (
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
    format_seconds,
    format_size,
    parse_flags,
)

MODELS_GUEST_DIR = "/models"
POLICY_ENV = "WASINN_POLICY"
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 3600.0
DEFAULT_MAX_MEMORY = 512 << 20
MAX_MODEL_BYTES = 4 << 30
MAX_MEMORY = 4 << 30
MAX_FIELD_BYTES = 64 << 10
# Names a task's env may not set: the loader's and the engines' own settings (the external
# engine is a wasmtime process; the embedded one runs in Python with OpenVINO), and the
# service's. Compared without regard to case.
RESERVED_ENV_PREFIXES = (
    "LD_",
    "WASINN_",
    "PROPLET_",
    "WASMTIME_",
    "RUST_",
    "OV_",
    "OPENVINO_",
    "PYTHON",
    "MALLOC_",
)
RESERVED_ENV_NAMES = ("PATH", "GLIBC_TUNABLES", "EXTERNAL_WASM_RUNTIME", "INTEL_OPENVINO_DIR")
RESERVED_ENV_TEXT = (
    f"names starting {', '.join(RESERVED_ENV_PREFIXES)} and {', '.join(RESERVED_ENV_NAMES)} "
    "are reserved"
)
# Taints that keep workloads off the control plane: a task may not tolerate them.
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# What a task's cli_args may hold; DIR, NN_GRAPH, ENV, INVOKE, TIMEOUT and MAX_MEMORY are
# further checked. Every other kind is refused with the reason in REFUSED.
ALLOWED = frozenset(
    {
        Kind.RUN,
        Kind.NN,
        Kind.WASI,
        Kind.NN_GRAPH,
        Kind.ENV,
        Kind.DIR,
        Kind.INVOKE,
        Kind.TIMEOUT,
        Kind.MAX_MEMORY,
    }
)
REFUSED = {
    Kind.INHERIT_ENV: "the host environment is not available to tasks",
    Kind.HOST_ENV: "the host environment is not available to tasks (give NAME=VALUE)",
    Kind.NETWORK: "network access is not available to tasks",
    Kind.ENGINE_SIZE: "engine tuning is set by the service (tasks may set -W timeout and "
    "-W max-memory-size)",
    Kind.ENGINE: "engine, cache and debugging options are set by the service, not by tasks",
    Kind.WASINN: "wasinn options are set by the service, not by tasks",
}
if TYPE_CHECKING:  # only annotations: the policy itself needs no pydantic
    from .crd import WasiNNTaskSpec

Resolve = Callable[[str], str]
_Limit = TypeVar("_Limit", int, float)


class PolicyError(ValueError):
    """A task asks for something the policy does not allow; the message names the field."""


@dataclass(frozen=True)
class TaskPolicy:
    """What the service lets tasks choose: host directories, deadlines, memory, field sizes.

    Times are seconds, sizes bytes. Host directories are absolute and normalised.
    """

    allow_host_dirs: tuple[str, ...] = ()
    default_timeout: float = DEFAULT_TIMEOUT
    max_timeout: float = MAX_TIMEOUT
    default_max_memory: int = DEFAULT_MAX_MEMORY
    max_memory: int = MAX_MEMORY
    max_field_bytes: int = MAX_FIELD_BYTES
    allow_model_origins: tuple[str, ...] = ()
    max_model_bytes: int = MAX_MODEL_BYTES

    def __post_init__(self) -> None:
        for origin in self.allow_model_origins:
            check_origin(origin)
        if self.max_model_bytes <= 0:
            raise ValueError("the model size limit must be positive")
        for path in self.allow_host_dirs:
            if not path.startswith("/"):
                raise ValueError(f"allowed host directory {path!r} is not an absolute path")
        dirs = tuple(posixpath.normpath(p) for p in self.allow_host_dirs)
        object.__setattr__(self, "allow_host_dirs", dirs)
        if not 0 < self.default_timeout <= self.max_timeout:
            raise ValueError(
                f"the default timeout ({format_seconds(self.default_timeout)}) must be positive "
                f"and at most the maximum ({format_seconds(self.max_timeout)})"
            )
        if not 0 < self.default_max_memory <= self.max_memory:
            raise ValueError(
                f"the default max memory ({format_size(self.default_max_memory)}) must be "
                f"positive and at most the maximum ({format_size(self.max_memory)})"
            )
        if self.max_field_bytes <= 0:
            raise ValueError("the field size limit must be positive")

    def to_json(self) -> str:
        """The policy as `WASINN_POLICY` carries it to a proplet."""
        return json.dumps(
            {
                "allowHostDirs": list(self.allow_host_dirs),
                "defaultTimeoutSeconds": self.default_timeout,
                "maxTimeoutSeconds": self.max_timeout,
                "defaultMaxMemoryBytes": self.default_max_memory,
                "maxMemoryBytes": self.max_memory,
                "maxFieldBytes": self.max_field_bytes,
                "allowModelOrigins": list(self.allow_model_origins),
                "maxModelBytes": self.max_model_bytes,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> TaskPolicy:
        """The policy in `WASINN_POLICY`; ValueError names what is wrong."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            unknown = set(data) - set(_JSON_FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
            values: dict[str, Any] = {_JSON_FIELDS[k]: v for k, v in data.items()}
            for key, name in (
                ("allow_host_dirs", "allowHostDirs must be a list of paths"),
                ("allow_model_origins", "allowModelOrigins must be a list of URI prefixes"),
            ):
                if key in values:
                    items = values[key]
                    if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
                        raise ValueError(name)
                    values[key] = tuple(items)
            for key in ("default_timeout", "max_timeout"):
                if key in values:
                    values[key] = float(_number(values[key], key))
            for key in ("default_max_memory", "max_memory", "max_field_bytes", "max_model_bytes"):
                if key in values:
                    values[key] = int(_number(values[key], key))
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{POLICY_ENV}: {exc}") from None

    def describe(self) -> str:
        """One line for logs: what tasks may have."""
        return (
            f"host directories: {_listing(self.allow_host_dirs)}; deadline "
            f"{format_seconds(self.default_timeout)} (at most {format_seconds(self.max_timeout)}); "
            f"linear memory {format_size(self.default_max_memory)} (at most "
            f"{format_size(self.max_memory)}); cli_args, args and env each at most "
            f"{format_size(self.max_field_bytes)}; model origins: "
            f"{_listing(self.allow_model_origins)} (models up to "
            f"{format_size(self.max_model_bytes)})"
        )


_JSON_FIELDS = {
    "allowHostDirs": "allow_host_dirs",
    "defaultTimeoutSeconds": "default_timeout",
    "maxTimeoutSeconds": "max_timeout",
    "defaultMaxMemoryBytes": "default_max_memory",
    "maxMemoryBytes": "max_memory",
    "maxFieldBytes": "max_field_bytes",
    "allowModelOrigins": "allow_model_origins",
    "maxModelBytes": "max_model_bytes",
}


@dataclass(frozen=True)
class Limits:
    """The limits a run gets: what the task asked for (within the maxima), else the defaults."""

    timeout_seconds: float
    max_memory_bytes: int


@dataclass(frozen=True)
class Fields:
    """How the caller's task shape names its fields, for messages."""

    cli_args: str
    env: str
    args: str
    timeout: str


PROPELLER_FIELDS = Fields("cli_args", "env", "inputs", "timeout")
PROPLET_FIELDS = Fields("cliArgs", "env", "args", "timeoutSeconds")
SPEC_FIELDS = Fields("spec.cliArgs", "spec.env", "spec.args", "spec.timeoutSeconds")


def check_task(
    policy: TaskPolicy,
    cli_args: Sequence[str],
    env: Mapping[str, str],
    args: Sequence[str | int] = (),
    timeout_seconds: float | None = None,
    *,
    fields: Fields = PROPLET_FIELDS,
    resolve: Resolve = os.path.realpath,
) -> Limits:
    """The task's effective limits, or PolicyError naming the first field that is not allowed.

    `resolve` maps a host path to the one it names: `os.path.realpath` where the paths are this
    machine's (the local shim, the proplet), `lexical` where they are another's (the operator,
    the shim of the kubernetes backend).
    """
    _check_sizes(policy, fields, cli_args, env, args)
    for name in env:
        _check_env_name(name, f"{fields.env}: {name}")
    try:
        flags = parse_flags(cli_args, module=False)
    except FlagError as exc:
        raise PolicyError(f"{fields.cli_args}: {exc}") from None
    timeouts: list[float] = []
    memories: list[int] = []
    if timeout_seconds is not None:
        where = f"{fields.timeout}: {timeout_seconds:g}"
        timeouts.append(_within(float(timeout_seconds), policy.max_timeout, where, format_seconds))
    for option in flags.options:
        where = f"{fields.cli_args}: {option.text}"
        if isinstance(option, Toggle) and not option.enabled:
            continue  # `-S inherit-env=n`, `-S tcp=n`: asks for nothing
        if option.kind not in ALLOWED:
            raise PolicyError(f"{where}: {REFUSED.get(option.kind, 'not allowed')}")
        if isinstance(option, Duration):
            timeouts.append(_within(option.seconds, policy.max_timeout, where, format_seconds))
        elif isinstance(option, Size):
            memories.append(_within(option.size, policy.max_memory, where, format_size))
        else:
            _check_option(policy, option, where, resolve)
    return Limits(
        timeout_seconds=min(timeouts, default=policy.default_timeout),
        max_memory_bytes=min(memories, default=policy.default_max_memory),
    )


def check_spec(policy: TaskPolicy, spec: WasiNNTaskSpec, resolve: Resolve | None = None) -> Limits:
    """`check_task` for a WasiNNTask spec, plus the fields that shape its Pod.

    `models` must stay at /models and read-only (a mount elsewhere could shadow the proplet's
    own files), `subPath` inside the claim; tolerations may not admit the task to control-plane
    nodes. `nodeSelector` only narrows the OpenVINO pool (the operator's label always wins),
    so it is free. Paths are compared lexically: the operator cannot see the Pod's files (the
    proplet resolves symlinks when it runs the task).
    """
    limits = check_task(
        policy,
        spec.cli_args,
        spec.env,
        spec.args,
        spec.timeout_seconds,
        fields=SPEC_FIELDS,
        resolve=resolve or lexical,
    )
    models = spec.models
    if _guest(models.mount_path) != MODELS_GUEST_DIR:
        raise PolicyError(
            f"spec.models.mountPath: {models.mount_path}: the models volume is mounted at "
            f"{MODELS_GUEST_DIR} only"
        )
    if not models.read_only:
        raise PolicyError("spec.models.readOnly: false: the models volume is mounted read-only")
    sub = models.sub_path
    if sub is not None and (sub.startswith("/") or ".." in PurePosixPath(sub).parts):
        raise PolicyError(
            f"spec.models.subPath: {sub}: must be a relative path inside the claim, without '..'"
        )
    check_model_sources(policy, spec.model_sources, "spec.modelSources")
    for index, toleration in enumerate(spec.tolerations):
        key = str(toleration.get("key") or "")
        if key in CONTROL_PLANE_TAINTS or (not key and toleration.get("operator") == "Exists"):
            raise PolicyError(
                f"spec.tolerations[{index}]: tolerating {key or 'every taint'} would admit the "
                "task to control-plane nodes (allowed: tolerations of other taints)"
            )
    return limits


def check_model_sources(policy: TaskPolicy, sources: Sequence[ModelSource], where: str) -> None:
    """PolicyError unless every model source's origin is allowed (none is by default)."""
    try:
        check_sources(sources, policy.allow_model_origins, where)
    except ModelSourceError as exc:
        raise PolicyError(str(exc)) from None


def lexical(path: str) -> str:
    """`path` with `.`, `..` and repeated slashes resolved, symlinks left alone."""
    return posixpath.normpath(path)


def _check_option(policy: TaskPolicy, option: Option, where: str, resolve: Resolve) -> None:
    if isinstance(option, Env):
        _check_env_name(option.name, where)
    elif isinstance(option, Dir):
        if _guest(option.guest) == MODELS_GUEST_DIR or _guest(option.guest).startswith(
            MODELS_GUEST_DIR + "/"
        ):
            raise PolicyError(
                f"{where}: the guest path {option.guest} is at or under {MODELS_GUEST_DIR}, the "
                "service's read-only models mount (always present); tasks cannot mount there"
            )
        _check_host(policy, option.host, where, resolve)
    elif isinstance(option, Graph):
        _check_host(policy, option.host, where, resolve)
    elif isinstance(option, Invoke) and option.name.startswith("-"):
        raise PolicyError(f"{where}: an export name must not start with '-'")


def _check_host(policy: TaskPolicy, host: str, where: str, resolve: Resolve) -> None:
    allowed = policy.allow_host_dirs
    if not allowed:
        raise PolicyError(f"{where}: host directories are not allowed (allowed: none)")
    if not host.startswith("/"):
        raise PolicyError(
            f"{where}: a host directory must be an absolute path (allowed: {_listing(allowed)})"
        )
    target = resolve(lexical(host))
    for root in allowed:
        base = resolve(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return
    shown = target if target == lexical(host) else f"{target} (resolved from {host})"
    raise PolicyError(
        f"{where}: host directory {shown} is not allowed (allowed: {_listing(allowed)})"
    )


def _check_env_name(name: str, where: str) -> None:
    if name.startswith("-"):
        raise PolicyError(f"{where}: a variable name must not start with '-'")
    upper = name.upper()
    if upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES):
        raise PolicyError(f"{where}: reserved name ({RESERVED_ENV_TEXT})")


def _check_sizes(
    policy: TaskPolicy,
    fields: Fields,
    cli_args: Sequence[str],
    env: Mapping[str, str],
    args: Sequence[str | int],
) -> None:
    sizes = (
        (fields.cli_args, _bytes(cli_args)),
        (fields.env, _bytes(env) + _bytes(env.values())),
        (fields.args, _bytes(str(a) for a in args)),
    )
    for where, size in sizes:
        if size > policy.max_field_bytes:
            raise PolicyError(
                f"{where}: {size} bytes; the service allows at most {policy.max_field_bytes}"
            )


def _bytes(texts: Iterable[str]) -> int:
    return sum(len(t.encode("utf-8", errors="surrogatepass")) for t in texts)


def _within(value: _Limit, maximum: _Limit, where: str, show: Callable[[_Limit], str]) -> _Limit:
    if value > maximum:
        raise PolicyError(f"{where}: above the service maximum of {show(maximum)}")
    return value


def _guest(path: str) -> str:
    # wasi-libc matches preopens by name with leading "/" and "./" stripped: "models",
    # "./models" and "/models/" all name the same preopen.
    return posixpath.normpath("/" + path.lstrip("/"))


def _listing(paths: Sequence[str]) -> str:
    return ", ".join(paths) if paths else "none"


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: {value!r} is not a number")
    return value
