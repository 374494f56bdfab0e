"""The two ways a proplet runs a module: the embedded runtime, or an external wasmtime CLI.

Either way the task's env reaches the guest only (never the proplet's own process), and the
models directory is preopened at /models with its models registered by name, whatever the
task's `cli_args` say.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..api import TaskSpec
from ..api.policy import Limits
from ..api.summary import OUTPUT_LIMIT
from ..api.wasmflags import Flag, FlagError, Kind, Size, Toggle, WasmFlags, parse_flags
from ..runtime import (
    EXIT_TIMEOUT,
    MODELS_GUEST_DIR,
    ExecutionTarget,
    FailureReason,
    ModelError,
    Outcome,
    RunResult,
    Runtime,
    resolve,
    scan_models_dir,
)
from ..runtime.nn import GraphEncoding

Sink = Callable[[bytes], None]
DEVICE_TARGETS = {
    "CPU": ExecutionTarget.CPU,
    "GPU": ExecutionTarget.GPU,
    "NPU": ExecutionTarget.TPU,
    "AUTO": ExecutionTarget.AUTO,
}


class TaskError(Exception):
    """The task cannot run: malformed for this engine (bad cli_args: `InvalidTask`), or the
    engine is missing (`EngineError`)."""

    def __init__(self, message: str, reason: FailureReason = FailureReason.INVALID_TASK) -> None:
        super().__init__(message)
        self.reason = reason


def task_flags(task: TaskSpec) -> WasmFlags:
    """The task's `cli_args`, parsed once for whichever engine runs it (`InvalidTask` when they
    do not parse)."""
    try:
        return parse_flags(task.cli_args, module=False)
    except FlagError as exc:
        raise TaskError(f"cliArgs: {exc}") from None


@dataclass
class Outputs:
    """Where a run's output goes while it runs."""

    stdout: Sink
    stderr: Sink
    limit: int = OUTPUT_LIMIT


def run_embedded(
    runtime: Runtime,
    task: TaskSpec,
    flags: WasmFlags,
    wasm: bytes,
    models_dir: Path | None,
    outputs: Outputs,
    limits: Limits | None = None,
    sources: dict[str, Path] | None = None,
    digest: str | None = None,
) -> RunResult:
    """Run with the in-process engine; `flags` are the task's (`task_flags`), `limits` (the
    policy's) bound the deadline and memory, `sources` (NAME -> directory) are the task's
    fetched models, read-only at /models/NAME; `digest` is `wasm`'s, when already known."""
    try:
        parsed = resolve(flags)
    except (FlagError, ModelError) as exc:
        raise TaskError(f"cliArgs: {exc}") from None
    spec = parsed.to_spec(wasm, program_name=f"{task.id or 'task'}.wasm")
    spec.verified_digest = digest
    spec.args = list(task.args)
    spec.export = task.name or None
    spec.env.update(task.env)
    spec.models_dir = models_dir
    for name, directory in (sources or {}).items():
        spec.add_model(name, directory)
    spec.nn_target = DEVICE_TARGETS[task.device]
    spec.stdout_limit = spec.stderr_limit = outputs.limit
    if task.timeout_seconds is not None:
        spec.timeout = float(task.timeout_seconds)
    if limits is not None:
        spec.timeout = limits.timeout_seconds
        spec.max_memory = limits.max_memory_bytes
    return runtime.run(spec, stdout=outputs.stdout, stderr=outputs.stderr)


def wasmtime_version(binary: str) -> tuple[int, ...]:
    """`(major, minor, patch)` of a wasmtime CLI, from `wasmtime --version`."""
    try:
        text = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise TaskError(
            f"external wasm runtime {binary!r} does not run: {exc}", FailureReason.ENGINE_ERROR
        ) from None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise TaskError(
            f"cannot tell the version of {binary!r} from {text.strip()!r}",
            FailureReason.ENGINE_ERROR,
        )
    return tuple(int(g) for g in match.groups())


