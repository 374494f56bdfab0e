"""`wasinn proplet warm`: a warm worker in the cluster, one Pod of a pool's Deployment.

It watches WasiNNTasks and runs, one after another on one engine (compiled-module and model
caches stay in memory), each attempt the operator assigned to this Pod (`status.worker.uid` is
its own uid, phase Scheduled or Running). Each attempt gets the same fetch, verify, policy,
deadline and memory limits as `wasinn proplet run` (`worker.handle`), and its env reaches its
guest only. The worker never writes status: it reports on the task's annotation
(api/warm.py), when the attempt starts and when it ends, and the operator turns that into
status. Reports are sent by a thread of their own, so the next attempt starts meanwhile; an
attempt that ends within START_REPORT_SECONDS reports only its end (with its start time), as a
Pod that ends before the operator saw it run goes from Scheduled to its end.

Settings: those of `proplet run`, and WASINN_WORKER_POD / WASINN_WORKER_UID (this Pod, from
the downward API), WASINN_NAMESPACES (the namespaces to watch, comma-separated; all when
empty), WASINN_WORKER_HEALTH_PORT (GET /healthz answers 200 once the first listing is in).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..api import GROUP, PLURAL, VERSION
from ..api.policy import POLICY_ENV
from ..api.policyflags import policy_from_settings
from ..api.times import format_time
from ..api.warm import REPORT_ANNOTATION, WarmReport, assignment, read_report, task_document
from ..kubeclient import KubeClient, KubeError, NotFoundError
from ..mqtt import MQTTError
from ..runtime import Runtime, lingering
from .runner import PropletConfig, new_runtime
from .worker import handle

log = logging.getLogger("wasinn.proplet.warm")
WATCH_SECONDS = 300
START_REPORT_SECONDS = 0.25
SEEN_LIMIT = 100_000  # attempts remembered to run each once; older ones are forgotten
RETIRE_REPORT_SECONDS = 30  # for the reports still queued when the worker leaves
# Leaving, how long no attempt must come before the worker exits: the kubelet sees it not ready
# after 3 probes 2 s apart (the chart's), and the operator then assigns it nothing more.
RETIRE_QUIET_SECONDS = 15.0


@dataclass
class Identity:
    """This worker Pod."""

    pod: str
    uid: str


@dataclass
class WarmWorker:
    """Takes the attempts assigned to `identity` from task events and runs them in order."""

    identity: Identity
    config: PropletConfig
    runtime: Runtime
    report: Callable[[str, str, WarmReport], None]  # (namespace, name, report)
    # An inference that outlived its deadline still runs here (`runtime.lingering`): the worker
    # says it is not ready (no new attempts), runs those already assigned, and once none came
    # for RETIRE_QUIET_SECONDS calls `retire` to leave (its container restarts afresh).
    retire: Callable[[], None] = lambda: None
    leaving: threading.Event = field(default_factory=threading.Event)
    todo: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    seen: dict[tuple[str, int], None] = field(default_factory=dict)

    def offer(self, task: dict[str, Any]) -> bool:
        """Queue the task if an attempt of it is assigned to this worker and new to it."""
        held = assignment(task)
        if held is None or held[1].get("uid") != self.identity.uid:
            return False
        if (task.get("spec") or {}).get("suspend"):
            return False
        attempt, meta = held[0], task["metadata"]
        key = (meta["uid"], attempt)
        report = read_report(task)
        if key in self.seen or (
            report and report.attempt == attempt and report.worker == self.identity.uid
        ):
            return False  # queued already, or reported by this Pod's earlier container
        self.seen[key] = None
        while len(self.seen) > SEEN_LIMIT:
            del self.seen[next(iter(self.seen))]
        self.todo.put(task)
        return True

    def run_one(self, task: dict[str, Any]) -> WarmReport:
        """Run one assigned attempt, reporting its end, and its start too when it lasts longer
        than START_REPORT_SECONDS (a short one goes straight to its end: one write, not two)."""
        meta = task["metadata"]
        held = assignment(task)
        attempt = held[0] if held else 0
        started = WarmReport(
            attempt=attempt,
            worker=self.identity.uid,
            startTime=format_time(datetime.now(UTC)),
        )
        lock, ended = threading.Lock(), threading.Event()

        def report_start() -> None:
            with lock:  # the start is queued before the end, or not at all
                if not ended.is_set():
                    self.report(meta["namespace"], meta["name"], started)

        timer = threading.Timer(START_REPORT_SECONDS, report_start)
        timer.start()
        try:
            line = json.dumps(task_document(task)).encode()
            summary = handle(line, self.config, self.runtime)
        finally:
            timer.cancel()
            with lock:
                ended.set()
        done = started.model_copy(update={"summary": summary.to_message()})
        self.report(meta["namespace"], meta["name"], done)
        return done

    def work(self) -> None:
        """Run queued attempts until None is queued, or until the worker leaves."""
        while True:
            try:
                task = self.todo.get(
                    timeout=RETIRE_QUIET_SECONDS if self.leaving.is_set() else None
                )
            except queue.Empty:  # leaving, and no attempt was assigned meanwhile
                self.retire()
                return
            if task is None:
                return
            try:
                self.run_one(task)
            except Exception:  # one attempt's failure must not stop the worker
                log.exception("attempt of %s failed", task["metadata"].get("name"))
            if lingering.count() and not self.leaving.is_set():
                log.warning(
                    "an inference of %s outlived its deadline and still runs here: not ready "
                    "any more; leaving once the attempts assigned to this worker have run",
                    task["metadata"].get("name"),
                )
                self.leaving.set()


class Reporter:
    """Sends reports (patches of the task's annotation) from `lanes` threads of their own, so
    the API's round trips overlap; one task's reports share a lane, so they land in order."""

    def __init__(self, client: KubeClient, lanes: int = 4) -> None:
        self.client = client
        self.queues: list[queue.Queue[tuple[str, str, WarmReport] | None]] = [
            queue.Queue() for _ in range(lanes)
        ]
        self.threads = [
            threading.Thread(target=self._send_all, args=(lane,), name="reporter", daemon=True)
            for lane in self.queues
        ]
        for thread in self.threads:
            thread.start()

    def __call__(self, namespace: str, name: str, report: WarmReport) -> None:
        lane = zlib.crc32(f"{namespace}/{name}".encode()) % len(self.queues)
        self.queues[lane].put((namespace, name, report))

    def close(self, timeout: float) -> None:
        """Send what is queued (within `timeout` seconds) and stop."""
        for lane in self.queues:
            lane.put(None)
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _send_all(self, lane: queue.Queue[tuple[str, str, WarmReport] | None]) -> None:
        while (item := lane.get()) is not None:
            namespace, name, report = item
            body = {"metadata": {"annotations": {REPORT_ANNOTATION: report.to_annotation()}}}
            for delay in (0.1, 0.5, 1, 2, 5, 0):
                try:
                    self.client.call(
                        self.client.custom.patch_namespaced_custom_object,
                        GROUP, VERSION, namespace, PLURAL, name, body,
                    )  # fmt: skip
                    break
                except NotFoundError:
                    break  # the task was deleted
                except KubeError as exc:
                    log.warning("cannot report on %s/%s: %s", namespace, name, exc)
                    time.sleep(delay)


def watch_tasks(
    client: KubeClient, namespace: str | None, on_listed: Callable[[], None]
) -> Iterator[dict[str, Any]]:
    """Every task, then every change, forever: a listing, then a watch from its version,
    listed again when the watch ends or fails."""
    custom = client.custom
    lister: Callable[..., Any] = (
        custom.list_namespaced_custom_object if namespace else custom.list_cluster_custom_object
    )
    where: list[Any] = [GROUP, VERSION, *([namespace] if namespace else []), PLURAL]
    while True:
        try:
            listing = client.call(lister, *where)
            yield from listing.get("items") or []
            on_listed()
            version = (listing.get("metadata") or {}).get("resourceVersion")
            for event in client.stream(
                lister, *where, resource_version=version, timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True,
            ):  # fmt: skip
                if event.get("type") == "ERROR":
                    break  # (410 Gone: the version is too old) list again
                if event.get("type") in ("ADDED", "MODIFIED"):
                    yield event["object"]
        except (KubeError, ValueError) as exc:  # the API server may be away for a while
            log.warning("watching tasks: %s; again in 1 s", exc)
            time.sleep(1)


def serve_health(port: int, ready: threading.Event, leaving: threading.Event) -> None:
    """GET /healthz: 200 once the worker has listed the tasks (readiness) and until it is
    leaving, else 503."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if ready.is_set() and not leaving.is_set() else 503
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            """Probes are not worth a log line each."""

    server = ThreadingHTTPServer(("0.0.0.0", port), Health)  # the kubelet probes it
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the worker until killed."""
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="wasinn proplet warm: %(message)s")
    pod, uid = env.get("WASINN_WORKER_POD"), env.get("WASINN_WORKER_UID")
    if not pod or not uid:
        log.error("set WASINN_WORKER_POD and WASINN_WORKER_UID (the downward API)")
        return 2
    try:
        if not env.get(POLICY_ENV):  # the chart's policy variables, as the operator reads them
            env = {**env, POLICY_ENV: policy_from_settings(env).to_json()}
        config = PropletConfig.from_env(env)
    except (MQTTError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    ready, leaving = threading.Event(), threading.Event()
    serve_health(int(env.get("WASINN_WORKER_HEALTH_PORT") or 8080), ready, leaving)
    client = KubeClient()
    reporter = Reporter(client)

    def retire() -> None:
        reporter.close(RETIRE_REPORT_SECONDS)
        os._exit(0)  # the inference left running cannot be joined

    runtime = new_runtime(config)
    worker = WarmWorker(Identity(pod, uid), config, runtime, reporter, retire, leaving)
    threading.Thread(target=worker.work, name="tasks", daemon=True).start()
    named = [n for n in (env.get("WASINN_NAMESPACES") or "").split(",") if n]
    namespaces: list[str | None] = [*named] if named else [None]
    for namespace in namespaces[1:]:
        threading.Thread(
            target=_offer_all, args=(worker, client, namespace, ready.set), daemon=True
        ).start()
    log.info("worker %s ready for tasks", pod)
    _offer_all(worker, client, namespaces[0], ready.set)
    return 0


def _offer_all(
    worker: WarmWorker, client: KubeClient, namespace: str | None, on_listed: Callable[[], None]
) -> None:
    for task in watch_tasks(client, namespace, on_listed):
        worker.offer(task)
