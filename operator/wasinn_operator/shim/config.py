"""`wasinn shim` settings: options and environment (kept free of heavy imports for the CLI).

Parsed once, when the shim starts (`config_from_args`), and passed down; nothing else in the
shim reads its own settings from the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..api.policy import TaskPolicy
from ..api.policyflags import add_policy_arguments, policy_from_settings
from ..api.task import MAX_WASM_BYTES

if TYPE_CHECKING:
    from ..mqtt import MQTTSettings

DEFAULT_PORT = 7070
DEFAULT_WORKER_MAX_TASKS = 100
DEFAULT_WORKER_MAX_RSS_MIB = 2048
# Two tasks per core: a task is not busy all its life (fetch, compile, load), and one or two
# long guests still leave room for the next task (see pool.py for long ones).
DEFAULT_WORKERS = 2 * (os.cpu_count() or 1)
DEFAULT_LONG_AFTER = 5.0
DEFAULT_MIN_FREE_MIB = 64


@dataclass(frozen=True)
class BuildInfo:
    """What /health says the shim was built from (set by the image build)."""

    commit: str = "unknown"
    build_time: str = "unknown"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BuildInfo:
        """`WASINN_COMMIT` and `WASINN_BUILD_TIME`."""
        return cls(
            commit=environ.get("WASINN_COMMIT", cls.commit),
            build_time=environ.get("WASINN_BUILD_TIME", cls.build_time),
        )


@dataclass(frozen=True)
class ShimConfig:
    """Everything `wasinn shim` is told on its command line and environment."""

    data_dir: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    backend: str = "local"
    db: Path | None = None
    artifacts_dir: Path | None = None
    models_dir: Path | None = None
    workers: int = 2
    long_workers: int | None = None  # None: as many as `workers`
    long_after: float = DEFAULT_LONG_AFTER
    min_free_mib: int = DEFAULT_MIN_FREE_MIB
    fresh_process: bool = False
    worker_max_tasks: int = DEFAULT_WORKER_MAX_TASKS
    worker_max_rss_mib: int = DEFAULT_WORKER_MAX_RSS_MIB
    token: str | None = None
    max_wasm_bytes: int = MAX_WASM_BYTES
    public_url: str | None = None
    proplet: bool = True
    schedule_external: bool = False  # manager mode: round robin onto external proplets too
    namespace: str = "default"
    openvino_label: str = "wasinn.dev/openvino=true"
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    instance_id: str | None = None  # PROPLET_INSTANCE_ID; None: one kept in data_dir
    mqtt: MQTTSettings | None = None  # the broker channel, when the environment names one
    build: BuildInfo = field(default_factory=BuildInfo)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `wasinn shim` options."""
    add = parser.add_argument
    add("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    add("--backend", default="local", help="task store: local (default) or kubernetes")
    add(
        "--data-dir",
        type=Path,
        help="state directory (default $WASINN_SHIM_DATA_DIR, else ~/.local/share/wasinn/shim)",
    )
    add("--db", type=Path, help="local backend: SQLite file (default DATA_DIR/tasks.db)")
    add("--artifacts-dir", type=Path, help="wasm artifacts (default DATA_DIR/artifacts)")
    add(
        "--models-dir",
        type=Path,
        help="models directory every task sees at /models (default $WASINN_MODELS_DIR)",
    )
    add(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"local: tasks run at once (default two per core: {DEFAULT_WORKERS}); a task "
        "running past --long-task-seconds leaves its place to the next one",
    )
    add(
        "--long-task-seconds",
        type=float,
        default=DEFAULT_LONG_AFTER,
        metavar="SECONDS",
        help="local: a task running longer gives its place among --workers to the next task "
        f"and runs on as a long task (default {DEFAULT_LONG_AFTER:g})",
    )
    add(
        "--long-workers",
        type=int,
        metavar="N",
        help="local: long tasks run at most on top of --workers (default: as many as --workers)",
    )
    add(
        "--min-free-mib",
        type=int,
        default=DEFAULT_MIN_FREE_MIB,
        metavar="MIB",
        help="/health fails while a data directory has less free space "
        f"(default {DEFAULT_MIN_FREE_MIB})",
    )
    add(
        "--fresh-process",
        action="store_true",
        help="local: run every task in a new process (as a Pod does) instead of on a warm "
        "worker, for the most isolation (or $WASINN_SHIM_FRESH_PROCESS=1)",
    )
    add(
        "--worker-max-tasks",
        type=int,
        default=DEFAULT_WORKER_MAX_TASKS,
        help=f"local: replace a worker after this many tasks (default {DEFAULT_WORKER_MAX_TASKS})",
    )
    add(
        "--worker-max-rss",
        type=int,
        default=DEFAULT_WORKER_MAX_RSS_MIB,
        metavar="MIB",
        help="local: replace a worker whose resident memory exceeds this after a task "
        f"(default {DEFAULT_WORKER_MAX_RSS_MIB})",
    )
    add("--token-file", type=Path, help="require this bearer token (or $WASINN_SHIM_TOKEN)")
    add("--max-wasm-bytes", type=int, default=MAX_WASM_BYTES, help="module size limit")
    add("--public-url", help="the shim's URL as Pods reach it (for /artifacts links)")
    add("--no-proplet", action="store_true", help="MQTT: publish results only, no proplet role")
    add(
        "--schedule-external",
        action="store_true",
        help="MQTT manager mode: tasks with neither proplet_id nor broadcast take turns between "
        "this shim's backend and the alive external proplets, as Propeller's round robin "
        "(default: the backend runs them; or $WASINN_SCHEDULE_EXTERNAL=1)",
    )
    add(
        "--namespace",
        help="kubernetes: the tasks' namespace (default: the Pod's own, or "
        "$WASINN_NAMESPACE, else default)",
    )
    add(
        "--openvino-label",
        help="kubernetes: label of the nodes listed as proplets "
        "(default $WASINN_OPENVINO_LABEL, else wasinn.dev/openvino=true)",
    )
    add_policy_arguments(parser)


def config_from_args(args: argparse.Namespace) -> ShimConfig:
    """Settings from parsed options and the environment; ValueError for a bad policy setting,
    MQTTError for a bad broker setting."""
    from ..mqtt import MQTTSettings  # noqa: PLC0415  (paho, only once the shim starts)

    token = os.environ.get("WASINN_SHIM_TOKEN") or None
    if args.token_file is not None:
        token = args.token_file.read_text().strip() or None
    data_dir = args.data_dir or Path(
        os.environ.get("WASINN_SHIM_DATA_DIR")
        or Path.home() / ".local" / "share" / "wasinn" / "shim"
    )
    models = args.models_dir or (
        Path(os.environ["WASINN_MODELS_DIR"]) if os.environ.get("WASINN_MODELS_DIR") else None
    )
    return ShimConfig(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        backend=args.backend,
        db=args.db,
        artifacts_dir=args.artifacts_dir,
        models_dir=models.resolve() if models else None,
        workers=max(1, args.workers),
        long_workers=None if args.long_workers is None else max(0, args.long_workers),
        long_after=max(0.0, args.long_task_seconds),
        min_free_mib=max(0, args.min_free_mib),
        fresh_process=args.fresh_process
        or os.environ.get("WASINN_SHIM_FRESH_PROCESS", "").lower() in ("1", "true", "yes"),
        worker_max_tasks=max(1, args.worker_max_tasks),
        worker_max_rss_mib=max(1, args.worker_max_rss),
        token=token,
        max_wasm_bytes=args.max_wasm_bytes,
        public_url=args.public_url or os.environ.get("WASINN_PUBLIC_URL") or None,
        proplet=not args.no_proplet,
        schedule_external=args.schedule_external
        or os.environ.get("WASINN_SCHEDULE_EXTERNAL", "").lower() in ("1", "true", "yes"),
        namespace=args.namespace or _own_namespace(),
        openvino_label=args.openvino_label
        or os.environ.get("WASINN_OPENVINO_LABEL")
        or "wasinn.dev/openvino=true",
        policy=policy_from_settings(os.environ, args),
        instance_id=os.environ.get("PROPLET_INSTANCE_ID") or None,
        mqtt=MQTTSettings.from_env(os.environ),
        build=BuildInfo.from_env(os.environ),
    )


def _own_namespace() -> str:
    """$WASINN_NAMESPACE, else the namespace of the Pod the shim runs in, else default."""
    if os.environ.get("WASINN_NAMESPACE"):
        return os.environ["WASINN_NAMESPACE"]
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else "default"