def external_command(
    binary: str,
    version: tuple[int, ...],
    task: TaskSpec,
    flags: WasmFlags,
    wasm_path: Path,
    models_dir: Path | None,
    limits: Limits | None = None,
    sources: dict[str, Path] | None = None,
) -> list[str]:
    """The command line Propeller's host runtime would build, adapted to this wasmtime.

    `<runtime> [run] <cli_args...> <models flags> <--env K=V...> <wasm> <inputs...>`, built
    from the task's parsed flags (`task_flags`): for wasmtime >= 14 the legacy
    `--wasi-modules=experimental-wasi-nn` becomes `-S nn`, task env goes to the guest with
    `--env` rather than to the runtime's process, sizes in `-W` options become bytes
    (`max-memory-size=512MiB` is fine here, wasmtime wants 536870912), and `limits` add the
    memory limit a task did not set. Raises FlagError for an env name that would read as a flag.
    """
    modern = version[0] >= 14
    tokens: list[str] = []
    for flag in flags.flags:
        tokens += _external_tokens(flag, modern)
    if modern and not _has(flags, Kind.NN):
        tokens += ["-S", "nn"]
    if not modern and not any(f.name == "--wasi-modules" for f in flags.flags):
        tokens.append("--wasi-modules=experimental-wasi-nn")
    if modern and limits is not None and not _has(flags, Kind.MAX_MEMORY):
        tokens += ["-W", f"max-memory-size={limits.max_memory_bytes}"]
    if models_dir is not None:
        tokens += _models_flags(models_dir, version)
    for name, directory in (sources or {}).items():
        tokens += _source_flags(name, directory, version)
    for key, value in task.env.items():
        if key.startswith("-"):  # it would read as a flag
            raise FlagError(f"env: {key!r}: a variable name must not start with '-'")
        tokens += ["--env", f"{key}={value}"]
    return [binary, *(["run"] if modern else []), *tokens, str(wasm_path), *task.args]


def _external_tokens(flag: Flag, modern: bool) -> list[str]:
    """One parsed flag as this wasmtime takes it."""
    if flag.name == "run":
        return []  # placed by external_command, for the versions that have it
    if modern and flag.name == "--wasi-modules":
        # wasmtime 14 moved the WASI modules to -S; only wasi-nn is more than a default there.
        nn = [o for o in flag.options if isinstance(o, Toggle) and o.kind is Kind.NN]
        return ["-S", "nn" if nn[-1].enabled else "nn=n"] if nn else []
    if any(isinstance(o, Size) for o in flag.options):
        items = [f"{o.key}={o.size}" if isinstance(o, Size) else o.item for o in flag.options]
        return list(flag.with_value(",".join(items)))
    return list(flag.tokens)


def _has(parsed: WasmFlags, kind: Kind) -> bool:
    return any(o.kind is kind for o in parsed.options)


def _models_flags(models_dir: Path, version: tuple[int, ...]) -> list[str]:
    # wasmtime's default wasi-nn backend is OpenVINO IR: register those models by name.
    graphs = [m for m in scan_models_dir(models_dir) if m.encoding is GraphEncoding.OPENVINO]
    if version[0] >= 14:
        flags = ["--dir", f"{models_dir}::{MODELS_GUEST_DIR}"]
        for model in graphs:
            flags += ["-S", f"nn-graph=openvino::{model.path}"]
        return flags
    flags = ["--mapdir", f"{MODELS_GUEST_DIR}::{models_dir}"]
    if version[0] == 13:
        for model in graphs:
            flags += ["--wasi-nn-graph", f"openvino::{model.path}"]
    return flags


def _source_flags(name: str, directory: Path, version: tuple[int, ...]) -> list[str]:
    # `directory` is named NAME (a link to the cache entry): wasmtime names graphs by basename.
    guest = f"{MODELS_GUEST_DIR}/{name}"
    if version[0] < 14:
        return ["--mapdir", f"{guest}::{directory}"]
    flags = ["--dir", f"{directory}::{guest}"]
    if all((directory / f).is_file() for f in ("model.xml", "model.bin")):
        flags += ["-S", f"nn-graph=openvino::{directory}"]
    return flags


