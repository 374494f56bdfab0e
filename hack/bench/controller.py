"""The operator section: the real `wasinn operator` on a real kube-apiserver + etcd, no cluster.

The control plane is the integration tests' (tests/apiserver.py: etcd, kube-apiserver and a
kube-controller-manager for garbage collection, no scheduler, no kubelet). The bench plays
scheduler and kubelet for one OpenVINO Node as fast as the API allows: each task Pod is bound,
set Running, then Succeeded with a proplet summary as its termination message (no process
runs), so what is measured is the operator alone. Tasks are created at a steady rate:

- task -> Pod: the bench's create call to the Pod's ADDED on the bench's watch (p50/p99);
- apply -> Complete: the create call to the task's Complete condition on the watch;
- the operator's RSS (/proc/PID/status VmRSS): at start, after a warm-up batch, after N tasks
  completed and deleted, after N more completed and kept, each sampled once the operator is
  idle (and how long it took to get there); growth per 1,000 tasks; its peak (VmHWM); the
  CPU time it used per batch (from the first create to idle: the run's cost, less noisy
  than its latencies on a shared 2-vCPU machine);
- with --warm: N tiny warm tasks at once on `wasinn proplet warm` workers (host processes
  playing worker Pods, as tests/integration/test_operator_warm.py does): apply -> Complete and
  tasks/s.

usage: .venv/bin/python hack/bench --only operator [--quick] [--tasks N]
       .venv/bin/python hack/bench/controller.py [--tasks N] [--rate R] [--warm N]
                                                  [--operator-src DIR] [--json out.json]
                                                  [--tracemalloc]

--operator-src runs the operator from another checkout's `operator/` (e.g. main's worktree)
with the same bench, for side-by-side before/after runs. --tracemalloc runs the operator under
tracemalloc (hack/bench/traced.py) and prints what grew between the RSS points, by traceback.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from report import Row, row, summary  # noqa: E402

NODE = "openvino-node-1"
LABELS = {"wasinn.dev/openvino": "true"}
TASK_UID = "wasinn.dev/task-uid"
WORKER_LABELS = {"wasinn.dev/warm-pool": "default", "app.kubernetes.io/part-of": "wasinn"}
BENCH_LABEL = "wasinn.dev/bench"
TINY = '(module (memory (export "memory") 1) (func (export "_start")))'
SUMMARY = json.dumps({"state": "Completed", "exitCode": 0, "stdout": "ok\n", "runSeconds": 0.001})
WAIT_SECONDS = 600
IMAGE = "localhost/wasinn-proplet:dev"


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident set (VmRSS), or its peak (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    """`wasinn operator` watching one namespace, as a process of its own."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        namespace: str,
        src: Path | None,
        env: dict[str, str],
        trace: bool = False,
    ) -> None:
        self.health = _free_port()
        self.log = workdir / "operator.log"
        self.trace = workdir / "trace" if trace else None
        entry = (
            [str(Path(__file__).parent / "traced.py")] if trace else ["-m", "wasinn_operator.cli"]
        )
        command = [
            sys.executable,
            *entry,
            "operator",
            "--namespace",
            namespace,
            "--health-port",
            str(self.health),
            "--metrics-port",
            "0",
        ]
        full = {**os.environ, "KUBECONFIG": str(kubeconfig), **env}
        if self.trace is not None:
            self.trace.mkdir()
            full["WASINN_TRACE_DIR"] = str(self.trace)
        if src is not None:
            full["PYTHONPATH"] = str(src / "operator")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, env=full, stdout=out, stderr=out)
        try:
            _wait_http(self.process, f"http://127.0.0.1:{self.health}/healthz", self.log)
        except BaseException:
            _stop(self.process)
            raise

    @property
    def rss(self) -> float:
        return rss_mib(self.process.pid)

    @property
    def peak(self) -> float:
        return rss_mib(self.process.pid, "VmHWM")

    @property
    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def snapshot(self, label: str) -> None:
        """With --tracemalloc: a snapshot of the operator's Python allocations, named."""
        if self.trace is None:
            return
        before = set(self.trace.glob("*.snap"))
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = set(self.trace.glob("*.snap")) - before
            if new:
                time.sleep(2)  # let the dump finish
                new.pop().rename(self.trace / f"{label}.tracemalloc")
                return
            time.sleep(0.2)

    def trace_report(self, top: int = 25) -> str:
        """The biggest growths between consecutive snapshots, by traceback."""
        import tracemalloc

        if self.trace is None:
            return ""
        lines: list[str] = []
        labels = ("after_warmup", "after_deleted", "after_kept")
        snaps = {p.stem: p for p in self.trace.glob("*.tracemalloc")}
        for old, new in itertools.pairwise(labels):
            if old not in snaps or new not in snaps:
                continue
            a = tracemalloc.Snapshot.load(str(snaps[old]))
            b = tracemalloc.Snapshot.load(str(snaps[new]))
            stats = b.compare_to(a, "traceback")
            total = sum(s.size_diff for s in stats)
            lines.append(f"== tracemalloc {old} -> {new}: {total / 2**20:+.1f} MiB")
            for stat in stats[:top]:
                lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+7d} blocks")
                lines += ["      " + str(f) for f in stat.traceback.format()[-12:]]
        return "\n".join(lines)

    def stop(self) -> None:
        _stop(self.process)


