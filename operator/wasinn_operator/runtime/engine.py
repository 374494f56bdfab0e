"""The embedded engine: wasmtime with WASI and the wasi-nn host over OpenVINO.

One `Runtime` per process holds the wasmtime engine, the module cache and the OpenVINO backend;
each `run` gets its own store, WASI context and wasi-nn handles, so runs may proceed in
parallel threads. A core module gets WASI preview1 and `wasi_ephemeral_nn`; a component (told
by the header's layer field) gets WASI 0.2 and `wasi:nn@0.2.0-rc-2024-10-28`, with the same
preopens, environment, output capture and limits. Guest faults (traps, timeouts, memory limits,
bad wasi-nn arguments) end only that run, with a clear `RunResult.error`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component

from ..api.policy import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT
from . import lingering, wasipoll
from .component import DEFAULT_TENSOR_BYTES, ComponentNNHost, call_run, link, prepare, wrap
from .deadline import Deadline
from .modcache import ModuleCache, ModuleError, is_component
from .nn.abi import ExecutionTarget
from .nn.budget import (
    DEFAULT_MAX_CONTEXTS,
    DEFAULT_MAX_GRAPH_BYTES,
    DEFAULT_MAX_GRAPH_MEMORY,
    DEFAULT_MAX_GRAPHS,
    GraphLimits,
)
from .nn.host import MODULE as NN_MODULE
from .nn.host import NNHost
from .nn.models import NamedModel, scan_models_dir
from .nn.openvino import DEFAULT_GRAPH_CACHE_BYTES, BackendConfig, OpenVINOBackend
from .sealed import KEY_FILE, SealedDir, load_key
from .spec import (
    EXIT_HOST_ERROR,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    MODELS_GUEST_DIR,
    DirMount,
    FailureReason,
    Outcome,
    RunResult,
    RunSpec,
)

EPOCH_TICK_SECONDS = 0.05
HOSTCALL_LIMIT = (
    "a component may pass at most about 2.7 MB to a host function in one call here; wasi:nn's "
    "load and tensors go through a bridge without that limit when the component imports all "
    "four wasi:nn interfaces"
)
NO_DEADLINE = 1 << 62
# The sealed compiled-code caches under the cache directory; guests never see them.
SEALED_DIRS = ("modules", "openvino")
DEFAULT_MODULE_CACHE_BYTES = 1 << 30
DEFAULT_MODEL_CACHE_BYTES = 2 << 30
# What a run on behalf of a tenant gets when nobody asked for a limit (`RuntimeConfig.for_tenants`):
# the task policy's defaults.
TENANT_TIMEOUT = DEFAULT_TIMEOUT
TENANT_MAX_MEMORY = DEFAULT_MAX_MEMORY
Sink = Callable[[bytes], None]


def fd_sink(fd: int) -> Sink:
    """A sink that writes straight to a file descriptor (unbuffered, as the guest writes)."""

    def write(data: bytes) -> None:
        os.write(fd, data)

    return write


@dataclass(frozen=True)
class RuntimeConfig:
    """Process-wide engine settings, and the limits of runs that set none themselves.

    `default_timeout` / `default_max_memory` apply to a `RunSpec` whose `timeout` /
    `max_memory` is None (unbounded by default, as `wasinn run` on a person's own machine;
    `for_tenants` bounds them). The graph limits are defaults of the `RunSpec` fields of the
    same names (see `nn.budget`). The cache bounds are the disk sizes of the compiled-module
    and compiled-model caches under `cache_dir`, and the estimated memory of the graphs the
    process keeps loaded for later runs.
    """

    cache_dir: Path | None = None
    inference_precision: str | None = None
    target_fallback: ExecutionTarget | None = None
    default_timeout: float | None = None
    default_max_memory: int | None = None
    max_graph_bytes: int = DEFAULT_MAX_GRAPH_BYTES
    max_graph_memory: int = DEFAULT_MAX_GRAPH_MEMORY
    max_graphs: int = DEFAULT_MAX_GRAPHS
    max_contexts: int = DEFAULT_MAX_CONTEXTS
    module_cache_bytes: int = DEFAULT_MODULE_CACHE_BYTES
    model_cache_bytes: int = DEFAULT_MODEL_CACHE_BYTES
    graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES

    @classmethod
    def for_tenants(cls, **settings: Any) -> RuntimeConfig:
        """Settings for runs on behalf of a tenant: bounded time and memory unless given."""
        settings.setdefault("default_timeout", TENANT_TIMEOUT)
        settings.setdefault("default_max_memory", TENANT_MAX_MEMORY)
        return cls(**settings)

    def limits(self, spec: RunSpec) -> GraphLimits:
        """The wasi-nn limits of one run: the spec's, else these defaults."""

        def pick(asked: int | None, default: int) -> int:
            return default if asked is None else asked

        return GraphLimits(
            max_graph_bytes=pick(spec.max_graph_bytes, self.max_graph_bytes),
            max_graph_memory=pick(spec.max_graph_memory, self.max_graph_memory),
            max_graphs=pick(spec.max_graphs, self.max_graphs),
            max_contexts=pick(spec.max_contexts, self.max_contexts),
        )