def openvino_library_env(cache_dir: Path) -> dict[str, str]:
    """LD_LIBRARY_PATH entries so wasmtime's OpenVINO backend finds the wheel's libopenvino_c.

    The PyPI wheel ships only a versioned `libopenvino_c.so.<N>`; wasmtime looks for the
    unversioned name, so a symlink directory under the cache provides it. Using the wheel's
    library keeps the CLI and the embedded engine on the same OpenVINO.
    """
    try:
        import openvino  # noqa: PLC0415

        libs = Path(openvino.__file__).parent / "libs"
        library = next(libs.glob("libopenvino_c.so*"))
    except (ImportError, StopIteration):
        return {}
    links = cache_dir / "openvino-c"
    links.mkdir(parents=True, exist_ok=True)
    link = links / "libopenvino_c.so"
    if not link.exists():
        tmp = links / f".link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(library)
        tmp.replace(link)
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(links), str(libs), current) if p)}


def run_external(
    binary: str,
    task: TaskSpec,
    flags: WasmFlags,
    wasm: bytes,
    models_dir: Path | None,
    outputs: Outputs,
    cache_dir: Path,
    limits: Limits | None = None,
    sources: dict[str, Path] | None = None,
) -> RunResult:
    """Run with an external wasmtime CLI in a child process; `limits` bound deadline and memory,
    `sources` (NAME -> directory) are the fetched models, at /models/NAME."""
    version = wasmtime_version(binary)
    timeout = limits.timeout_seconds if limits is not None else task.timeout_seconds
    result = RunResult(outcome=Outcome.ERROR, exit_code=1, digest="")
    with tempfile.TemporaryDirectory(prefix="wasinn-") as tmp:
        wasm_path = Path(tmp) / f"{task.id or 'task'}.wasm"
        wasm_path.write_bytes(wasm)
        links = Path(tmp) / "sources"
        named: dict[str, Path] = {}
        for name, directory in (sources or {}).items():
            links.mkdir(exist_ok=True)
            (links / name).symlink_to(directory, target_is_directory=True)
            named[name] = links / name
        try:
            command = external_command(
                binary, version, task, flags, wasm_path, models_dir, limits, named
            )
        except FlagError as exc:
            raise TaskError(f"cliArgs: {exc}") from None
        env = {**os.environ, **openvino_library_env(cache_dir)}
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp
        )
        assert process.stdout is not None and process.stderr is not None
        out = _Pump(process.stdout, outputs.stdout, outputs.limit)
        err = _Pump(process.stderr, outputs.stderr, outputs.limit)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        out.join()
        err.join()
        result.run_seconds = time.monotonic() - started
    result.stdout, result.stdout_truncated = out.value(), out.truncated
    result.stderr, result.stderr_truncated = err.value(), err.truncated
    if code is None:
        result.outcome, result.exit_code = Outcome.TIMED_OUT, EXIT_TIMEOUT
        result.error = f"timed out after {timeout:g} s"
        result.reason = FailureReason.DEADLINE_EXCEEDED
    elif code < 0:
        result.outcome, result.exit_code = Outcome.TRAPPED, 128 - code
        result.error = f"killed by signal {-code}"
        result.reason = FailureReason.TRAP
    else:
        result.outcome, result.exit_code = Outcome.EXITED, code
        if code != 0:
            result.error = f"exited with code {code}"  # the proplet adds the stderr tail
            result.reason = FailureReason.EXIT_CODE
    return result


class _Pump:
    """Forwards a child's stream as it comes while keeping a capped copy."""

    def __init__(self, stream: IO[bytes], sink: Sink, limit: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self.truncated = False
        self._thread = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes], sink: Sink) -> None:
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            sink(chunk)
            room = self._limit - self._size
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self._chunks.append(chunk[:room])
                self._size += min(room, len(chunk))

    def join(self) -> None:
        self._thread.join()

    def value(self) -> bytes:
        return b"".join(self._chunks)