def _wait_http(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered:\n{log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Watcher:
    """Watches the namespace's task Pods (plays their scheduler and kubelet: bind, Running,
    Succeeded) and tasks (when each first had Complete or Failed True); monotonic times."""

    def __init__(self, cluster: Any) -> None:
        from tests.integration.kubeapi import Cluster

        self.cluster: Cluster = cluster
        self.pod_seen: dict[str, float] = {}  # task name -> its first Pod's ADDED
        self.finished: dict[str, float] = {}
        self.failed: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(4)
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self._pods, self._tasks)]
        for thread in self.threads:
            thread.start()

    def _stream(self, plural: str, selector: str) -> Iterator[dict[str, Any]]:
        """Watch events as the API sends them (raw JSON: the client's model classes would cost
        the bench more than the operator's work it measures)."""
        c = self.cluster
        if plural == "pods":
            fn, args = c.core.list_namespaced_pod, (c.namespace,)
        else:
            fn = c.custom.list_namespaced_custom_object
            args = ("wasinn.dev", "v1alpha1", c.namespace, "wasinntasks")
        version = None
        while not self.stopping.is_set():
            kwargs: dict[str, Any] = {
                "label_selector": selector,
                "timeout_seconds": 30,
                "watch": True,
                "_preload_content": False,
            }
            if version:
                kwargs["resource_version"] = version
            try:
                for line in fn(*args, **kwargs):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise RuntimeError(str(event))
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    yield event
            except Exception:  # a watch that expired: list again from now
                version = None
                time.sleep(0.1)

    def _pods(self) -> None:
        for event in self._stream("pods", TASK_UID):
            pod = event["object"]
            meta = pod["metadata"]
            if event["type"] == "ADDED" and not (pod.get("spec") or {}).get("nodeName"):
                owner = next(iter(meta.get("ownerReferences") or []), {}).get("name", "")
                with self.lock:
                    self.pod_seen.setdefault(owner, time.monotonic())
                self.pool.submit(self._run, pod)

    def _run(self, pod: dict[str, Any]) -> None:
        c, name = self.cluster, pod["metadata"]["name"]
        try:
            c.set_pod_phase(name, "Running", node=NODE)
            c.set_pod_phase(name, "Succeeded", exit_code=0, termination_message=SUMMARY)
        except Exception as exc:  # a task deleted meanwhile: its Pod is gone
            print(f"kubelet stand-in: {name}: {exc}", file=sys.stderr)

    def _tasks(self) -> None:
        for event in self._stream("wasinntasks", BENCH_LABEL):
            task = event["object"]
            conditions = (task.get("status") or {}).get("conditions") or []
            ended = {c.get("type") for c in conditions if c.get("status") == "True"}
            if ended & {"Complete", "Failed"}:
                name = task["metadata"]["name"]
                with self.lock:
                    self.finished.setdefault(name, time.monotonic())
                    if "Failed" in ended:
                        self.failed.add(name)

    def wait(self, names: list[str], timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(n in self.finished for n in names):
                    return
            time.sleep(0.05)
        with self.lock:
            left = [n for n in names if n not in self.finished]
        print(f"{len(left)} tasks never finished, e.g. {left[:3]}", file=sys.stderr)

    def close(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False)


def _task(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {BENCH_LABEL: "1"}}, "spec": spec}