class _Capture:
    """Collects a stream up to a cap while forwarding every byte to an optional sink."""

    def __init__(self, limit: int, sink: Sink | None) -> None:
        self._limit = limit
        self._sink = sink
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        room = self._limit - self._size
        if len(data) > room:
            self.truncated = True
        if room > 0:
            chunk = data[:room]
            self._chunks.append(chunk)
            self._size += len(chunk)
        if self._sink is not None:
            try:
                self._sink(data)
            except Exception:  # a broken consumer must not fail the guest's write
                self._sink = None

    def log(self, line: str) -> None:
        self.write(line.encode() + b"\n")

    def value(self) -> bytes:
        return b"".join(self._chunks)


class _Ticker:
    """Advances the engine epoch on a fixed period so stores can have wall-clock deadlines."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._started = False
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        with self._lock:
            if not self._started:
                threading.Thread(target=self._loop, name="wasinn-epoch", daemon=True).start()
                self._started = True

    def _loop(self) -> None:
        while True:
            time.sleep(EPOCH_TICK_SECONDS)
            self._engine.increment_epoch()


class Runtime:
    """Runs wasm modules; share one per process."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        engine_config = wasmtime.Config()
        engine_config.epoch_interruption = True
        # Linear memory must never move: wasi-nn input tensors are views of it.
        engine_config.memory_may_move = False
        self.engine = wasmtime.Engine(engine_config)
        cache = self.config.cache_dir
        key = None if cache is None else load_key(cache)
        self.modules = ModuleCache(
            self.engine,
            None
            if cache is None
            else SealedDir.open(
                cache / SEALED_DIRS[0],
                key,
                "wasmtime module",
                ".cwasm",
                self.config.module_cache_bytes,
            ),
            settings="epoch_interruption,memory_may_move=false",
        )
        self.backend = OpenVINOBackend(
            BackendConfig(
                blobs=None
                if cache is None
                else SealedDir.open(
                    cache / SEALED_DIRS[1],
                    key,
                    "openvino model",
                    ".blob",
                    self.config.model_cache_bytes,
                ),
                inference_precision=self.config.inference_precision,
                target_fallback=self.config.target_fallback,
                graph_cache_bytes=self.config.graph_cache_bytes,
            )
        )
        self._ticker = _Ticker(self.engine)
        self._models_lock = threading.Lock()
        self._models_dirs: dict[Path, dict[str, NamedModel]] = {}

    def run(
        self, spec: RunSpec, stdout: Sink | None = None, stderr: Sink | None = None
    ) -> RunResult:
        """Execute `spec`; never raises for anything the module or its arguments do."""
        spec = self._with_defaults(spec)
        out = _Capture(spec.stdout_limit, stdout)
        err = _Capture(spec.stderr_limit, stderr)
        digest = spec.digest
        result = RunResult(outcome=Outcome.ERROR, exit_code=EXIT_HOST_ERROR, digest=digest)
        started = time.monotonic()
        try:
            # A component using wasi:nn runs behind the bridge that lets it pass large data.
            wrapped = wrap(spec.wasm) if is_component(spec.wasm) else None
            if wrapped is None:  # the module as given: its digest is the cache key
                module, result.module_cached = self.modules.get(spec.wasm, digest)
            else:
                module, result.module_cached = self.modules.get(wrapped)
            result.compile_seconds = time.monotonic() - started
            if isinstance(module, component.Component):
                self._execute_component(spec, module, out, err, result)
            else:
                self._execute(spec, module, out, err, result)
        except ModuleError as exc:
            result.error, result.reason = str(exc), FailureReason.INVALID_WASM
        except (OSError, ValueError) as exc:
            result.error, result.reason = str(exc), FailureReason.START_FAILED
        except Exception as exc:  # a host bug: end this run, never the process
            result.error = f"internal error: {exc!r}"
            result.reason = FailureReason.ENGINE_ERROR
        finally:
            result.run_seconds = time.monotonic() - started - result.compile_seconds
        if result.error and result.outcome is not Outcome.EXITED:
            err.log(f"wasinn: {result.error}")
        result.stdout, result.stdout_truncated = out.value(), out.truncated
        result.stderr, result.stderr_truncated = err.value(), err.truncated
        return result

    def _with_defaults(self, spec: RunSpec) -> RunSpec:
        """`spec` with the configured default timeout and memory limit where it sets none."""
        timeout = self.config.default_timeout if spec.timeout is None else spec.timeout
        memory = self.config.default_max_memory if spec.max_memory is None else spec.max_memory
        if (timeout, memory) == (spec.timeout, spec.max_memory):
            return spec
        return dataclasses.replace(spec, timeout=timeout, max_memory=memory)

    def _execute(
        self,
        spec: RunSpec,
        module: wasmtime.Module,
        out: _Capture,
        err: _Capture,
        result: RunResult,
    ) -> None:
        store, linker, deadline, nn = self._store_and_linker(spec, module, out, err)
        instance: wasmtime.Instance | None = None
        try:
            instance = linker.instantiate(store, module)
            self._call_entry(spec, store, instance, out)
            result.outcome, result.exit_code = Outcome.EXITED, 0
        except wasmtime.ExitTrap as exc:
            result.outcome, result.exit_code = Outcome.EXITED, exc.code
            if exc.code != 0:
                result.error = f"exited with code {exc.code}"
                result.reason = _guest_failure(FailureReason.EXIT_CODE, nn, False)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if deadline.hit or getattr(exc, "trap_code", None) is wasmtime.TrapCode.INTERRUPT:
                result.outcome, result.exit_code = Outcome.TIMED_OUT, EXIT_TIMEOUT
                result.error = _timeout_error(spec, deadline)
                result.reason = FailureReason.DEADLINE_EXCEEDED
                return  # memory is not why
            if isinstance(exc, wasmtime.Trap):
                result.outcome, result.exit_code = Outcome.TRAPPED, EXIT_TRAP
                result.error = _trap_message(exc)
                reason = FailureReason.TRAP
            else:
                result.error = _summarize(str(exc))
                reason = FailureReason.TRAP
                if instance is None:
                    result.error = f"cannot instantiate the module: {result.error}"
                    reason = FailureReason.START_FAILED
            note, full = _memory_note(spec, store, instance)
            result.error += note
            result.reason = _guest_failure(reason, nn, full)
        finally:  # work the deadline gave up on may still read this store's memory
            lingering.keep(deadline.abandoned, store, instance, nn)

    def _execute_component(
        self,
        spec: RunSpec,
        compiled: component.Component,
        out: _Capture,
        err: _Capture,
        result: RunResult,
    ) -> None:
        wants_nn, run = prepare(compiled, self.engine, spec.nn, spec.invoke)
        store = self._store(spec, out, err)
        deadline = Deadline(spec.timeout)
        nn = None
        if spec.nn or wants_nn:
            nn = ComponentNNHost(
                self.backend,
                self._models(spec),
                err.log,
                spec.nn_target,
                self.config.limits(spec),
                deadline,
                spec.max_memory or DEFAULT_TENSOR_BYTES,
            )
        instance: component.Instance | None = None
        try:
            instance = link(self.engine, nn).instantiate(store, compiled)
            ok = call_run(store, instance, run)
            result.outcome, result.exit_code = Outcome.EXITED, 0 if ok else 1
            if not ok:
                result.error = "the component's wasi:cli/run returned an error"
                result.reason = _guest_failure(FailureReason.EXIT_CODE, nn, False)
        except wasmtime.ExitTrap as exc:
            result.outcome, result.exit_code = Outcome.EXITED, exc.code
            if exc.code != 0:
                result.error = f"exited with code {exc.code}"
                result.reason = _guest_failure(FailureReason.EXIT_CODE, nn, False)
        except wasmtime.WasmtimeError as exc:
            # A component call reports a trap as an error; its cause (wasmtime's words) tells
            # which.
            cause = _summarize(str(exc))
            if instance is None:
                result.error = f"cannot instantiate the component: {cause}"
                reason = FailureReason.START_FAILED
            elif deadline.hit or "wasm trap: interrupt" in cause:
                result.outcome, result.exit_code = Outcome.TIMED_OUT, EXIT_TIMEOUT
                result.error = _timeout_error(spec, deadline)
                result.reason = FailureReason.DEADLINE_EXCEEDED
                return  # memory is not why
            else:
                result.outcome, result.exit_code = Outcome.TRAPPED, EXIT_TRAP
                result.error = cause if cause.startswith("wasm trap") else f"wasm trap: {cause}"
                reason = FailureReason.TRAP
                if "fuel allocated for hostcalls" in cause:
                    result.error += f" ({HOSTCALL_LIMIT})"
            note, full = _memory_note(spec, store, None)
            result.error += note
            result.reason = _guest_failure(reason, nn, full)
            return
        finally:  # work the deadline gave up on may still read this store's memory
            lingering.keep(deadline.abandoned, store, instance, nn)
        if spec.timeout is not None and deadline.remaining() == 0:
            # The guest waited past its deadline in a WASI 0.2 call (a sleep, a poll), which
            # wasmtime cannot interrupt from here: the run still counts as timed out.
            result.outcome, result.exit_code = Outcome.TIMED_OUT, EXIT_TIMEOUT
            result.error = (
                f"timed out after {spec.timeout:g} s (a WASI 0.2 wait of the guest outlasted it)"
            )
            result.reason = FailureReason.DEADLINE_EXCEEDED

    def _store(self, spec: RunSpec, out: _Capture, err: _Capture) -> wasmtime.Store:
        """A store with the run's WASI context, memory limit and epoch deadline."""
        store = wasmtime.Store(self.engine)
        if spec.max_memory is not None:
            store.set_limits(memory_size=spec.max_memory)
        store.set_wasi(self._wasi(spec, out, err))
        if spec.timeout is not None:
            self._ticker.ensure_started()
            store.set_epoch_deadline(max(1, math.ceil(spec.timeout / EPOCH_TICK_SECONDS)))
        else:
            store.set_epoch_deadline(NO_DEADLINE)
        return store

    def _store_and_linker(
        self, spec: RunSpec, module: wasmtime.Module, out: _Capture, err: _Capture
    ) -> tuple[wasmtime.Store, wasmtime.Linker, Deadline, NNHost | None]:
        store = self._store(spec, out, err)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        deadline = Deadline(spec.timeout)
        if spec.timeout is not None:
            wasipoll.define(linker, deadline)
        wants_nn = any(imp.module == NN_MODULE for imp in module.imports)
        nn = None
        if spec.nn if spec.nn is not None else wants_nn:
            models = self._models(spec)
            limits = self.config.limits(spec)
            nn = NNHost(self.backend, models, err.log, spec.nn_target, limits, deadline)
            nn.define(linker)
        return store, linker, deadline, nn

    def session(self, spec: RunSpec) -> Session:
        """Instantiate without running `_start`: for embedding, ABI tests and benchmarks.

        Raises `ModuleError`, `ValueError` or `wasmtime.WasmtimeError` when the module cannot be
        instantiated; calls on the session raise what the guest's code raises (traps).
        """
        spec = self._with_defaults(spec)
        module, _ = self.modules.get(spec.wasm)
        if not isinstance(module, wasmtime.Module):
            raise ModuleError("a session drives a core module; this is a component")
        out = _Capture(spec.stdout_limit, None)
        err = _Capture(spec.stderr_limit, None)
        store, linker, deadline, _ = self._store_and_linker(spec, module, out, err)
        return Session(store, linker.instantiate(store, module), out, err, deadline)

    def _wasi(self, spec: RunSpec, out: _Capture, err: _Capture) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        wasi.argv = [spec.program_name, *spec.args]
        wasi.env = list(spec.env.items())
        wasi.stdout_custom = out.write
        wasi.stderr_custom = err.write
        mounts = list(spec.dirs)
        if spec.models_dir is not None:
            mounts.append(DirMount(spec.models_dir, MODELS_GUEST_DIR, read_only=True))
        for mount in mounts:
            if not mount.host.is_dir():
                raise ValueError(f"--dir: {str(mount.host)!r} is not a directory")
            self._refuse_cache(mount)
            wasi.preopen_dir(str(mount.host), mount.guest, fs_mutable=not mount.read_only)
        return wasi

    def _refuse_cache(self, mount: DirMount) -> None:
        """Never preopen the compiled-code caches (or the key that seals them) to a guest, nor
        anything in the cache writable. Read-only mounts of the rest (the fetched models under
        `<cache>/models`) are fine: only the host writes them."""
        cache = self.config.cache_dir
        if cache is None:
            return
        host, root = mount.host.resolve(), cache.resolve()
        inside = host == root or root in host.parents
        if not inside:
            return
        sealed = [root / name for name in (*SEALED_DIRS, KEY_FILE)]
        touches = any(host == p or p in host.parents or host in p.parents for p in sealed)
        if touches or not mount.read_only:
            raise ValueError(
                f"--dir: {str(mount.host)!r} is inside the compiled-code cache {str(cache)!r}, "
                "which guests may never reach"
                + ("" if touches else " writable (fetched models there are mounted read-only)")
            )

    def _models(self, spec: RunSpec) -> dict[str, NamedModel]:
        models: dict[str, NamedModel] = {}
        if spec.models_dir is not None:
            models.update(self.models_in(spec.models_dir))
        models.update({m.name: m for m in spec.models})
        return models

    def models_in(self, models_dir: Path) -> dict[str, NamedModel]:
        """The named models of a models directory (scanned once per process)."""
        key = models_dir.resolve()
        with self._models_lock:
            found = self._models_dirs.get(key)
            if found is None:
                found = {m.name: m for m in scan_models_dir(key)}
                self._models_dirs[key] = found
            return found

    @staticmethod
    def _call_entry(
        spec: RunSpec, store: wasmtime.Store, instance: wasmtime.Instance, out: _Capture
    ) -> None:
        exports = instance.exports(store)
        name = spec.invoke
        # Propeller's runtimes call the export named after the task when there is one.
        if (
            name is None
            and spec.export not in (None, "", "_start")
            and isinstance(exports.get(spec.export or ""), wasmtime.Func)
        ):
            name = spec.export
        if name is None:
            for entry in ("_start", "main", "run"):  # Propeller's fallbacks, command first
                start = exports.get(entry)
                if isinstance(start, wasmtime.Func) and (
                    entry == "_start" or not start.type(store).params
                ):
                    start(store)
                    return
            raise ValueError("the module exports no _start function (use --invoke NAME)")
        init = exports.get("_initialize")
        if isinstance(init, wasmtime.Func):
            init(store)
        func = exports.get(name)
        if not isinstance(func, wasmtime.Func):
            raise ValueError(f"--invoke: the module exports no function {name!r}")
        params = func.type(store).params
        if len(params) != len(spec.args):
            raise ValueError(
                f"--invoke {name}: takes {len(params)} argument(s), got {len(spec.args)}"
            )
        values = [_parse_value(ty, arg) for ty, arg in zip(params, spec.args, strict=True)]
        returned = func(store, *values)
        for value in returned if isinstance(returned, list) else [returned]:
            if value is not None:
                out.write(f"{value}\n".encode())


