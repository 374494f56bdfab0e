"""`wasinn shim`: settings, the backend choice, and wiring the service, HTTP and MQTT together.

A backend is one factory in `BACKENDS`: it receives the settings, the artifact store and the
instance id, and returns a `TaskStore`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api.policy import lexical
from ..atomicfile import replace_file
from ..mqtt import MQTTError, MQTTSettings
from .announce import timestamp
from .app import create_app
from .artifacts import ArtifactStore, private_dir
from .bridge import Bridge
from .config import ShimConfig, config_from_args
from .dispatch import Dispatcher
from .errors import ShimError
from .invoke import Invoker
from .local import LocalBackend, RunMetrics
from .proplets import PropletRegistry
from .service import TaskService
from .store import TaskPhase, TaskStore
from .taskmetrics import TaskMetricsStore

log = logging.getLogger("wasinn.shim")


BackendFactory = Callable[[ShimConfig, ArtifactStore, str], TaskStore]


def local_backend(config: ShimConfig, artifacts: ArtifactStore, instance_id: str) -> TaskStore:
    """SQLite + worker pool on this machine."""
    db = config.db or config.data_dir / "tasks.db"
    return LocalBackend(
        db,
        artifacts,
        config.models_dir,
        config.workers,
        instance_id,
        long_workers=config.long_workers,
        long_after=config.long_after,
        fresh_process=config.fresh_process,
        worker_max_tasks=config.worker_max_tasks,
        worker_max_rss=config.worker_max_rss_mib << 20,
        policy=config.policy,
    )


def kubernetes_backend(config: ShimConfig, artifacts: ArtifactStore, instance_id: str) -> TaskStore:
    """WasiNNTask objects in one namespace; the operator runs them."""
    from .kubernetes import KubernetesStore  # noqa: PLC0415  (the local mode needs no client)

    if not config.public_url:
        raise ValueError(
            "--public-url (or WASINN_PUBLIC_URL) is required with --backend kubernetes: "
            "Pods fetch modules from <public-url>/artifacts/sha256:..."
        )
    return KubernetesStore(config.namespace, config.public_url, config.openvino_label)


BACKENDS: dict[str, BackendFactory] = {"local": local_backend, "kubernetes": kubernetes_backend}


class TaskCollector(Collector):
    """`wasinn_shim_tasks{state=...}`: task counts, read from the backend at scrape time."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("wasinn_shim_tasks", "Tasks by state", labels=["state"])
        counts = self.store.counts()
        for phase in TaskPhase:
            family.add_metric([phase.name.lower()], counts.get(phase, 0))
        yield family


def run_recorder(task_metrics: TaskMetricsStore, proplets: PropletRegistry) -> RunMetrics:
    """What the local backend calls after each run: a task sample and a proplet sample (in
    Propeller's TaskMetrics and PropletMetrics shapes)."""

    def record(task_id: str, proplet_id: str, cpu: float, rss: int, wall: float) -> None:
        task_metrics.record_run(task_id, proplet_id, cpu, rss, wall)
        proplets.record_metrics(
            proplet_id,
            {
                "proplet_id": proplet_id,
                "namespace": "",
                "timestamp": timestamp(),
                "cpu_metrics": {
                    "user_seconds": round(cpu, 6),
                    "system_seconds": 0.0,
                    "percent": round(100.0 * cpu / wall, 3) if wall > 0 else 0.0,
                },
                "memory_metrics": {
                    "rss_bytes": rss,
                    "heap_alloc_bytes": 0,
                    "heap_sys_bytes": 0,
                    "heap_inuse_bytes": 0,
                },
            },
        )

    return record


def instance_id(data_dir: Path, given: str | None = None, mqtt: MQTTSettings | None = None) -> str:
    """The proplet id: `given` (PROPLET_INSTANCE_ID), else the MQTT entity id (the id a
    Propeller manager knows this proplet by), else a UUID kept in the data directory (stable
    across restarts). Managers want a UUID, so an id stored as `wasinn-<uuid>` by older shims
    loses its prefix."""
    if given:
        return given
    if mqtt is not None and mqtt.client_id:
        return mqtt.client_id
    path = data_dir / "instance-id"
    if not path.is_file():
        replace_file(path, f"{uuid.uuid4()}\n".encode())  # 0600, never half written
    ident = path.read_text().strip().removeprefix("wasinn-")
    if not ident:
        raise ValueError(f"{path} is empty: remove it to get a new instance id")
    return ident