def create_paced(
    cluster: Any, names: list[str], spec: dict[str, Any], rate: float | None
) -> dict[str, float]:
    """Create the tasks at `rate` per second (None: all at once); each one's create time."""
    started: dict[str, float] = {}
    begin = time.monotonic()

    def apply(index_name: tuple[int, str]) -> None:
        index, name = index_name
        if rate:
            delay = begin + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        started[name] = time.monotonic()
        cluster.create("wasinntasks", _task(name, spec))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(apply, enumerate(names)))
    return started


def delete_all(cluster: Any, watcher: Watcher) -> None:
    """Delete the bench's tasks and wait until they and their Pods are gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.custom.delete_collection_namespaced_custom_object(
            "wasinn.dev", "v1alpha1", cluster.namespace, "wasinntasks", label_selector=BENCH_LABEL
        )
    except ApiException as exc:  # 504: a big collection outlasts the request; it goes on
        if exc.status != 504:
            raise
    cluster.wait_for(lambda: not cluster.list("wasinntasks"), timeout=600, what="tasks gone")
    cluster.wait_for(
        lambda: not cluster.list("pods", label_selector=TASK_UID),
        timeout=600,
        what="task Pods gone",
    )


IDLE_WINDOW = 3.0  # seconds of operator CPU time sampled
IDLE_SHARE = 0.05  # of one CPU: below it, the operator has digested what the API sent
IDLE_LIMIT = 90.0


def _settle(operator: Operator, seconds: float = 5.0) -> tuple[float, float]:
    """RSS once the operator is idle (under 5% of a CPU over 3 s, after at least `seconds`,
    at most 90 s), and how long that took: a thousand deletions are thousands of watch events
    the operator is still working through when the API server is done (their decoded bodies
    queued meanwhile), and RSS sampled then is that backlog, not what the operator keeps."""
    start = time.monotonic()
    time.sleep(seconds)
    while time.monotonic() - start < IDLE_LIMIT:
        before = operator.cpu
        time.sleep(IDLE_WINDOW)
        if operator.cpu - before < IDLE_SHARE * IDLE_WINDOW:
            break
    return operator.rss, time.monotonic() - start


def pod_rows(cluster: Any, operator: Operator, count: int, rate: float) -> list[Row]:
    """Warm-up, then `count` pod-per-task tasks at `rate`/s completed and deleted, then
    `count` completed and kept: latencies of the first batch and RSS after each."""
    spec = {"wasm": {"url": "http://shim.invalid/artifacts/x"}, "backoffLimit": 0}
    watcher = Watcher(cluster)
    rows: list[Row] = []
    section = "operator"
    try:
        rss_start, _ = _settle(operator, 2)
        warmup = [f"warmup-{i}" for i in range(50)]
        create_paced(cluster, warmup, spec, rate)
        watcher.wait(warmup)
        delete_all(cluster, watcher)
        rss_warm, _ = _settle(operator)
        operator.snapshot("after_warmup")
        rss_after: dict[str, float] = {}
        to_idle: dict[str, float] = {}
        peak_before = operator.peak
        cpu: dict[str, float] = {}
        for batch in ("deleted", "kept"):
            names = [f"{batch}-{i}" for i in range(count)]
            cpu_before = operator.cpu
            started = create_paced(cluster, names, spec, rate)
            watcher.wait(names)
            with watcher.lock:
                to_pod = [watcher.pod_seen[n] - started[n] for n in names if n in watcher.pod_seen]
                done = [watcher.finished[n] - started[n] for n in names if n in watcher.finished]
                failed = len(watcher.failed & set(names))
            case = f"{count} pod tasks at {rate:g}/s, {batch}"
            s, d = summary(to_pod), summary(done)
            rows += [
                row(section, case, "task_to_pod_p50", s["median"] * 1e3, "ms"),
                row(section, case, "task_to_pod_p99", s["p99"] * 1e3, "ms"),
                row(section, case, "complete_p50", d["median"] * 1e3, "ms"),
                row(section, case, "complete_p99", d["p99"] * 1e3, "ms"),
                row(section, case, "finished", len(done) - failed, "tasks"),
            ]
            if batch == "deleted":
                delete_all(cluster, watcher)
            rss_after[batch], to_idle[batch] = _settle(operator)
            cpu[batch] = operator.cpu - cpu_before
            operator.snapshot(f"after_{batch}")
        per = 1000 / count  # (a plateau reached within `count` tasks is extrapolated too)
        rows += [
            row(section, "operator RSS", "start", rss_start, "MiB"),
            row(section, "operator RSS", "after_warmup", rss_warm, "MiB"),
            row(section, "operator RSS", "after_deleted", rss_after["deleted"], "MiB"),
            row(section, "operator RSS", "after_kept", rss_after["kept"], "MiB"),
            row(section, "operator CPU", "deleted_batch", cpu["deleted"], "s"),
            row(section, "operator CPU", "kept_batch", cpu["kept"], "s"),
            row(section, "operator RSS", "peak_before_batches", peak_before, "MiB"),
            row(section, "operator RSS", "peak_over_batches", operator.peak, "MiB"),
            row(section, "operator RSS", "idle_after_deleted", to_idle["deleted"], "s"),
            row(section, "operator RSS", "idle_after_kept", to_idle["kept"], "s"),
            row(
                section,
                "operator RSS",
                f"growth_over_{count}_deleted",
                rss_after["deleted"] - rss_warm,
                "MiB",
            ),
            row(
                section,
                "operator RSS",
                "growth_deleted_per_1000",
                (rss_after["deleted"] - rss_warm) * per,
                "MiB",
            ),
            row(
                section,
                "operator RSS",
                "growth_kept_per_1000",
                (rss_after["kept"] - rss_after["deleted"]) * per,
                "MiB",
            ),
        ]
    finally:
        watcher.close()
    return rows


@contextlib.contextmanager
def warm_workers(cluster: Any, workdir: Path, models: Path, count: int) -> Iterator[None]:
    """`count` worker Pods of pool default (Running and Ready on the node) with a
    `wasinn proplet warm` process each on this host."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            name = f"warm-{i}"
            cluster.create(
                "pods",
                {
                    "metadata": {"name": name, "labels": WORKER_LABELS},
                    "spec": {
                        "containers": [{"name": "worker", "image": "localhost/wasinn-proplet:dev"}]
                    },
                },
            )
            pod = cluster.set_pod_phase(name, "Running", node=NODE)
            port = _free_port()
            log = workdir / f"{name}.log"
            env = {
                **os.environ,
                "KUBECONFIG": str(cluster.kubeconfig),
                "WASINN_WORKER_POD": name,
                "WASINN_WORKER_UID": pod["metadata"]["uid"],
                "WASINN_NAMESPACES": cluster.namespace,
                "WASINN_WORKER_HEALTH_PORT": str(port),
                "WASINN_MODELS_DIR": str(models),
                "WASINN_CACHE_DIR": str(workdir / "cache"),
            }
            with log.open("ab") as out:
                command = [sys.executable, "-m", "wasinn_operator.cli", "proplet", "warm"]
                processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
            _wait_http(processes[-1], f"http://127.0.0.1:{port}/healthz", log)
        yield
    finally:
        for process in processes:
            _stop(process)