def _parse_value(ty: wasmtime.ValType, text: str) -> int | float:
    try:
        if ty in (wasmtime.ValType.i32(), wasmtime.ValType.i64()):
            return int(text, 0)
        if ty in (wasmtime.ValType.f32(), wasmtime.ValType.f64()):
            return float(text)
    except ValueError:
        raise ValueError(f"--invoke: {text!r} is not a valid {ty}") from None
    raise ValueError(f"--invoke: parameters of type {ty} are not supported")


def _summarize(message: str) -> str:
    """The cause of a wasmtime error, without its backtrace."""
    head, sep, cause = message.strip().partition("Caused by:")
    if sep:
        return "; ".join(line.strip() for line in cause.strip().splitlines() if line.strip())
    return head.strip().splitlines()[0] if head.strip() else "unknown wasmtime error"


def _trap_message(trap: wasmtime.Trap) -> str:
    """`wasm trap: <cause> (in function <name>)`."""
    cause = _summarize(trap.message)
    if not cause.startswith("wasm trap"):
        cause = f"wasm trap: {cause}"
    frames = trap.frames
    name = frames[0].func_name if frames else None
    return f"{cause} (in function {name})" if name else cause


def _timeout_error(spec: RunSpec, deadline: Deadline) -> str:
    """What a run that timed out reports."""
    error = f"timed out after {spec.timeout:g} s"
    if deadline.abandoned:  # see runtime/lingering.py
        error += " (OpenVINO did not stop its inference when cancelled)"
    return error


