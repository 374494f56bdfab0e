"""`wasinn proplet run`: fetch the task's module, verify it, run it, report the result.

Reports go where Kubernetes and Propeller users look: the guest's stdout streams to the
container log, a JSON summary goes to the termination-message path, and, when `PROPLET_*`
MQTT settings are given, the result is published in Propeller's shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..api import RunSummary, TaskSpec
from ..api.errors import describe_errors
from ..api.modelsource import PVC_SOURCES_DIR
from ..api.policy import (
    POLICY_ENV,
    Limits,
    PolicyError,
    TaskPolicy,
    check_model_sources,
    check_task,
)
from ..api.summary import EXIT_TASK_ERROR, FailureReason
from ..api.task import MAX_WASM_BYTES, sha256_digest
from ..api.wasmflags import WasmFlags
from ..models.remote import ModelFetchError
from ..mqtt import RESULTS_TOPIC, MQTTError, MQTTSettings, publish_once, results_payload
from ..runtime import RunResult, Runtime, RuntimeConfig, default_cache_dir, fd_sink
from .engines import Outputs, TaskError, run_embedded, run_external, task_flags
from .fetch import FetchError, fetch_wasm
from .sources import prepare_sources

DEFAULT_MODELS_DIR = Path("/models")
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
STDERR_TAIL_BYTES = 1024
STDERR_TAIL_LINES = 8


@dataclass(frozen=True)
class PropletConfig:
    """The proplet's own settings (never the task's): from its environment."""

    models_dir: Path | None
    termination_log: Path
    cache_dir: Path
    external_runtime: str | None
    registry_auth: Path | None
    precision: str | None
    max_wasm_bytes: int = MAX_WASM_BYTES
    mqtt: MQTTSettings | None = None
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    insecure_registries: tuple[str, ...] = ()  # plain-http OCI registries besides localhost
    model_cache: Path | None = None  # where model sources are fetched (None: cache_dir)
    model_cache_budget: int | None = None  # bytes the model cache is trimmed to (None: no trim)
    model_pvcs_dir: Path = Path(PVC_SOURCES_DIR)  # where the operator mounts pvc:// sources
    parent_pid: int = 0  # the process that started this one; its end ends this one (0: none)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PropletConfig:
        """Read `WASINN_*`, `PROPLET_*` and the seed guide's `EXTERNAL_WASM_RUNTIME`.

        The task policy is `WASINN_POLICY` (JSON, from the operator or the shim); without one,
        the strict default. Raises ValueError for a malformed one.
        """
        models = environ.get("WASINN_MODELS_DIR")
        models_dir = Path(models) if models else DEFAULT_MODELS_DIR
        auth = environ.get("WASINN_REGISTRY_AUTH")
        return cls(
            models_dir=models_dir if models_dir.is_dir() else None,
            termination_log=Path(environ.get("WASINN_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG),
            cache_dir=Path(environ["WASINN_CACHE_DIR"])
            if environ.get("WASINN_CACHE_DIR")
            else default_cache_dir(),
            external_runtime=environ.get("PROPLET_EXTERNAL_WASM_RUNTIME")
            or environ.get("EXTERNAL_WASM_RUNTIME")
            or None,
            registry_auth=Path(auth) if auth else None,
            precision=environ.get("WASINN_INFERENCE_PRECISION") or None,
            mqtt=MQTTSettings.from_env(environ),
            policy=TaskPolicy.from_json(environ[POLICY_ENV])
            if environ.get(POLICY_ENV)
            else TaskPolicy(),
            insecure_registries=tuple(
                r for r in environ.get("WASINN_INSECURE_REGISTRIES", "").split(",") if r
            ),
            parent_pid=int(environ.get("WASINN_PARENT_PID") or 0),
            model_cache=Path(environ["WASINN_MODEL_CACHE"])
            if environ.get("WASINN_MODEL_CACHE")
            else None,
            model_pvcs_dir=Path(environ.get("WASINN_MODEL_PVCS_DIR") or PVC_SOURCES_DIR),
            model_cache_budget=int(environ["WASINN_MODEL_CACHE_BYTES"])
            if environ.get("WASINN_MODEL_CACHE_BYTES")
            else None,
        )


def load_task(environ: Mapping[str, str]) -> TaskSpec:
    """The task from `WASINN_TASK` (JSON) or the file `WASINN_TASK_FILE`."""
    text = environ.get("WASINN_TASK")
    if not text and environ.get("WASINN_TASK_FILE"):
        try:
            text = Path(environ["WASINN_TASK_FILE"]).read_text()
        except OSError as exc:
            raise TaskError(f"WASINN_TASK_FILE: {exc}") from None
    if not text:
        raise TaskError("no task: set WASINN_TASK (JSON) or WASINN_TASK_FILE")
    try:
        return TaskSpec.model_validate_json(text)
    except ValidationError as exc:
        raise TaskError(f"invalid task: {describe_errors(exc, 'task')}") from None


def new_runtime(config: PropletConfig) -> Runtime:
    """The embedded engine with the proplet's cache and precision, and the policy's default
    limits (every task's run gets its limits from the policy anyway: `run_task`)."""
    return Runtime(
        RuntimeConfig.for_tenants(
            cache_dir=config.cache_dir,
            inference_precision=config.precision,
            default_timeout=config.policy.default_timeout,
            default_max_memory=config.policy.default_max_memory,
        )
    )


def run_task(
    task: TaskSpec, config: PropletConfig, outputs: Outputs, runtime: Runtime | None = None
) -> RunSummary:
    """Fetch, verify and run one task; every failure becomes a Failed summary.

    `runtime` is the embedded engine to reuse (a long-lived worker's); without one, a new one.
    """
    engine = _engine(task, config)
    summary = RunSummary(state="Failed", exitCode=EXIT_TASK_ERROR, engine=engine, taskId=task.id)
    try:
        flags = task_flags(task)
    except TaskError as exc:
        summary.error, summary.reason = str(exc), exc.reason
        return summary
    try:  # before anything else: a refused task fetches and runs nothing
        limits = check_task(config.policy, task.cli_args, task.env, task.args, task.timeout_seconds)
        check_model_sources(config.policy, task.model_sources, "modelSources")
    except PolicyError as exc:
        summary.error, summary.reason = str(exc), FailureReason.POLICY_VIOLATION
        return summary
    started = time.monotonic()
    try:
        wasm = fetch_wasm(
            task.wasm, config.max_wasm_bytes, config.registry_auth, config.insecure_registries
        )
    except FetchError as exc:
        summary.error, summary.reason = f"fetching the module: {exc}", exc.reason
        return summary
    try:
        sources = prepare_sources(
            task,
            config.model_cache or config.cache_dir,
            config.policy.max_model_bytes,
            config.model_pvcs_dir,
            registry_auth=config.registry_auth,
            insecure_registries=config.insecure_registries,
            cache_budget=config.model_cache_budget,
        )
    except ModelFetchError as exc:
        summary.error, summary.reason = f"fetching a model: {exc}", FailureReason.FETCH_FAILED
        return summary
    # fetch_wasm verified a given digest against the bytes: no need to hash them again.
    summary.digest = task.wasm.digest or sha256_digest(wasm)
    summary.fetch_seconds = time.monotonic() - started
    try:
        result = _run(
            engine, task, flags, wasm, config, outputs, runtime, limits, sources, summary.digest
        )
    except TaskError as exc:
        summary.error, summary.reason = str(exc), exc.reason
        return summary
    summary.state = "Completed" if result.ok else "Failed"
    summary.exit_code = result.exit_code
    summary.error = failure(result) if not result.ok else None
    summary.reason = None if result.ok else result.reason or FailureReason.ENGINE_ERROR
    summary.stdout = result.stdout.decode("utf-8", errors="replace")
    summary.stdout_truncated = result.stdout_truncated
    summary.compile_seconds = result.compile_seconds
    summary.run_seconds = result.run_seconds
    return summary


def failure(result: RunResult) -> str:
    """A failed run's error followed by the tail of its stderr, where the reason usually is:
    `exited with code 1: classify: cannot open /tensors/x.f32: No such file or directory`."""
    error = result.error or f"exited with code {result.exit_code}"
    lines = stderr_tail(result.stderr).splitlines()
    if lines and lines[-1] == f"wasinn: {error}":  # the engine's own line repeats the error
        lines.pop()
    return f"{error}: " + "\n".join(lines) if lines else error


def stderr_tail(
    stderr: bytes, size: int = STDERR_TAIL_BYTES, count: int = STDERR_TAIL_LINES
) -> str:
    """The last `count` lines within the last `size` bytes of `stderr`, as clean text: UTF-8,
    no control characters but newlines (a guest's bytes go into JSON, logs and terminals)."""
    tail = stderr[-size:]
    if len(stderr) > size and b"\n" in tail:
        tail = tail[tail.index(b"\n") + 1 :]  # no partial first line
    text = tail.decode("utf-8", errors="replace")
    text = "".join(c if c == "\n" or c.isprintable() else "" for c in text.replace("\t", " "))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def _engine(task: TaskSpec, config: PropletConfig) -> str:
    # An engine named in the task wins; otherwise Propeller's convention: an external runtime
    # configured in the environment is used for every task.
    if "engine" in task.model_fields_set:
        return task.engine
    return "wasmtime-cli" if config.external_runtime else "embedded"


def _run(
    engine: str,
    task: TaskSpec,
    flags: WasmFlags,
    wasm: bytes,
    config: PropletConfig,
    outputs: Outputs,
    runtime: Runtime | None,
    limits: Limits,
    sources: dict[str, Path],
    digest: str,
) -> RunResult:
    if engine == "embedded":
        runtime = runtime or new_runtime(config)
        return run_embedded(
            runtime, task, flags, wasm, config.models_dir, outputs, limits, sources, digest
        )
    binary = config.external_runtime or shutil.which("wasmtime")
    if binary is None:
        raise TaskError(
            "engine wasmtime-cli: no wasmtime binary (set PROPLET_EXTERNAL_WASM_RUNTIME)",
            FailureReason.ENGINE_ERROR,
        )
    return run_external(
        binary, task, flags, wasm, config.models_dir, outputs, config.cache_dir, limits, sources
    )


def report(summary: RunSummary, config: PropletConfig) -> None:
    """Write the termination message and publish to MQTT when configured."""
    try:
        config.termination_log.write_text(summary.to_message())
    except OSError as exc:
        _log(f"cannot write the termination message to {config.termination_log}: {exc}")
    if config.mqtt is not None:
        payload = results_payload(
            summary.task_id, config.mqtt.instance_id, summary.stdout, summary.error
        )
        try:
            publish_once(config.mqtt, RESULTS_TOPIC, payload)
        except MQTTError as exc:
            _log(f"MQTT: {exc}")


def _log(message: str) -> None:
    # stderr may be a pipe to a process that is gone (a killed shim): a log line that cannot
    # be written must not raise, least of all on the way to exiting because of it.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"wasinn proplet: {message}\n")
        sys.stderr.flush()


def _supervised(task: TaskSpec, config: PropletConfig, outputs: Outputs) -> RunSummary:
    """Run the task in a worker thread so the main thread can act on SIGTERM at once.

    As a container's PID 1 the proplet gets no default SIGTERM action, and a Python handler
    runs only in the main thread between bytecodes, never while wasm runs in native code; so
    the main thread only waits, and on SIGTERM (Pod deleted, task suspended) records an
    interrupted summary and exits instead of hanging until the kubelet's SIGKILL.
    """
    done: list[RunSummary] = []
    worker = threading.Thread(
        target=lambda: done.append(run_task(task, config, outputs)), name="task", daemon=True
    )

    def on_sigterm(signum: int, _frame: object) -> None:
        summary = RunSummary(
            state="Failed",
            exitCode=128 + signum,
            error="interrupted: the proplet received SIGTERM (Pod deleted or task suspended)",
            reason=FailureReason.INTERRUPTED,
            taskId=task.id,
        )
        with contextlib.suppress(OSError):
            config.termination_log.write_text(summary.to_message())
        _log(summary.error or "interrupted")
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        worker.start()
        join_watching_parent(worker, config.parent_pid)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return done[0]


def join_watching_parent(thread: threading.Thread, parent: int) -> None:
    """Wait for `thread`, exiting at once (137) if `parent` (the starter's pid, 0: none) is gone."""
    while thread.is_alive():
        thread.join(0.2)
        if parent and os.getppid() != parent:
            # The process that started the task is gone: nobody will read the result.
            _log("the process that started this task is gone; stopping")
            os._exit(137)


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the task in the environment; the exit code is 0 only on success."""
    env = os.environ if environ is None else environ
    try:
        config = PropletConfig.from_env(env)
    except (MQTTError, ValueError) as exc:
        _log(str(exc))
        return EXIT_TASK_ERROR
    try:
        task = load_task(env)
    except TaskError as exc:
        summary = RunSummary(
            state="Failed", exitCode=EXIT_TASK_ERROR, error=str(exc), reason=exc.reason
        )
    else:
        outputs = Outputs(stdout=fd_sink(1), stderr=fd_sink(2))
        summary = _supervised(task, config, outputs)
    if summary.error:
        _log(f"task {summary.task_id or '?'} failed: {summary.error}")
    report(summary, config)
    _log(json.dumps({"state": summary.state, "exitCode": summary.exit_code}))
    return 0 if summary.state == "Completed" else (summary.exit_code or EXIT_TASK_ERROR)