def warm_rows(
    cluster: Any, operator: Operator, workdir: Path, models: Path, count: int
) -> list[Row]:
    """1 tiny warm task (five times), then `count` at once: apply -> Complete, tasks/s."""
    import wasmtime

    tiny = base64.b64encode(wasmtime.wat2wasm(TINY)).decode()
    spec = {"wasm": {"inline": tiny}, "execution": "warm", "backoffLimit": 0}
    watcher = Watcher(cluster)
    rows: list[Row] = []
    try:
        with warm_workers(cluster, workdir, models, 1):
            singles: list[float] = []
            for i in range(6):
                names = [f"warm-one-{i}"]
                started = create_paced(cluster, names, spec, None)
                watcher.wait(names)
                if i:  # the first fills the worker's caches
                    singles.append(watcher.finished[names[0]] - started[names[0]])
            s = summary(singles)
            rows += [row("operator", "warm: 1 tiny (x5)", "complete_p50", s["median"] * 1e3, "ms")]
            names = [f"warm-many-{i}" for i in range(count)]
            started = create_paced(cluster, names, spec, None)
            watcher.wait(names)
            with watcher.lock:
                done = {n: watcher.finished[n] for n in names if n in watcher.finished}
                failed = len(watcher.failed & set(names))
            latencies = [done[n] - started[n] for n in done]
            span = max(done.values()) - min(started.values()) if done else float("nan")
            d = summary(latencies)
            case = f"warm: {count} tiny at once"
            rows += [
                row("operator", case, "complete_p50", d["median"] * 1e3, "ms"),
                row("operator", case, "complete_p99", d["p99"] * 1e3, "ms"),
                row("operator", case, "tasks_per_s", len(done) / span if done else 0, "tasks/s"),
                row("operator", case, "finished", len(done) - failed, "tasks"),
            ]
        rows.append(row("operator", "operator RSS", "after_warm", operator.rss, "MiB"))
    finally:
        watcher.close()
    return rows