def _memory_note(
    spec: RunSpec, store: wasmtime.Store, instance: wasmtime.Instance | None
) -> tuple[str, bool]:
    """On failure under a memory limit, say how close to it linear memory was, and whether it
    was at the limit.

    wasmtime refuses a `memory.grow` past the limit by returning -1, and the guest decides what
    follows (usually a trap or an out-of-memory exit); the host cannot see the refused request,
    so it reports the usage and calls a refusal likely when usage is near the limit.
    """
    if spec.max_memory is None:
        return "", False
    memory = None if instance is None else instance.exports(store).get("memory")
    limit = spec.max_memory / (1 << 20)
    if not isinstance(memory, wasmtime.Memory):
        return f" (memory limit {limit:.1f} MiB)", False
    size = memory.data_len(store)
    note = f" (linear memory {size / (1 << 20):.1f} MiB of the {limit:.1f} MiB limit"
    full = size + memory.page_size(store) > spec.max_memory or size >= 0.9 * spec.max_memory
    if full:
        note += "; a memory.grow past the limit was likely refused"
    return note + ")", full


def _guest_failure(
    reason: FailureReason, nn: NNHost | ComponentNNHost | None, memory_full: bool
) -> FailureReason:
    """The reason of a guest's failure: a memory limit or a missing model when the host saw
    one refused (the guest's exit or trap followed from it), else `reason`."""
    if memory_full or (nn is not None and nn.budget.refused):
        return FailureReason.OUT_OF_MEMORY
    if nn is not None and nn.missing_model is not None:
        return FailureReason.MODEL_NOT_FOUND
    return reason