def build(config: ShimConfig, mqtt: MQTTSettings | None) -> tuple[FastAPI, TaskService]:
    """The application with its backend, service and (when configured) MQTT bridge.

    Raises ValueError (an unusable database, a missing setting) or ShimError (a dependency
    failing at start) with a message for the operator."""
    private_dir(config.data_dir)
    artifacts = ArtifactStore(
        config.artifacts_dir or config.data_dir / "artifacts", config.max_wasm_bytes
    )
    ident = instance_id(config.data_dir, config.instance_id, mqtt)
    store = BACKENDS[config.backend](config, artifacts, ident)
    # Local tasks run on this machine, so their host paths are resolved here (symlinks too);
    # the kubernetes backend's run in Pods, whose files the shim cannot see.
    resolve = os.path.realpath if config.backend == "local" else lexical
    paths = [artifacts.directory]
    if config.backend == "local":
        paths.append((config.db or config.data_dir / "tasks.db").parent)
    service = TaskService(
        store,
        artifacts,
        ident,
        config.policy,
        resolve,
        min_free_bytes=config.min_free_mib << 20,
        disk_paths=paths,
        build=config.build,
    )
    log.info("task policy: %s", config.policy.describe())
    task_metrics = TaskMetricsStore()
    if isinstance(store, LocalBackend):
        store.run_metrics = run_recorder(task_metrics, service.registry)
    invoker = Invoker(service, config.models_dir)
    registry = CollectorRegistry()
    registry.register(TaskCollector(store))
    bridge = None
    if mqtt is not None:
        settings = dataclasses.replace(mqtt, instance_id=ident)
        # Manager mode: the proplets on the channel can be given tasks (dispatch.py).
        service.dispatcher = Dispatcher(
            store,
            artifacts,
            service.registry,
            ident,
            round_robin=config.schedule_external,
            task_metrics=task_metrics,
        )
        try:
            service.dispatcher.recover()
        except ShimError as exc:  # the operator still fails those runs at their deadline
            log.warning("could not take up dispatched runs again: %s", exc)
        bridge = Bridge(
            settings,
            service,
            proplet=config.proplet,
            registry=registry,
            models_dir=config.models_dir,
            invoker=invoker,
        )
        service.checks.add("mqtt", bridge.problem)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if bridge is not None:
            bridge.start()
        try:
            yield
        finally:
            if bridge is not None:
                bridge.stop()
            store.close()

    # A base64 body is 4/3 of the module, plus room for the rest of the task.
    max_body = math.ceil(config.max_wasm_bytes * 4 / 3) + (1 << 20)
    app = create_app(
        service,
        token=config.token,
        max_body=max_body,
        registry=registry,
        lifespan=lifespan,
        invoker=invoker,
        task_metrics=task_metrics,
    )
    return app, service


def main(args: argparse.Namespace) -> int:
    """Run the shim until SIGINT/SIGTERM."""
    import uvicorn  # noqa: PLC0415  (only the shim needs the server)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.umask(0o077)  # every file and directory the shim (and its workers) create is private
    if args.backend not in BACKENDS:
        sys.stderr.write(
            f"wasinn shim: unknown backend {args.backend!r} "
            f"(available: {', '.join(sorted(BACKENDS))})\n"
        )
        return 2
    try:
        config = config_from_args(args)
    except (OSError, ValueError, MQTTError) as exc:
        sys.stderr.write(f"wasinn shim: {exc}\n")
        return 2
    if config.models_dir is not None and not config.models_dir.is_dir():
        sys.stderr.write(f"wasinn shim: models directory {config.models_dir} does not exist\n")
        return 2
    try:
        app, _ = build(config, config.mqtt)
    except (ValueError, ShimError, OSError) as exc:
        sys.stderr.write(f"wasinn shim: {exc}\n")
        return 2
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    return 0