def operator_section(
    count: int, rate: float, warm: int, models: Path, src: Path | None = None, trace: bool = False
) -> list[Row]:
    """Start a control plane and the operator, measure, stop both."""
    from tests.apiserver import ControlPlane
    from tests.integration.kubeapi import Cluster

    with tempfile.TemporaryDirectory(prefix="wasinn-bench-operator-") as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "apiserver")
        plane.start()
        try:
            cluster = Cluster(plane.kubeconfig, f"bench-{uuid.uuid4().hex[:6]}")
            cluster.create("namespaces", {"metadata": {"name": cluster.namespace}})
            cluster.add_node(NODE, LABELS)
            cluster.add_pvc("models")
            env = {
                "WASINN_PROPLET_IMAGE": "localhost/wasinn-proplet:dev",
                "WASINN_WARM_ENABLED": "true",
                "WASINN_WARM_NAMESPACE": cluster.namespace,
            }
            operator = Operator(workdir, plane.kubeconfig, cluster.namespace, src, env, trace)
            try:
                rows = pod_rows(cluster, operator, count, rate)
                if trace:
                    print(operator.trace_report(), file=sys.stderr)
                if warm:
                    delete_all(cluster, Watcher(cluster))
                    rows += warm_rows(cluster, operator, workdir, models, warm)
            finally:
                operator.stop()
                if os.environ.get("WASINN_BENCH_KEEP_LOG"):
                    Path(os.environ["WASINN_BENCH_KEEP_LOG"]).write_bytes(operator.log.read_bytes())
        finally:
            plane.stop()
    return rows


def main() -> int:
    import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per batch (1000)")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks created per second (20)")
    parser.add_argument("--warm", type=int, default=0, help="tiny warm tasks at once (0: none)")
    parser.add_argument("--operator-src", type=Path, help="a checkout whose operator/ to run")
    models = os.environ.get("WASINN_MODELS_DIR") or ROOT.parent / "shared" / "models"
    parser.add_argument("--models-dir", type=Path, default=Path(models))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the operator's allocations, print the growth by site (slow)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = operator_section(
        args.tasks, args.rate, args.warm, args.models_dir, args.operator_src, args.tracemalloc
    )
    print(report.table(rows))
    print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        src = str(args.operator_src or ROOT)
        report.write_json(args.json, rows, {"operator_src": src, "loadavg": load})
    return 0


if __name__ == "__main__":
    sys.exit(main())