class Session:
    """An instantiated module whose exports the caller drives directly."""

    def __init__(
        self,
        store: wasmtime.Store,
        instance: wasmtime.Instance,
        out: _Capture,
        err: _Capture,
        deadline: Deadline,
    ) -> None:
        self.store = store
        self.instance = instance
        self._out = out
        self._err = err
        self._deadline = deadline

    def call(self, name: str, *args: int | float) -> object:
        """Call an exported function."""
        func = self.instance.exports(self.store)[name]
        if not isinstance(func, wasmtime.Func):
            raise TypeError(f"export {name!r} is not a function")
        try:
            return func(self.store, *args)
        finally:  # work the deadline gave up on may still read this store's memory
            lingering.keep(self._deadline.abandoned, self.store, self.instance)

    @property
    def memory(self) -> wasmtime.Memory:
        """The exported linear memory."""
        memory = self.instance.exports(self.store)["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise TypeError("export 'memory' is not a memory")
        return memory

    def write(self, ptr: int, data: bytes) -> None:
        """Copy bytes into guest memory."""
        self.memory.write(self.store, data, ptr)

    def read(self, ptr: int, length: int) -> bytes:
        """Copy bytes out of guest memory."""
        return bytes(self.memory.read(self.store, ptr, ptr + length))

    @property
    def stdout(self) -> bytes:
        """What the guest wrote to stdout so far (capped)."""
        return self._out.value()

    @property
    def stderr(self) -> bytes:
        """What the guest and the wasi-nn host wrote to stderr so far (capped)."""
        return self._err.value()
